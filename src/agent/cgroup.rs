//! cgroup v2 containment of attempts: one cgroup per attempt, created as a
//! child of the agent's own cgroup, so that every process a job starts —
//! including grandchildren that leave its process group with `setsid` — can
//! be found and killed (`cgroup.kill`, or each PID in `cgroup.procs` on
//! kernels before 5.14).
//!
//! Used only when the agent can create and populate a child of its own
//! cgroup (it runs as root with cgroup v2 mounted, or in a delegated subtree
//! such as a systemd unit with `Delegate=yes`); otherwise the agent falls
//! back to process groups and says so. This module knows nothing of jobs.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// Why cgroup v2 containment is not available (the agent then uses process
/// groups only).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted, or this process is not in one.
    #[error("no cgroup v2 hierarchy: {0}")]
    NoV2(String),
    /// The agent's cgroup exists but it may not create children in it.
    #[error("cannot create a cgroup under {path}: {source}")]
    NotWritable {
        /// The agent's own cgroup directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Where attempt cgroups are created: the agent's own cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    /// Find the agent's cgroup v2 directory and check that a child can be
    /// created there and processes moved into it.
    pub fn detect() -> Result<Cgroups, CgroupError> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| CgroupError::NoV2(format!("/proc/self/cgroup: {e}")))?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| CgroupError::NoV2("/proc/self/cgroup has no v2 entry".into()))?
            .trim()
            .to_string();
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| CgroupError::NoV2(format!("/proc/self/mountinfo: {e}")))?;
        let (root, point) = mounts
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                if post.split(' ').next()? != "cgroup2" {
                    return None;
                }
                let f: Vec<&str> = pre.split(' ').collect();
                Some((f.get(3)?.to_string(), PathBuf::from(f.get(4)?)))
            })
            .ok_or_else(|| CgroupError::NoV2("no cgroup2 mount in /proc/self/mountinfo".into()))?;
        let below = rel.strip_prefix(root.as_str()).unwrap_or(&rel);
        let base = point.join(below.trim_start_matches('/'));
        if !base.join("cgroup.procs").exists() {
            return Err(CgroupError::NoV2(format!(
                "{} is not a cgroup v2 directory",
                base.display()
            )));
        }
        let cg = Cgroups { base };
        let probe = cg
            .create(&format!("trainyard-probe-{}", std::process::id()))
            .map_err(|source| CgroupError::NotWritable {
                path: cg.base.clone(),
                source,
            })?;
        let writable = fs::OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))
            .map(|_| ());
        let _ = fs::remove_dir(&probe);
        writable.map_err(|source| CgroupError::NotWritable {
            path: cg.base.clone(),
            source,
        })?;
        Ok(cg)
    }

    /// The agent's cgroup directory, where attempt cgroups go.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The path the cgroup named `name` has (whether or not it exists).
    pub fn path(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// Create the cgroup `name` (an empty leftover of the same name is
    /// replaced).
    pub fn create(&self, name: &str) -> io::Result<PathBuf> {
        let p = self.path(name);
        match fs::create_dir(&p) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_dir(&p)?;
                fs::create_dir(&p)?;
            }
            r => r?,
        }
        Ok(p)
    }
}

impl Cgroups {
    /// Remove empty attempt cgroups (`trainyard-<pid>-…`) left by agents
    /// that no longer run (killed and not restarted here). A cgroup that
    /// still holds a process is never touched (`rmdir` refuses it).
    pub fn sweep_stale(&self) {
        let Ok(rd) = fs::read_dir(&self.base) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("trainyard-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_dir(e.path()).is_ok() {
                tracing::debug!(cgroup = %e.path().display(), "removed an empty cgroup of an agent that is gone");
            }
        }
    }
}

/// Open `cgroup.procs` of `dir` for writing: the child writes `0` to it
/// between fork and exec to move itself in.
pub fn open_procs(dir: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
}

/// The PIDs in the cgroup (none when it is gone).
pub fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether `pid` is in the cgroup at `dir`.
pub fn contains(dir: &Path, pid: u32) -> bool {
    procs(dir).contains(&pid)
}

/// Whether no process is left in the cgroup (or it is gone).
pub fn is_empty(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(ev) => ev.lines().any(|l| l.trim() == "populated 0"),
        Err(_) => procs(dir).is_empty(),
    }
}

/// Send `sig` to every process in the cgroup.
pub fn signal(dir: &Path, sig: Signal) {
    for pid in procs(dir) {
        if let Some(p) = Pid::from_raw(pid as i32) {
            let _ = kill_process(p, sig);
        }
    }
}

/// SIGKILL everything in the cgroup: `cgroup.kill` (atomic, forks cannot
/// escape), or on older kernels each listed PID until none is left.
pub fn kill(dir: &Path) {
    let killed = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if killed.is_err() {
        for _ in 0..50 {
            let left = procs(dir);
            if left.is_empty() {
                break;
            }
            signal(dir, Signal::KILL);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Wait (at most `limit`) until the cgroup is empty; true if it is.
pub fn wait_empty(dir: &Path, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if is_empty(dir) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kill what is left, wait for it, and remove the cgroup. Logs when it
/// cannot be removed (a process in uninterruptible sleep keeps it busy).
pub fn destroy(dir: &Path) {
    if !dir.exists() {
        return;
    }
    kill(dir);
    wait_empty(dir, Duration::from_secs(5));
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(e) = last {
        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove an attempt's cgroup");
    }
}
