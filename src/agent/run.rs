//! Running one attempt's process: its own process group, the assigned GPUs
//! made visible in NVML's order, stdout and stderr to a log file, a timeout,
//! and cancellation by SIGTERM to the whole group, then SIGKILL after a grace
//! period.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Assigned GPUs as (NVML index, UUID).
    pub gpus: Vec<(u32, String)>,
    /// The log file (appended to; stdout and stderr both go there).
    pub log: PathBuf,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code.
    Exited(i32),
    /// It was killed by this signal (not by us).
    Signaled(i32),
    /// We stopped it at the timeout.
    TimedOut,
    /// We stopped it because the job was cancelled.
    Cancelled,
}

impl Outcome {
    /// The exit code to record (`None` when it did not exit by itself).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(c) => Some(*c),
            _ => None,
        }
    }
}

/// Why a process could not be started or watched.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The log file could not be opened.
    #[error("cannot open the log file {path}: {source}")]
    Log {
        /// The log path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The program could not be started (missing, not executable, bad workdir).
    #[error("cannot start {program:?} in {workdir}: {source}")]
    Spawn {
        /// The program (`argv[0]`).
        program: String,
        /// The working directory.
        workdir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An empty argv.
    #[error("nothing to run: the command is empty")]
    Empty,
    /// Waiting failed.
    #[error("waiting for pid {pid}: {source}")]
    Wait {
        /// The process.
        pid: u32,
        /// The cause.
        source: std::io::Error,
    },
}

/// A started attempt.
#[derive(Debug)]
pub struct Running {
    child: Child,
    started: Instant,
    timeout: Option<Duration>,
    grace: Duration,
}

/// Start the process in a new process group.
pub fn start(spec: &RunSpec) -> Result<Running, RunError> {
    let (program, args) = spec.argv.split_first().ok_or(RunError::Empty)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|source| RunError::Log {
            path: spec.log.clone(),
            source,
        })?;
    let err_log = log.try_clone().map_err(|source| RunError::Log {
        path: spec.log.clone(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&spec.workdir)
        .envs(&spec.env)
        // CUDA's default order is "fastest first"; NVML's is PCI bus order.
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .env(
            "CUDA_VISIBLE_DEVICES",
            spec.gpus
                .iter()
                .map(|g| g.0.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .env(
            "TRAINYARD_GPU_UUIDS",
            spec.gpus
                .iter()
                .map(|g| g.1.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .process_group(0);
    let child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        workdir: spec.workdir.clone(),
        source,
    })?;
    tracing::info!(pid = child.id(), program = %program, "attempt started");
    Ok(Running {
        child,
        started: Instant::now(),
        timeout: spec.timeout,
        grace: spec.grace,
    })
}

impl Running {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal_group(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            // The group may already be gone; nothing to do then.
            let _ = kill_process_group(pid, sig);
        }
    }

    /// Wait for the end, enforcing the timeout and watching `cancel`.
    pub fn wait(&mut self, cancel: &AtomicBool) -> Result<Outcome, RunError> {
        let pid = self.child.id();
        let werr = |source| RunError::Wait { pid, source };
        loop {
            if let Some(st) = self.child.try_wait().map_err(werr)? {
                // Leave nothing of the group behind (background children).
                self.signal_group(Signal::KILL);
                return Ok(match (st.code(), st.signal()) {
                    (Some(c), _) => Outcome::Exited(c),
                    (None, Some(s)) => Outcome::Signaled(s),
                    (None, None) => Outcome::Signaled(0),
                });
            }
            let timed_out = self.timeout.is_some_and(|t| self.started.elapsed() >= t);
            if timed_out || cancel.load(Ordering::Relaxed) {
                self.stop().map_err(werr)?;
                return Ok(if timed_out {
                    Outcome::TimedOut
                } else {
                    Outcome::Cancelled
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period, then reap.
    fn stop(&mut self) -> std::io::Result<()> {
        self.signal_group(Signal::TERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(Signal::KILL);
        self.child.wait().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, script: &str) -> RunSpec {
        RunSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::from([("LR".to_string(), "0.1".to_string())]),
            workdir: dir.to_path_buf(),
            gpus: vec![(2, "GPU-b".into()), (0, "GPU-a".into())],
            log: dir.join("log"),
            timeout: None,
            grace: Duration::from_millis(300),
        }
    }

    /// Running, not a zombie waiting for a reaper (PID 1 in a container may be slow to reap).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }

    #[test]
    fn exit_code_env_and_log() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path(), "echo out $LR $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $TRAINYARD_GPU_UUIDS; echo err >&2; exit 3");
        let mut r = start(&s).unwrap();
        assert_eq!(r.wait(&AtomicBool::new(false)).unwrap(), Outcome::Exited(3));
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        assert_eq!(log, "out 0.1 2,0 PCI_BUS_ID GPU-b,GPU-a\nerr\n");
    }

    #[test]
    fn timeout_kills_the_whole_group_even_if_term_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path(), "trap '' TERM; sleep 30 & echo $! > child; wait");
        s.timeout = Some(Duration::from_millis(300));
        let mut r = start(&s).unwrap();
        let t = Instant::now();
        assert_eq!(r.wait(&AtomicBool::new(false)).unwrap(), Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
        let child: i32 = std::fs::read_to_string(d.path().join("child"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive(child), "a grandchild survived");
    }

    #[test]
    fn cancel_stops_it_and_missing_programs_are_named() {
        let d = tempfile::tempdir().unwrap();
        let mut r = start(&spec(d.path(), "sleep 30")).unwrap();
        let cancel = AtomicBool::new(true);
        assert_eq!(r.wait(&cancel).unwrap(), Outcome::Cancelled);
        let mut s = spec(d.path(), "");
        s.argv = vec!["/no/such/train.py".into()];
        let e = start(&s).unwrap_err().to_string();
        assert!(e.contains("/no/such/train.py"), "{e}");
    }
}
