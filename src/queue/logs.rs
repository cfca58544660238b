//! Attempt logs as the daemon keeps them: `logs/<job>/<n>.log`, appended at
//! the offsets the agent ships (resending is harmless), read back in
//! chunks, capped in size, and removed with their job.
//!
//! Offsets are *logical*: positions in the whole output the attempt wrote,
//! whatever the daemon dropped. When a log grows past the cap, its head is
//! dropped: the file is rewritten (temp file + rename, so a reader or a
//! crash sees the old or the new file, never a mix) as a fixed-size marker
//! line naming how many bytes were dropped, then the newest three quarters
//! of the cap. The marker is what a reader gets in place of the dropped
//! bytes. A reader is done ([`LogChunk::done`]) when the attempt has ended
//! and it has read up to the log's size. It knows nothing of jobs beyond
//! their ids and states.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{AttemptInfo, JobId, JobState};

/// The smallest cap accepted (a cap below it would rewrite logs constantly).
pub const MIN_LOG_CAP: u64 = 64 * 1024;

const MARK_HEAD: &str = "[trainyard: the first ";
const MARK_TAIL: &str =
    " bytes of this log were dropped: it grew past the daemon's --max-log-size]\n";
/// Digits of the dropped count in the marker: fixed, so the marker's length is.
const MARK_DIGITS: usize = 20;
const MARK_LEN: u64 = (MARK_HEAD.len() + MARK_DIGITS + MARK_TAIL.len()) as u64;

/// Why a log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system refused.
    #[error("attempt log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent sent bytes from beyond the end of the daemon's copy.
    #[error("log offset {offset} is past the end of the daemon's copy ({size} bytes)")]
    Gap {
        /// The offset sent.
        offset: u64,
        /// The daemon's (logical) size.
        size: u64,
    },
}

/// A read of a log.
#[derive(Debug, Clone)]
pub struct LogChunk {
    /// The bytes from the offset asked for: a marker line first when that
    /// offset was in the dropped head.
    pub bytes: Vec<u8>,
    /// The logical offset just after these bytes.
    pub next: u64,
    /// The log's logical size.
    pub size: u64,
}

impl LogChunk {
    /// Whether a reader that got this chunk has the whole log: the attempt
    /// (`attempt`, as the queue records it) has ended — or, when the queue
    /// has no such attempt, the job (in state `job`) has — and nothing is
    /// left past [`LogChunk::next`].
    pub fn done(&self, job: JobState, attempt: Option<&AttemptInfo>) -> bool {
        let ended = match attempt {
            Some(a) => a.has_ended(),
            None => job.is_terminal(),
        };
        ended && self.next >= self.size
    }
}

/// The attempt logs under one directory.
#[derive(Debug)]
pub struct AttemptLogs {
    root: PathBuf,
    cap: Option<u64>,
    /// Serializes appends and rewrites.
    lock: Mutex<()>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The dropped count when `f` starts with a marker, else 0; leaves the
/// position unspecified.
fn dropped(f: &mut File, len: u64) -> std::io::Result<u64> {
    if len < MARK_LEN {
        return Ok(0);
    }
    let mut head = vec![0u8; MARK_LEN as usize];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)?;
    let Some(rest) = head.strip_prefix(MARK_HEAD.as_bytes()) else {
        return Ok(0);
    };
    if !rest[MARK_DIGITS..].starts_with(MARK_TAIL.as_bytes()) {
        return Ok(0);
    }
    Ok(std::str::from_utf8(&rest[..MARK_DIGITS])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0))
}

/// Where the data starts in the file and the logical offset it stands for.
struct Layout {
    data_start: u64,
    dropped: u64,
    file_len: u64,
}

impl Layout {
    fn read(f: &mut File) -> std::io::Result<Layout> {
        let file_len = f.metadata()?.len();
        let dropped = dropped(f, file_len)?;
        Ok(Layout {
            data_start: if dropped > 0 { MARK_LEN } else { 0 },
            dropped,
            file_len,
        })
    }
    fn size(&self) -> u64 {
        self.dropped + self.file_len - self.data_start
    }
}

impl AttemptLogs {
    /// Logs under `root`, each capped at `cap` bytes (none when `None`).
    pub fn new(root: PathBuf, cap: Option<u64>) -> AttemptLogs {
        AttemptLogs {
            root,
            cap: cap.map(|c| c.max(MIN_LOG_CAP)),
            lock: Mutex::new(()),
        }
    }

    /// The file of attempt `n` of `job`.
    pub fn path(&self, job: JobId, n: u32) -> PathBuf {
        self.root.join(job.to_string()).join(format!("{n}.log"))
    }

    /// Append `bytes`, which start at logical `offset`; bytes the daemon
    /// already has are skipped. Returns the logical size after.
    pub fn append(&self, job: JobId, n: u32, offset: u64, bytes: &[u8]) -> Result<u64, LogError> {
        let path = self.path(job, n);
        let err = io(&path);
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(&err)?;
        }
        // Owner-only, like the rest of the home: a job's output may print secrets.
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(&err)?;
        let l = Layout::read(&mut f).map_err(&err)?;
        let size = l.size();
        if offset > size {
            return Err(LogError::Gap { offset, size });
        }
        let skip = (size - offset) as usize;
        if skip < bytes.len() {
            f.write_all(&bytes[skip..]).map_err(&err)?;
        }
        let size = size.max(offset + bytes.len() as u64);
        if let Some(cap) = self.cap {
            let data = size - l.dropped;
            if data > cap {
                drop(f);
                self.drop_head(&path, cap).map_err(&err)?;
            }
        }
        Ok(size)
    }

    /// Rewrite the log as the marker and its newest `cap * 3 / 4` bytes
    /// (from a line start when one is near).
    fn drop_head(&self, path: &Path, cap: u64) -> std::io::Result<()> {
        let mut f = File::open(path)?;
        let l = Layout::read(&mut f)?;
        let keep = cap / 4 * 3;
        let data_len = l.file_len - l.data_start;
        let mut cut = data_len.saturating_sub(keep);
        // Start at a line when one begins in the next 4 KiB.
        let mut probe = vec![0u8; 4096.min(keep) as usize];
        f.seek(SeekFrom::Start(l.data_start + cut))?;
        let got = f.read(&mut probe)?;
        if let Some(nl) = probe[..got].iter().position(|&b| b == b'\n') {
            cut += nl as u64 + 1;
        }
        let dropped = l.dropped + cut;
        let tmp = path.with_extension("log.tmp");
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        write!(
            out,
            "{MARK_HEAD}{dropped:0width$}{MARK_TAIL}",
            width = MARK_DIGITS
        )?;
        f.seek(SeekFrom::Start(l.data_start + cut))?;
        std::io::copy(&mut f, &mut out)?;
        std::fs::rename(&tmp, path)?;
        tracing::debug!(log = %path.display(), dropped, "log head dropped");
        Ok(())
    }

    /// Up to `max` bytes of attempt `n` of `job` from logical `offset`. A
    /// log that does not exist reads as empty.
    pub fn read(&self, job: JobId, n: u32, offset: u64, max: u64) -> Result<LogChunk, LogError> {
        let path = self.path(job, n);
        let err = io(&path);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LogChunk {
                    bytes: Vec::new(),
                    next: offset,
                    size: 0,
                })
            }
            Err(e) => return Err(err(e)),
        };
        let l = Layout::read(&mut f).map_err(&err)?;
        let size = l.size();
        let mut bytes = Vec::new();
        let mut from = offset;
        if offset < l.dropped {
            bytes.extend_from_slice(
                format!(
                    "{MARK_HEAD}{} bytes{}",
                    l.dropped,
                    MARK_TAIL.trim_start_matches(" bytes")
                )
                .as_bytes(),
            );
            from = l.dropped;
        }
        if from < size {
            f.seek(SeekFrom::Start(l.data_start + (from - l.dropped)))
                .map_err(&err)?;
            let start = bytes.len();
            (&mut f).take(max).read_to_end(&mut bytes).map_err(&err)?;
            from += (bytes.len() - start) as u64;
        }
        Ok(LogChunk {
            bytes,
            next: from.max(offset),
            size,
        })
    }

    /// Remove every log of `job`.
    pub fn remove_job(&self, job: JobId) -> Result<(), LogError> {
        let dir = self.root.join(job.to_string());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(l: &AttemptLogs, job: JobId) -> (Vec<u8>, u64) {
        let c = l.read(job, 1, 0, u64::MAX).unwrap();
        (c.bytes, c.next)
    }

    #[test]
    fn a_reader_is_done_only_at_the_end_of_an_ended_attempt() {
        let attempt = |state: &str| AttemptInfo {
            n: 1,
            agent: "a".into(),
            gpus: Vec::new(),
            gpu_indices: Vec::new(),
            state: crate::queue::AttemptState::from_name(state).expect("a state name"),
            assigned_ns: 0,
            started_ns: None,
            finished_ns: None,
            exit_code: None,
            error: None,
            commit: None,
            idle: None,
            idle_evidence: Vec::new(),
        };
        let at = |next, size| LogChunk {
            bytes: Vec::new(),
            next,
            size,
        };
        for state in ["assigned", "running"] {
            let a = attempt(state);
            assert!(!at(9, 9).done(JobState::Failed, Some(&a)), "{state}");
        }
        for state in ["succeeded", "failed", "cancelled", "lost"] {
            let a = attempt(state);
            assert!(at(9, 9).done(JobState::Running, Some(&a)), "{state}");
            assert!(!at(8, 9).done(JobState::Running, Some(&a)), "{state}");
        }
        // No such attempt: the job's state decides.
        assert!(at(0, 0).done(JobState::Cancelled, None));
        assert!(!at(0, 0).done(JobState::Queued, None));
    }

    #[test]
    fn appends_are_idempotent_and_the_head_is_dropped_past_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let l = AttemptLogs::new(d.path().join("logs"), Some(MIN_LOG_CAP));
        let job = JobId(7);
        let line = |i: u32| format!("line {i:06}\n").into_bytes();
        let mut sent = 0u64;
        let mut all = Vec::new();
        for i in 0..20_000 {
            let b = line(i);
            all.extend_from_slice(&b);
            // Resend the previous line too: it is skipped.
            let from = sent.saturating_sub(12);
            let chunk = &all[from as usize..];
            sent = l.append(job, 1, from, chunk).unwrap();
            assert_eq!(sent, all.len() as u64);
        }
        let file_len = std::fs::metadata(l.path(job, 1)).unwrap().len();
        assert!(file_len <= MIN_LOG_CAP + MARK_LEN, "{file_len}");
        let (bytes, next) = read_all(&l, job);
        assert_eq!(next, all.len() as u64, "offsets stay logical");
        let text = String::from_utf8(bytes).unwrap();
        let (mark, tail) = text.split_once('\n').unwrap();
        assert!(mark.starts_with("[trainyard: the first "), "{mark}");
        assert!(mark.contains("bytes of this log were dropped"), "{mark}");
        assert!(all.ends_with(tail.as_bytes()), "the tail is intact");
        assert!(
            tail.starts_with("line "),
            "it starts at a line: {}",
            &tail[..20]
        );
        // A gap is refused; reading from inside the tail needs no marker.
        assert!(matches!(
            l.append(job, 1, sent + 1, b"x"),
            Err(LogError::Gap { .. })
        ));
        let c = l.read(job, 1, sent - 12, 100).unwrap();
        assert_eq!(c.bytes, line(19_999));
        l.remove_job(job).unwrap();
        assert!(!l.path(job, 1).exists());
    }
}
