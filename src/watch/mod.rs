//! Watching directories (issue 19): a rule per watched path, persisted in
//! `watch.db` in the home (`docs/watch.md`), run by the daemon (and so by
//! the desktop app) — one thread per active rule.
//!
//! Two kinds of rule. A **snapshot** rule records a new version of a
//! dataset when the files under its path have stopped changing for the
//! quiet period (or a marker file appears), only if something changed,
//! and optionally tags and pushes it. A **wandb** rule indexes the runs
//! under its path as they appear and syncs each to a W&B server when it
//! ends (and, with `live`, streams running runs' new rows).
//!
//! Changes are seen through `notify` (inotify on Linux) on local
//! filesystems and by stat polling on network and FUSE mounts (the type
//! comes from `statfs`, [`fs::FsKind`]) or when asked; a poll compares
//! the stat walk's digest ([`crate::store::tree_stamp`]) and reads no
//! file, and the snapshot itself reads only what the store's stat cache
//! cannot vouch for. A watch limit reached falls back to polling; a full
//! rescan runs every hour whatever the events say.
//!
//! What this module must not do: snapshot a torn file (the store refuses a
//! file that changes while hashed, and the rule postpones), snapshot a
//! directory that vanished, was unmounted or came back empty, or create a
//! version per event. Every action and its trigger and result go to the
//! rule's log. The decision of when to act is [`engine::Pending::due`], a
//! pure function of the time.

pub mod book;
pub mod engine;
pub mod fs;
mod runs;
pub mod status;

#[cfg(test)]
mod tests;

pub use book::{Book, LogEntry, WatchInfo};
pub use engine::Watcher;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default quiet period: no change for this long before a snapshot.
pub const DEFAULT_QUIET: Duration = Duration::from_secs(60);
/// Default bound on how long changes can postpone a snapshot.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(600);
/// Default interval of the polling path.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How often a full rescan runs on the events path (missed events).
pub const RESCAN_EVERY: Duration = Duration::from_secs(3600);

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Snapshot a dataset.
    Snapshot,
    /// Index and sync wandb runs.
    Wandb,
}

impl Kind {
    /// The kind's name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Wandb => "wandb",
        }
    }
}

/// Where a watch stands (`watch ls`, `docs/watch.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Added, or the daemon just started it: setting up the watch.
    Starting,
    /// Watching; nothing pending.
    Idle,
    /// Changes seen; waiting for the quiet period, the marker or max-wait.
    Pending,
    /// Snapshotting (or syncing) now.
    Working,
    /// Files changed while they were hashed; trying again later.
    Postponed,
    /// The directory is gone, unmounted or came back empty: nothing is
    /// snapshotted until it returns (then the watch resumes by itself).
    Missing,
    /// Paused by a user.
    Paused,
    /// The last action failed (the log says why); retried on the next change.
    Failed,
}

impl State {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Idle => "idle",
            State::Pending => "pending",
            State::Working => "working",
            State::Postponed => "postponed",
            State::Missing => "missing",
            State::Paused => "paused",
            State::Failed => "failed",
        }
    }

    /// Parse a name (`None` if unknown).
    pub fn from_name(s: &str) -> Option<State> {
        [
            State::Starting,
            State::Idle,
            State::Pending,
            State::Working,
            State::Postponed,
            State::Missing,
            State::Paused,
            State::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A rule as `POST /watches` and `trainyard watch add` give it. Durations
/// are humantime strings (`60s`, `10m`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWatch {
    /// The directory to watch (absolute).
    pub path: PathBuf,
    /// Snapshot into this dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Sync wandb runs found under the path.
    #[serde(default)]
    pub sync_wandb: bool,
    /// No change for this long before a snapshot [default 60s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<String>,
    /// The longest changes may postpone a snapshot [default 10m].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<String>,
    /// Snapshot when this file (relative to the path) is written, e.g. `_SUCCESS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_file: Option<String>,
    /// Push each new version to this remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<String>,
    /// Tag each new version; `{date}`, `{time}`, `{datetime}` and `{n}`
    /// (the version count) are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_format: Option<String>,
    /// The W&B server (wandb rules) [default: WANDB_BASE_URL or wandb's settings].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Stream running runs' new rows at this interval (wandb rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// Poll even where events would work.
    #[serde(default)]
    pub poll: bool,
    /// How often to poll [default 30s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
}

/// Why a watch could not be added, found or changed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// A field of a new rule is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field (`path`, `quiet`, …).
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// No such watch.
    #[error("no watch {0:?}; `trainyard watch ls` lists them")]
    Unknown(String),
    /// The same rule exists.
    #[error("watch {id} already {what} {path}; remove it first (trainyard watch rm {id})")]
    Exists {
        /// Its id.
        id: i64,
        /// What it does.
        what: String,
        /// Its path.
        path: String,
    },
}

/// Parse a humantime duration of field `field`.
pub fn parse_duration(field: &'static str, s: &str) -> Result<Duration, WatchError> {
    humantime::parse_duration(s.trim()).map_err(|e| WatchError::Invalid {
        field,
        reason: format!("{s:?} is not a duration ({e}); write e.g. 60s, 10m, 1h"),
    })
}

/// Fill in a tag format: `{date}` (2026-12-07), `{time}` (031500),
/// `{datetime}` (20261207-031500), `{n}` (the version count), all UTC.
pub fn format_tag(format: &str, now: jiff::Timestamp, n: u64) -> String {
    let z = now.to_zoned(jiff::tz::TimeZone::UTC);
    format
        .replace("{datetime}", &z.strftime("%Y%m%d-%H%M%S").to_string())
        .replace("{date}", &z.strftime("%Y-%m-%d").to_string())
        .replace("{time}", &z.strftime("%H%M%S").to_string())
        .replace("{n}", &n.to_string())
}
