//! `trainyard cluster`: SLURM clusters the queue sends jobs to, over the
//! daemon's API (`/api/v1/clusters`). `crate::cluster` owns the behaviour.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::jobs::{client, rt, DaemonArgs};
use super::{output, Ctx};
use trainyard::cluster::{parse_gres_types, Cluster};

/// `trainyard cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Add a SLURM cluster: its client commands (sbatch, squeue, sacct,
    /// scancel, sinfo) run on this machine, or on a login node through the
    /// system ssh client (keys and agent only; no password is stored).
    ///
    /// Example: trainyard cluster add hpc --slurm --partition gpu --account lab-a --ssh ana@login.hpc.example.org --gres-type 'A100=a100,H100=h100'
    Add {
        /// The cluster's name in Trainyard (`submit --on NAME`).
        name: String,
        /// It runs SLURM (the only kind so far; required).
        #[arg(long, required = true)]
        slurm: bool,
        /// The partition jobs go to [default: the cluster's default partition].
        #[arg(long, value_name = "P")]
        partition: Option<String>,
        /// The account charged (sbatch --account).
        #[arg(long, value_name = "A")]
        account: Option<String>,
        /// The quality of service (sbatch --qos).
        #[arg(long, value_name = "Q")]
        qos: Option<String>,
        /// Run the SLURM commands on this login node through ssh.
        #[arg(long, value_name = "USER@LOGIN-NODE")]
        ssh: Option<String>,
        /// GPU model pattern → gres type: a job asking for --gpu-model A100
        /// gets --gres=gpu:a100:N.
        #[arg(long = "gres-type", value_name = "MODEL=TYPE,...")]
        gres_type: Option<String>,
        /// The directory on the cluster for job output files and git
        /// checkouts [default: ~/.trainyard-slurm/NAME of the submitting user].
        #[arg(long, value_name = "DIR")]
        dir: Option<String>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// List the clusters: settings, jobs on each, whether the last poll got an answer.
    Ls {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Remove a cluster (refused while jobs are queued or running on it).
    Rm {
        /// The cluster.
        name: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Check a cluster: the client commands answer, the partition is up,
    /// the GPUs it offers (and the gres types of --gres-type exist).
    Test {
        /// The cluster.
        name: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// Run a `cluster` subcommand.
pub fn run(ctx: &Ctx, cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Add {
            name,
            slurm: _,
            partition,
            account,
            qos,
            ssh,
            gres_type,
            dir,
            daemon,
        } => {
            let c = Cluster {
                name,
                partition,
                account,
                qos,
                ssh,
                gres_types: match gres_type {
                    Some(t) => parse_gres_types(&t)?,
                    None => Default::default(),
                },
                dir,
            };
            trainyard::cluster::validate(&c)?;
            let added = rt()?.block_on(client(ctx, &daemon)?.cluster_add(&c))?;
            if ctx.json {
                output::json(&added)?;
            } else {
                println!(
                    "cluster {} added; check it with `trainyard cluster test {}`",
                    added.name, added.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Ls { daemon } => {
            let all = rt()?.block_on(client(ctx, &daemon)?.clusters())?;
            if ctx.json {
                output::json(&all)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<14} {:<10} {:<12} {:<26} {:>5}  STATUS",
                "NAME", "PARTITION", "ACCOUNT", "WHERE", "JOBS"
            );
            for s in &all {
                let c = &s.cluster;
                println!(
                    "{:<14} {:<10} {:<12} {:<26} {:>5}  {}",
                    output::short(&c.name, 14),
                    output::short(c.partition.as_deref().unwrap_or("(default)"), 10),
                    output::short(c.account.as_deref().unwrap_or("-"), 12),
                    output::short(c.ssh.as_deref().unwrap_or("this machine"), 26),
                    s.active_jobs,
                    match (&s.unreachable, s.checked_ns) {
                        (Some(e), _) => format!("cluster unreachable: {}", output::clean(e)),
                        (None, Some(t)) => format!("answered {}", output::time(t)),
                        (None, None) => "not polled yet".into(),
                    }
                );
            }
            if all.is_empty() {
                println!("(no clusters; add one with `trainyard cluster add NAME --slurm`)");
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Rm { name, daemon } => {
            rt()?.block_on(client(ctx, &daemon)?.cluster_remove(&name))?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("cluster {name} removed");
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Test { name, daemon } => {
            let r = rt()?.block_on(client(ctx, &daemon)?.cluster_test(&name))?;
            if ctx.json {
                output::json(&r)?;
            } else {
                for c in &r.checks {
                    println!(
                        "{} {:<10} {}",
                        if c.ok { "ok  " } else { "FAIL" },
                        c.what,
                        output::clean(c.detail.lines().next().unwrap_or(""))
                    );
                }
            }
            if !r.ok {
                if !ctx.json {
                    bail!("cluster {name}: some checks failed (above)");
                }
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
