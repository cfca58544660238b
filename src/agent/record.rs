//! What survives an agent crash: one file per attempt that has (or is about
//! to have) a process, `agent/<name>/attempts/<job>-<n>.json` (mode 0600),
//! naming the attempt, its token, its process group leader with the leader's
//! start time (so a recycled PID is never signalled) and its cgroup. It is
//! written before the process starts (cgroup) and again right after the
//! spawn (PID), updated with the outcome when the process ends, and removed
//! once the daemon has heard the end.
//!
//! On start, an agent reads the records its previous run left
//! ([`Records::load`]) and stops their processes ([`stop_orphans`]) before it
//! takes new work. This module knows nothing of the daemon.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};

use super::cgroup;
use crate::queue::JobId;

/// A persisted attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The job.
    pub job: JobId,
    /// The attempt number.
    pub attempt: u32,
    /// The attempt token (what the daemon knows the attempt by).
    pub token: String,
    /// The process group leader (its PID is the group id), once spawned.
    pub pid: Option<u32>,
    /// The leader's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22), to tell it from a later process with a recycled PID.
    pub start_ticks: Option<u64>,
    /// The attempt's cgroup, when the agent uses cgroup v2.
    pub cgroup: Option<PathBuf>,
    /// How the process ended, once it has (not yet reported to the daemon).
    pub end: Option<RecordedEnd>,
}

/// The end of an attempt as the agent will report it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedEnd {
    /// The exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
    /// Why it ended otherwise.
    pub error: Option<String>,
}

/// A record that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading, writing or removing the file failed.
    #[error("attempt record {path}: {source}")]
    Io {
        /// The record file (or directory).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a record.
    #[error("attempt record {path} is damaged: {source}")]
    Parse {
        /// The record file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The attempt records of one agent.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Records {
        Records { dir }
    }

    fn path(&self, job: JobId, attempt: u32) -> PathBuf {
        self.dir.join(format!("{job}-{attempt}.json"))
    }

    /// Write (or replace) a record: a 0600 temp file renamed over the old.
    pub fn write(&self, r: &AttemptRecord) -> Result<(), RecordError> {
        let path = self.path(r.job, r.attempt);
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(|source| RecordError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&serde_json::to_vec(r).expect("a record serializes"))
            .map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io)
    }

    /// Remove a record (absent is fine).
    pub fn remove(&self, job: JobId, attempt: u32) -> Result<(), RecordError> {
        let path = self.path(job, attempt);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(RecordError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every record left in the directory with its path (damaged ones as
    /// errors, so the caller can name and discard them); removes stray temp
    /// files.
    pub fn load(&self) -> Vec<(PathBuf, Result<AttemptRecord, RecordError>)> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(source) => {
                return vec![(
                    self.dir.clone(),
                    Err(RecordError::Io {
                        path: self.dir.clone(),
                        source,
                    }),
                )]
            }
        };
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".json.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            out.push((
                path.clone(),
                fs::read(&path)
                    .map_err(|source| RecordError::Io {
                        path: path.clone(),
                        source,
                    })
                    .and_then(|b| {
                        serde_json::from_slice(&b).map_err(|source| RecordError::Parse {
                            path: path.clone(),
                            source,
                        })
                    }),
            ));
        }
        out
    }

    /// Remove a damaged record file by path.
    pub fn discard(path: &Path) {
        let _ = fs::remove_file(path);
    }
}

/// `/proc/PID/stat` fields after the command: (state, pgrp, start ticks).
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    Some((
        f.first()?.chars().next()?,
        f.get(2)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// The start time of `pid` in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.2)
}

/// Live (not zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(st, pg, _)| pg == pgid && st != 'Z'))
        .collect()
}

/// The process group of a record that is still its own: `None` when the
/// PID now belongs to another process (same PID, different start time).
/// Linux never hands out a PID that is still some group's id, so while any
/// member of the group lives, the group is the attempt's.
fn own_group(r: &AttemptRecord) -> Option<u32> {
    let pid = r.pid?;
    match (stat(pid), r.start_ticks) {
        (Some((_, _, t)), Some(rec)) if t != rec => None,
        (Some((_, pg, _)), None) if pg != pid => None,
        _ => Some(pid),
    }
}

fn signal(r: &AttemptRecord, group: Option<u32>, sig: Signal) {
    if let Some(pg) = group.and_then(|g| Pid::from_raw(g as i32)) {
        if stat(pg.as_raw_nonzero().get() as u32).is_some() {
            let _ = kill_process_group(pg, sig);
        } else {
            // The leader is gone; signal the members one by one.
            for pid in group_members(pg.as_raw_nonzero().get() as u32) {
                if let Some(p) = Pid::from_raw(pid as i32) {
                    let _ = kill_process(p, sig);
                }
            }
        }
    }
    if let Some(dir) = &r.cgroup {
        if sig == Signal::KILL {
            cgroup::kill(dir);
        } else {
            cgroup::signal(dir, sig);
        }
    }
}

fn gone(r: &AttemptRecord, group: Option<u32>) -> bool {
    group.is_none_or(|g| group_members(g).is_empty())
        && r.cgroup.as_deref().is_none_or(cgroup::is_empty)
}

/// Stop every process the records name: SIGTERM, SIGKILL after `grace`,
/// then wait (a few seconds at most) until they are gone and remove their
/// cgroups. Returns the records whose processes could not be confirmed gone.
pub fn stop_orphans(records: &[AttemptRecord], grace: Duration) -> Vec<AttemptRecord> {
    let groups: Vec<Option<u32>> = records.iter().map(own_group).collect();
    for (r, g) in records.iter().zip(&groups) {
        if r.pid.is_some() && g.is_none() {
            tracing::info!(job = r.job.0, attempt = r.attempt, pid = ?r.pid, "the recorded process is gone (its PID now names another process)");
        }
        if !gone(r, *g) {
            tracing::warn!(job = r.job.0, attempt = r.attempt, pgid = ?g, cgroup = ?r.cgroup, "stopping an attempt left running by this agent's previous run");
            signal(r, *g, Signal::TERM);
        }
    }
    let all_gone = || records.iter().zip(&groups).all(|(r, g)| gone(r, *g));
    let end = Instant::now() + grace;
    while !all_gone() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (r, g) in records.iter().zip(&groups) {
        if !gone(r, *g) {
            signal(r, *g, Signal::KILL);
        }
    }
    let end = Instant::now() + Duration::from_secs(5);
    while !all_gone() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut left = Vec::new();
    for (r, g) in records.iter().zip(&groups) {
        if let Some(dir) = &r.cgroup {
            cgroup::destroy(dir);
        }
        if !gone(r, *g) {
            left.push(r.clone());
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    fn rec(pid: Option<u32>, ticks: Option<u64>) -> AttemptRecord {
        AttemptRecord {
            job: JobId(7),
            attempt: 2,
            token: "ab".into(),
            pid,
            start_ticks: ticks,
            cgroup: None,
            end: None,
        }
    }

    #[test]
    fn records_round_trip_private() {
        let d = tempfile::tempdir().unwrap();
        let rs = Records::new(d.path().join("attempts"));
        assert!(rs.load().is_empty());
        let r = rec(Some(1), Some(2));
        rs.write(&r).unwrap();
        let p = d.path().join("attempts/7-2.json");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(d.path().join("attempts/8-1.json"), "{").unwrap();
        let got = rs.load();
        assert_eq!(got[0].1.as_ref().unwrap(), &r);
        let e = got[1].1.as_ref().unwrap_err().to_string();
        assert!(e.contains("8-1.json"), "{e}");
        rs.remove(JobId(7), 2).unwrap();
        rs.remove(JobId(7), 2).unwrap();
        assert_eq!(rs.load().len(), 1);
    }

    #[test]
    fn orphans_are_stopped_but_a_recycled_pid_is_left_alone() {
        // A group whose leader ignores SIGTERM, with a background member.
        let mut c = std::process::Command::new("sh");
        c.args(["-c", "trap '' TERM; sleep 300 & wait"])
            .process_group(0);
        let mut leader = c.spawn().unwrap();
        let pid = leader.id();
        std::thread::sleep(Duration::from_millis(100));
        assert!(group_members(pid).len() >= 2);
        // A record with a different start time names someone else's process.
        let t = start_ticks(pid).unwrap();
        let left = stop_orphans(&[rec(Some(pid), Some(t + 1))], Duration::from_millis(50));
        assert!(left.is_empty());
        assert!(
            group_members(pid).len() >= 2,
            "a recycled PID was signalled"
        );
        let started = Instant::now();
        let left = stop_orphans(&[rec(Some(pid), Some(t))], Duration::from_millis(300));
        assert!(left.is_empty(), "{left:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = leader.wait();
        assert!(group_members(pid).is_empty());
    }
}
