//! Notifications (issue 17): events (`event`), sinks and their routing
//! rules (`sink`), per-sink formatting within each service's limits
//! (`format`), the durable outbox in `queue.db` (`outbox`), the sender
//! with retries, backoff and a dead-letter list (`send`), and the sinks of
//! the lab config (`config`).
//!
//! Flow: a job's end is written as an event by the queue in the
//! transaction of the state change; other events (agent lost, disk low,
//! a failed W&B sync; later idle and schedule events) through
//! [`Notifier::record`]. The daemon's sender routes each event once to
//! the sinks whose rules match — one delivery per (event, sink) — and
//! sends pending deliveries, retrying with exponential backoff until a
//! sink accepts or the tries run out (dead letters). A restart resumes
//! from the outbox: nothing pending is lost, nothing delivered is resent.
//!
//! Webhook URLs are secrets: held as [`crate::secret::Secret`], stored in
//! the 0600 `queue.db` (CLI sinks) or read from the environment or a 0600
//! `config.toml` (config sinks), and shown only as scheme and host
//! ([`sink::redact`]) in listings, logs and errors. No message carries a
//! job's environment or secret values.

pub mod config;
pub mod digest;
pub mod event;
pub mod format;
pub mod outbox;
pub mod send;
pub mod sink;

pub use event::{Event, EventKind};
pub use outbox::{Delivery, DeliveryState, Outbox};
pub use send::{Backoff, Notifier};
pub use sink::{Origin, Rule, Sink, SinkKind};

use crate::db::DbError;

/// Why a notification setting or the outbox failed. Messages name the
/// field or sink at fault and show URLs as scheme and host only.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The outbox database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A sink name that is not `[a-z0-9_-]{1,64}`.
    #[error("sink name {name:?}: use 1 to 64 lowercase letters, digits, '-' or '_'")]
    BadName {
        /// The name given.
        name: String,
    },
    /// A URL that does not parse or is not http(s).
    #[error("{field}: {shown} is not a usable URL: {why}")]
    BadUrl {
        /// Where it came from (`--slack`, `notify.team.url`).
        field: String,
        /// Its scheme and host only.
        shown: String,
        /// What is wrong.
        why: String,
    },
    /// A sink of a kind that needs a URL has none.
    #[error("{field}: no URL given (a {kind} sink needs one)")]
    NoUrl {
        /// The field (`notify.team`, `--slack`).
        field: String,
        /// The sink's kind.
        kind: &'static str,
    },
    /// An event name that does not exist.
    #[error("{field}: unknown event {name:?} (known: {})", EventKind::names())]
    UnknownEvent {
        /// The field (`notify.team.events`, `--events`).
        field: String,
        /// The name given.
        name: String,
    },
    /// An ntfy priority outside 1..=5.
    #[error("{field}: priority {value} is not between 1 (min) and 5 (max)")]
    BadPriority {
        /// The field.
        field: String,
        /// The value given.
        value: i64,
    },
    /// A digest period that is not `daily` or `weekly`.
    #[error("{field}: {value:?} is not a digest period (daily, weekly)")]
    BadDigest {
        /// The field.
        field: String,
        /// The value given.
        value: String,
    },
    /// An ntfy URL without a topic.
    #[error("{field}: {shown} names no ntfy topic (use https://HOST/TOPIC)")]
    NoTopic {
        /// The field.
        field: String,
        /// Its scheme and host only.
        shown: String,
    },
    /// No sink of that name.
    #[error("no notification sink named {name:?} (see `trainyard notify ls`)")]
    UnknownSink {
        /// The name.
        name: String,
    },
    /// A sink of that name exists already.
    #[error(
        "a notification sink named {name:?} exists already; remove it first or pick another name"
    )]
    SinkExists {
        /// The name.
        name: String,
    },
    /// The sink is defined in `config.toml`, which the CLI does not edit.
    #[error("the sink {name:?} is defined in config.toml ([notify.{name}]); edit that file and restart the daemon")]
    ConfigSink {
        /// The name.
        name: String,
    },
}
