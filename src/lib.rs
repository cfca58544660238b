//! Trainyard's core library: every behaviour lives here.
//!
//! The `trainyard` binary (CLI), the HTTP daemon and the desktop shell are thin
//! layers that translate user input into calls on these modules and print the
//! results. See `ARCHITECTURE.md` for the map and its invariants.

pub mod agent;
pub mod api;
pub mod client;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod gpu;
pub mod home;
pub mod idle;
pub mod notify;
pub mod progress;
pub mod queue;
pub mod remote;
pub mod sched;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod user;
pub mod wandb;
pub mod watch;

pub use home::Home;
