//! Running one attempt's process: a clean environment (built by `env`), its
//! own process group and, when the agent has cgroup v2, its own cgroup; the
//! assigned GPUs made visible in NVML's order, stdout and stderr to a log
//! file, a timeout, and cancellation by SIGTERM to the whole group (and
//! cgroup), then SIGKILL after a grace period.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

use super::cgroup;

/// A request to stop an attempt, shared between the agent and the thread
/// that waits for the process; it may shorten the grace period.
#[derive(Debug, Default)]
pub struct StopFlag {
    stop: AtomicBool,
    /// The grace period to use instead of the attempt's, in ms (0: none set).
    grace_ms: AtomicU64,
}

impl StopFlag {
    /// Ask for a stop with the attempt's own grace period.
    pub fn request(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Ask for a stop with at most `grace` between SIGTERM and SIGKILL.
    pub fn request_within(&self, grace: Duration) {
        let ms = (grace.as_millis() as u64).max(1);
        let _ = self
            .grace_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| {
                Some(if g == 0 { ms } else { g.min(ms) })
            });
        self.request();
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn grace(&self, default: Duration) -> Duration {
        match self.grace_ms.load(Ordering::Relaxed) {
            0 => default,
            ms => default.min(Duration::from_millis(ms)),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// What the job sees of the agent's environment (`env::base_env`); the
    /// process starts from this alone, never from the agent's environment.
    pub base_env: Vec<(OsString, OsString)>,
    /// The job's own variables and Trainyard's, over `base_env`.
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
    /// The attempt's (created, empty) cgroup, when the agent has cgroup v2.
    pub cgroup: Option<PathBuf>,
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
    cgroup: Option<PathBuf>,
}

/// Start the process in a new process group (and in `spec.cgroup`).
pub fn start(spec: &RunSpec) -> Result<Running, RunError> {
    let (program, args) = spec.argv.split_first().ok_or(RunError::Empty)?;
    // Owner-only: a job's output may print secrets.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
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
        .env_clear()
        .envs(spec.base_env.iter().map(|(k, v)| (k, v)))
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
    let procs = spec
        .cgroup
        .as_deref()
        .and_then(|dir| match cgroup::open_procs(dir) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot open the attempt's cgroup; using its process group only");
                None
            }
        });
    if let Some(f) = &procs {
        let fd = f.as_raw_fd();
        // SAFETY: runs in the child between fork and exec and calls only
        // write(2), which is async-signal-safe, on a descriptor the parent
        // keeps open until spawn returns. Writing "0" to cgroup.procs moves
        // the writer itself into the cgroup before the job's program runs,
        // so everything it ever forks is born inside. A failure is left for
        // the parent to notice (it checks membership) rather than failing
        // the start.
        unsafe {
            cmd.pre_exec(move || {
                let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        workdir: spec.workdir.clone(),
        source,
    })?;
    drop(procs);
    // The cgroup is kept (and removed at the end) even when the process
    // turns out not to be inside: it may simply have exited already.
    let cgroup = spec.cgroup.clone();
    if let Some(dir) = &cgroup {
        let running = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false);
        if running && !cgroup::contains(dir, child.id()) {
            tracing::warn!(pid = child.id(), cgroup = %dir.display(), "the process did not enter its cgroup; its process group still applies");
        }
    }
    tracing::info!(pid = child.id(), program = %program, cgroup = ?cgroup, "attempt started");
    Ok(Running {
        child,
        started: Instant::now(),
        timeout: spec.timeout,
        grace: spec.grace,
        cgroup,
    })
}

impl Running {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The cgroup the process runs in, if any.
    pub fn cgroup(&self) -> Option<&std::path::Path> {
        self.cgroup.as_deref()
    }

    fn signal_group(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            // The group may already be gone; nothing to do then.
            let _ = kill_process_group(pid, sig);
        }
        if let Some(dir) = &self.cgroup {
            if sig == Signal::KILL {
                cgroup::kill(dir);
            } else {
                cgroup::signal(dir, sig);
            }
        }
    }

    /// Whether anything of the attempt still runs besides a leader that
    /// already exited (only known with a cgroup).
    fn others_left(&self) -> bool {
        self.cgroup.as_deref().is_some_and(|d| !cgroup::is_empty(d))
    }

    /// Kill what is left and remove the cgroup.
    fn clean_up(&self) {
        self.signal_group(Signal::KILL);
        if let Some(dir) = &self.cgroup {
            cgroup::destroy(dir);
        }
    }

    /// Wait for the end, enforcing the timeout and watching `cancel`.
    pub fn wait(&mut self, cancel: &StopFlag) -> Result<Outcome, RunError> {
        let pid = self.child.id();
        let werr = |source| RunError::Wait { pid, source };
        loop {
            if let Some(st) = self.child.try_wait().map_err(werr)? {
                // Leave nothing of the group behind (background children).
                self.clean_up();
                return Ok(match (st.code(), st.signal()) {
                    (Some(c), _) => Outcome::Exited(c),
                    (None, Some(s)) => Outcome::Signaled(s),
                    (None, None) => Outcome::Signaled(0),
                });
            }
            let timed_out = self.timeout.is_some_and(|t| self.started.elapsed() >= t);
            if timed_out || cancel.requested() {
                let grace = cancel.grace(self.grace);
                self.stop(grace).map_err(werr)?;
                return Ok(if timed_out {
                    Outcome::TimedOut
                } else {
                    Outcome::Cancelled
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to the group (and cgroup), SIGKILL after `grace`, reap,
    /// and remove the cgroup.
    fn stop(&mut self, grace: Duration) -> std::io::Result<()> {
        self.signal_group(Signal::TERM);
        let deadline = Instant::now() + grace;
        let mut exited = false;
        while Instant::now() < deadline {
            exited = exited || self.child.try_wait()?.is_some();
            if exited && !self.others_left() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(Signal::KILL);
        let r = self.child.wait().map(|_| ());
        self.clean_up();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, script: &str) -> RunSpec {
        RunSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            base_env: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
            env: BTreeMap::from([("LR".to_string(), "0.1".to_string())]),
            workdir: dir.to_path_buf(),
            gpus: vec![(2, "GPU-b".into()), (0, "GPU-a".into())],
            log: dir.join("log"),
            timeout: None,
            grace: Duration::from_millis(300),
            cgroup: None,
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
        let s = spec(d.path(), "echo out $LR $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $TRAINYARD_GPU_UUIDS ${HOME:-nohome}; echo err >&2; exit 3");
        let mut r = start(&s).unwrap();
        assert_eq!(r.wait(&StopFlag::default()).unwrap(), Outcome::Exited(3));
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        // Only the given environment: HOME is not in this spec's base.
        assert_eq!(log, "out 0.1 2,0 PCI_BUS_ID GPU-b,GPU-a nohome\nerr\n");
    }

    #[test]
    fn timeout_kills_the_whole_group_even_if_term_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path(), "trap '' TERM; sleep 30 & echo $! > child; wait");
        s.timeout = Some(Duration::from_millis(300));
        let mut r = start(&s).unwrap();
        let t = Instant::now();
        assert_eq!(r.wait(&StopFlag::default()).unwrap(), Outcome::TimedOut);
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
        let cancel = StopFlag::default();
        cancel.request();
        assert_eq!(r.wait(&cancel).unwrap(), Outcome::Cancelled);
        let mut s = spec(d.path(), "");
        s.argv = vec!["/no/such/train.py".into()];
        let e = start(&s).unwrap_err().to_string();
        assert!(e.contains("/no/such/train.py"), "{e}");
    }

    #[test]
    fn a_setsid_grandchild_dies_with_its_cgroup() {
        let cgroups = match super::super::cgroup::Cgroups::detect() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIPPED a_setsid_grandchild_dies_with_its_cgroup: needs a writable cgroup v2 ({e})");
                return;
            }
        };
        let d = tempfile::tempdir().unwrap();
        let name = format!("trainyard-unit-{}", std::process::id());
        let dir = cgroups.create(&name).unwrap();
        let mut s = spec(d.path(), "setsid sleep 300 & echo $! > child; sleep 300");
        s.cgroup = Some(dir.clone());
        let mut r = start(&s).unwrap();
        assert_eq!(r.cgroup(), Some(dir.as_path()));
        let pidfile = d.path().join("child");
        let end = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n')) {
            assert!(Instant::now() < end);
            std::thread::sleep(Duration::from_millis(20));
        }
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(child));
        let cancel = StopFlag::default();
        cancel.request();
        assert_eq!(r.wait(&cancel).unwrap(), Outcome::Cancelled);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive(child), "the setsid grandchild survived the cancel");
        assert!(!dir.exists(), "the attempt's cgroup was not removed");
    }
}
