//! Trainyard's integration tests: one test binary, real processes, real
//! SQLite files, temp dirs. `support` builds the isolated environment.

mod support;

mod agent_crash;
mod api_guard;
mod daemon_home;
mod demo;
mod field_store;
mod golden;
mod hardening;
mod idle;
mod notify;
mod queue_daemon;
mod queue_scale;
mod remote_hostile;
mod remote_s3;
mod runs_index;
mod schedule;
mod service;
mod slurm;
mod store_cli;
mod store_crash;
mod store_golden;
mod store_safety;
mod telemetry;
mod usage;
mod wandb_field;
mod wandb_server;
mod wandb_sync;
mod watch;
