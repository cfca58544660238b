//! SLURM clusters: the same queue reaches a cluster. Trainyard is not a
//! cluster scheduler here: it translates a job spec into a batch script,
//! hands it to `sbatch`, and follows what SLURM does with it.
//!
//! - this module: a cluster's settings ([`Cluster`], `cluster add`), kept
//!   in the queue's database (`clusters`, beside the jobs sent to them), and
//!   [`Clusters`], the store over it;
//! - `runner`: the SLURM client commands, run here or through the system
//!   `ssh` client on a login node (key-based; no password is ever stored);
//! - `slurm`: pure translation — a job spec to `sbatch` options and a
//!   script, `squeue`/`sacct`/`sinfo` output to rows, SLURM states to
//!   Trainyard's;
//! - `follow`: the follower — submits a cluster's queued jobs and follows
//!   all of its jobs with one batched `squeue` (+ `sacct`) per poll, backing
//!   off from 5 s to 60 s while nothing changes; copies their output into
//!   the attempt logs; marks them "cluster unreachable" (and nothing else)
//!   when the controller does not answer.
//!
//! It must not invent state: a job's Trainyard state changes only on what
//! SLURM reported. It uses the queue's transactions and attempt tokens like
//! an agent would, and never reads the clock except in `follow`'s loop.

pub mod follow;
pub mod runner;
pub mod slurm;

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::db::now_ns;
use crate::queue::{Queue, QueueError};

pub use runner::{RunError, Runner};

/// The agent name an attempt on cluster `name` is recorded under (the
/// "host" of its usage holdings): `slurm:NAME`.
pub fn agent_name(name: &str) -> String {
    format!("slurm:{name}")
}

/// A cluster's settings, as `cluster add` recorded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Its name in Trainyard (`submit --on NAME`).
    pub name: String,
    /// The partition jobs go to (`sbatch --partition`); the cluster's
    /// default when absent.
    #[serde(default)]
    pub partition: Option<String>,
    /// The account charged (`sbatch --account`).
    #[serde(default)]
    pub account: Option<String>,
    /// The quality of service (`sbatch --qos`).
    #[serde(default)]
    pub qos: Option<String>,
    /// `USER@LOGIN-NODE`: run the SLURM commands there through `ssh`
    /// (the user's ssh config and agent); absent: run them here.
    #[serde(default)]
    pub ssh: Option<String>,
    /// GPU model pattern → SLURM gres type (`A100=a100`): a job asking for
    /// model `A100` gets `--gres=gpu:a100:N`.
    #[serde(default)]
    pub gres_types: BTreeMap<String, String>,
    /// The directory on the cluster side for job output files and git
    /// checkouts; absent: `~/.trainyard-slurm/NAME` of the submitting user.
    #[serde(default)]
    pub dir: Option<String>,
}

impl Cluster {
    /// The runner of this cluster's commands.
    pub fn runner(&self) -> Runner {
        Runner::new(self.ssh.clone())
    }

    /// The cluster-side directory of output files and checkouts, as a
    /// shell word (`$HOME` expanded by the shell that runs `sbatch`).
    pub fn dir_word(&self) -> String {
        match &self.dir {
            Some(d) => runner::quote(d),
            None => format!("\"$HOME\"/.trainyard-slurm/{}", runner::quote(&self.name)),
        }
    }
}

/// What `cluster ls` shows of a cluster: its settings and whether its
/// controller answered the last poll.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The settings.
    #[serde(flatten)]
    pub cluster: Cluster,
    /// `slurm`.
    pub kind: String,
    /// Why the last poll got no answer (`None`: it did, or none ran yet).
    pub unreachable: Option<String>,
    /// When the cluster was last polled (ns since the epoch).
    pub checked_ns: Option<i64>,
    /// Jobs queued or in flight on it.
    pub active_jobs: u64,
}

/// Cluster errors; each names the cluster or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The queue database.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A field of `cluster add` is not acceptable.
    #[error("invalid cluster: {field}: {reason}")]
    Invalid {
        /// The field (`name`, `gres_types`, `ssh`, ...).
        field: String,
        /// Why.
        reason: String,
    },
    /// No cluster of that name.
    #[error("no cluster {0:?} (see `trainyard cluster ls`)")]
    Unknown(String),
    /// The name is taken.
    #[error("a cluster named {0:?} exists; remove it first (`trainyard cluster rm {0}`)")]
    Exists(String),
    /// Jobs still queued or running on it.
    #[error(
        "cluster {name:?} has {jobs} job(s) queued or running; cancel them (or wait) before \
         removing it"
    )]
    Busy {
        /// The cluster.
        name: String,
        /// How many.
        jobs: u64,
    },
    /// A SLURM command failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

fn invalid(field: &str, reason: impl Into<String>) -> ClusterError {
    ClusterError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Check a cluster name: 1-64 letters, digits, `_` or `-`.
pub fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?}: use 1-64 letters, digits, '_' or '-'"),
        ))
    }
}

/// Parse `--gres-type 'A100=a100,H100=h100'`: model pattern → gres type.
pub fn parse_gres_types(text: &str) -> Result<BTreeMap<String, String>, ClusterError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((model, ty)) = item.split_once('=') else {
            return Err(invalid(
                "gres_types",
                format!("{item:?}: expected MODEL=TYPE, e.g. A100=a100"),
            ));
        };
        let (model, ty) = (model.trim(), ty.trim());
        if model.is_empty() || !slurm_word(ty) {
            return Err(invalid(
                "gres_types",
                format!("{item:?}: expected MODEL=TYPE with a gres type of letters, digits, '_', '-' or '.'"),
            ));
        }
        out.insert(model.to_string(), ty.to_string());
    }
    Ok(out)
}

/// A word SLURM takes as is in an option (partition, account, qos, gres
/// type): letters, digits, `_`, `-`, `.`.
fn slurm_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Check every field of a cluster before it is stored.
pub fn validate(c: &Cluster) -> Result<(), ClusterError> {
    check_name(&c.name)?;
    for (field, v) in [
        ("partition", &c.partition),
        ("account", &c.account),
        ("qos", &c.qos),
    ] {
        if let Some(v) = v {
            if !slurm_word(v) {
                return Err(invalid(
                    field,
                    format!("{v:?}: use letters, digits, '_', '-' or '.'"),
                ));
            }
        }
    }
    if let Some(s) = &c.ssh {
        runner::check_ssh_target(s).map_err(|reason| invalid("ssh", reason))?;
    }
    for (model, ty) in &c.gres_types {
        if model.trim().is_empty() || !slurm_word(ty) {
            return Err(invalid(
                "gres_types",
                format!("{model:?}={ty:?}: expected MODEL=TYPE"),
            ));
        }
    }
    if let Some(d) = &c.dir {
        if !d.starts_with('/') {
            return Err(invalid(
                "dir",
                format!("{d:?}: give an absolute path on the cluster"),
            ));
        }
    }
    Ok(())
}

/// The clusters kept in the queue's database.
pub struct Clusters<'q> {
    queue: &'q Queue,
}

impl<'q> Clusters<'q> {
    /// The clusters of `queue`'s database.
    pub fn new(queue: &'q Queue) -> Clusters<'q> {
        Clusters { queue }
    }

    /// Record a new cluster, its fields checked.
    pub fn add(&self, c: &Cluster) -> Result<(), ClusterError> {
        validate(c)?;
        self.queue.transaction(|tx| {
            let exists = tx
                .query_row("SELECT 1 FROM clusters WHERE name = ?1", [&c.name], |_| {
                    Ok(())
                })
                .optional()
                .map_err(|e| self.queue.sql_error(e))?
                .is_some();
            if exists {
                return Err(ClusterError::Exists(c.name.clone()));
            }
            tx.execute(
                "INSERT INTO clusters (name, kind, partition, account, qos, ssh, gres_types, dir,
                                       created_ns)
                 VALUES (?1, 'slurm', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    c.name,
                    c.partition,
                    c.account,
                    c.qos,
                    c.ssh,
                    serde_json::to_string(&c.gres_types).expect("maps serialize"),
                    c.dir,
                    now_ns()
                ],
            )
            .map_err(|e| self.queue.sql_error(e))?;
            Ok(())
        })?;
        tracing::info!(cluster = c.name, ssh = ?c.ssh, "cluster added");
        Ok(())
    }

    /// Every cluster with its status, by name.
    pub fn list(&self) -> Result<Vec<ClusterStatus>, ClusterError> {
        self.queue.read(|conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT c.name, c.partition, c.account, c.qos, c.ssh, c.gres_types, c.dir,
                            c.kind, c.unreachable, c.checked_ns,
                            (SELECT count(*) FROM jobs j WHERE j.cluster = c.name
                               AND j.state IN ('queued', 'assigned', 'running'))
                     FROM clusters c ORDER BY c.name",
                )
                .map_err(|e| self.queue.sql_error(e))?;
            let rows = st
                .query_map([], |r| {
                    Ok(ClusterStatus {
                        cluster: Cluster {
                            name: r.get(0)?,
                            partition: r.get(1)?,
                            account: r.get(2)?,
                            qos: r.get(3)?,
                            ssh: r.get(4)?,
                            gres_types: serde_json::from_str(&r.get::<_, String>(5)?)
                                .unwrap_or_default(),
                            dir: r.get(6)?,
                        },
                        kind: r.get(7)?,
                        unreachable: r.get(8)?,
                        checked_ns: r.get(9)?,
                        active_jobs: r.get::<_, i64>(10)? as u64,
                    })
                })
                .map_err(|e| self.queue.sql_error(e))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.queue.sql_error(e))?;
            Ok(rows)
        })
    }

    /// One cluster's settings.
    pub fn get(&self, name: &str) -> Result<Cluster, ClusterError> {
        self.list()?
            .into_iter()
            .find(|c| c.cluster.name == name)
            .map(|c| c.cluster)
            .ok_or_else(|| ClusterError::Unknown(name.to_string()))
    }

    /// Forget a cluster; refused while jobs are queued or running on it.
    pub fn remove(&self, name: &str) -> Result<(), ClusterError> {
        self.queue.transaction(|tx| {
            let exists = tx
                .query_row("SELECT 1 FROM clusters WHERE name = ?1", [name], |_| Ok(()))
                .optional()
                .map_err(|e| self.queue.sql_error(e))?
                .is_some();
            if !exists {
                return Err(ClusterError::Unknown(name.to_string()));
            }
            let jobs: i64 = tx
                .query_row(
                    "SELECT count(*) FROM jobs WHERE (cluster = ?1 OR overflow_cluster = ?1)
                       AND state IN ('queued', 'assigned', 'running')",
                    [name],
                    |r| r.get(0),
                )
                .map_err(|e| self.queue.sql_error(e))?;
            if jobs > 0 {
                return Err(ClusterError::Busy {
                    name: name.to_string(),
                    jobs: jobs as u64,
                });
            }
            tx.execute("DELETE FROM clusters WHERE name = ?1", [name])
                .map_err(|e| self.queue.sql_error(e))?;
            Ok(())
        })
    }

    /// Record the outcome of a poll: reachable (`None`) or why not.
    pub fn set_reachability(&self, name: &str, err: Option<&str>) -> Result<(), ClusterError> {
        self.queue.transaction(|tx| {
            tx.execute(
                "UPDATE clusters SET unreachable = ?2, checked_ns = ?3 WHERE name = ?1",
                params![name, err, now_ns()],
            )
            .map_err(|e| self.queue.sql_error(e))?;
            Ok(())
        })
    }
}

/// What `cluster test` found: each check with its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestReport {
    /// The cluster.
    pub cluster: String,
    /// The checks in order.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub ok: bool,
}

/// One check of `cluster test`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`sbatch`, `partition`, `gpus`, ...).
    pub what: String,
    /// Passed.
    pub ok: bool,
    /// What was found, or what failed and what to do.
    pub detail: String,
}

/// `cluster test NAME`: the client commands answer (their version), the
/// controller answers, the partition exists and is up, and its GPUs.
pub fn test(c: &Cluster) -> TestReport {
    let runner = c.runner();
    let mut checks = Vec::new();
    for prog in ["sbatch", "squeue", "sacct", "scancel", "sinfo"] {
        let r = runner.run(prog, &["--version".to_string()], None);
        checks.push(match r {
            Ok(out) => Check {
                what: prog.into(),
                ok: true,
                detail: out.trim().to_string(),
            },
            Err(e) => Check {
                what: prog.into(),
                ok: false,
                detail: e.to_string(),
            },
        });
    }
    checks.push(trainyard_check(&runner));
    match pool(c) {
        Ok(p) => {
            let part_ok = p.state.starts_with("up");
            checks.push(Check {
                what: "partition".into(),
                ok: part_ok,
                detail: format!("{} is {} ({} node(s))", p.partition, p.state, p.nodes),
            });
            let types: Vec<String> = p
                .gpu_types
                .iter()
                .map(|(t, n)| format!("{n}x {t}"))
                .collect();
            checks.push(Check {
                what: "gpus".into(),
                ok: p.gpus_total > 0,
                detail: if p.gpus_total > 0 {
                    format!(
                        "{} GPU(s): {} ({} allocated, {} idle)",
                        p.gpus_total,
                        types.join(", "),
                        p.gpus_allocated,
                        p.gpus_total.saturating_sub(p.gpus_allocated)
                    )
                } else {
                    "the partition offers no gres/gpu (CPU jobs only)".into()
                },
            });
            for ty in c.gres_types.values() {
                if !p.gpu_types.iter().any(|(t, _)| t == ty) {
                    checks.push(Check {
                        what: "gres_types".into(),
                        ok: false,
                        detail: format!(
                            "gres type {ty:?} of --gres-type is not offered by partition {} \
                             (it has: {})",
                            p.partition,
                            types.join(", ")
                        ),
                    });
                }
            }
        }
        Err(e) => checks.push(Check {
            what: "partition".into(),
            ok: false,
            detail: e.to_string(),
        }),
    }
    let ok = checks.iter().all(|c| c.ok);
    TestReport {
        cluster: c.name.clone(),
        checks,
        ok,
    }
}

/// The `trainyard` binary on the cluster's side (what a job runs for
/// `trainyard data pull`): absent is fine for jobs without dataset inputs;
/// present with another version is a failed check (formats and flags may
/// differ).
fn trainyard_check(runner: &Runner) -> Check {
    let ours = env!("CARGO_PKG_VERSION");
    match runner.run("trainyard", &["--version".to_string()], None) {
        Ok(out) => {
            let theirs = out.split_whitespace().nth(1).unwrap_or("").to_string();
            Check {
                what: "trainyard".into(),
                ok: theirs == ours,
                detail: if theirs == ours {
                    format!("trainyard {theirs} on the cluster, as here")
                } else {
                    format!(
                        "trainyard {theirs} on the cluster, {ours} here: install the same                          version there (docs/slurm.md)"
                    )
                },
            }
        }
        Err(_) => Check {
            what: "trainyard".into(),
            ok: true,
            detail: format!(
                "no trainyard {ours} on the cluster's PATH: needed only by jobs that pull                  datasets there (docs/slurm.md)"
            ),
        },
    }
}

/// The cluster as a GPU pool, from `sinfo`: its partition, GPU types,
/// GPUs idle and allocated.
pub fn pool(c: &Cluster) -> Result<slurm::Pool, ClusterError> {
    let out = c.runner().run("sinfo", &slurm::sinfo_args(c), None)?;
    slurm::parse_sinfo(&out, c.partition.as_deref()).map_err(|reason| invalid("partition", reason))
}
