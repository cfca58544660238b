//! Sinks defined in the lab config, `[notify.NAME]` tables of
//! `config.toml`:
//!
//! ```toml
//! [notify.team-slack]
//! kind = "slack"                 # webhook | slack | discord | ntfy | desktop
//! url_env = "TEAM_SLACK_URL"     # the daemon's environment holds the URL, or:
//! # url = "https://hooks.slack.com/services/…"  (only in a 0600 config.toml)
//! events = ["job_failed", "idle_stopped"]        # default: every event
//! users = ["ana"]                # default: everyone's jobs
//! projects = ["detr"]
//! tags = ["important"]
//! priority = 4                   # ntfy only, 1..5
//! digest = "daily"               # a summary per day (or "weekly")
//! ```
//!
//! [`resolve`] checks every table — kind, URL, events, priority — and
//! fails on the first problem, naming `notify.NAME.FIELD`; the daemon does
//! not start on a half-read config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Every;
use super::event::EventKind;
use super::sink::{check_name, check_url, Origin, Rule, Sink, SinkKind};
use super::{format, NotifyError};
use crate::secret::Secret;

/// One `[notify.NAME]` table as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `webhook`, `slack`, `discord`, `ntfy` or `desktop`.
    pub kind: SinkKind,
    /// The URL itself (allowed only in a config.toml others cannot read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The name of an environment variable of the daemon holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Event names; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only jobs of these users.
    #[serde(default)]
    pub users: Vec<String>,
    /// Only jobs of these projects.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Only jobs with one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// ntfy priority, 1..5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// A summary per period: `daily` or `weekly` (see `notify::digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<super::digest::Every>,
}

/// Parse event names, naming `field` and the bad name.
pub fn parse_events(field: &str, names: &[String]) -> Result<Vec<EventKind>, NotifyError> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| {
            EventKind::from_name(n).ok_or_else(|| NotifyError::UnknownEvent {
                field: field.to_string(),
                name: n.to_string(),
            })
        })
        .collect()
}

/// Check a sink's URL for its kind (`field` names it in errors).
pub fn check_sink_url(field: &str, kind: SinkKind, url: Option<&str>) -> Result<(), NotifyError> {
    match (kind.needs_url(), url) {
        (true, None) => Err(NotifyError::NoUrl {
            field: field.to_string(),
            kind: kind.as_str(),
        }),
        (true, Some(u)) => {
            check_url(field, u)?;
            if kind == SinkKind::Ntfy && format::ntfy_target(u).is_none() {
                return Err(NotifyError::NoTopic {
                    field: field.to_string(),
                    shown: super::sink::redact(u),
                });
            }
            Ok(())
        }
        (false, _) => Ok(()),
    }
}

/// Parse a digest period name (`daily`, `weekly`), naming `field`.
pub fn parse_digest(field: &str, s: Option<&str>) -> Result<Option<Every>, NotifyError> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => Every::from_name(v)
            .map(Some)
            .ok_or_else(|| NotifyError::BadDigest {
                field: field.to_string(),
                value: v.to_string(),
            }),
    }
}

/// Check an ntfy priority.
pub fn check_priority(field: &str, p: Option<i64>) -> Result<Option<u8>, NotifyError> {
    match p {
        None => Ok(None),
        Some(v @ 1..=5) => Ok(Some(v as u8)),
        Some(value) => Err(NotifyError::BadPriority {
            field: field.to_string(),
            value,
        }),
    }
}

/// Where a config sink's URL may come from.
pub struct Sources<'a> {
    /// Reads the daemon's environment.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Whether the config file can be read by other users (then a literal
    /// `url` is refused: it is a secret).
    pub file_shared: bool,
}

/// Turn the `[notify.*]` tables into sinks, checking everything; the
/// first problem is the error (its `field` is `notify.NAME[.KEY]`).
pub fn resolve(
    tables: &BTreeMap<String, SinkConfig>,
    src: &Sources<'_>,
) -> Result<Vec<Sink>, (String, NotifyError)> {
    let mut out = Vec::new();
    for (name, t) in tables {
        let at = |k: &str| format!("notify.{name}.{k}");
        check_name(name).map_err(|e| (format!("notify.{name}"), e))?;
        let events = parse_events(&at("events"), &t.events).map_err(|e| (at("events"), e))?;
        let priority =
            check_priority(&at("priority"), t.priority).map_err(|e| (at("priority"), e))?;
        let (field, url) = match (&t.url, &t.url_env) {
            (Some(_), Some(_)) => {
                return Err((
                    at("url"),
                    NotifyError::BadUrl {
                        field: at("url"),
                        shown: "url and url_env".into(),
                        why: "give one of them, not both".into(),
                    },
                ))
            }
            (Some(u), None) => {
                if src.file_shared {
                    return Err((
                        at("url"),
                        NotifyError::BadUrl {
                            field: at("url"),
                            shown: super::sink::redact(u),
                            why: "a webhook URL is a secret and config.toml can be read by \
                                  other users: chmod 600 config.toml, or name an environment \
                                  variable holding it with url_env"
                                .into(),
                        },
                    ));
                }
                (at("url"), Some(u.clone()))
            }
            (None, Some(var)) => {
                let v = (src.env)(var).filter(|v| !v.trim().is_empty());
                if v.is_none() && t.kind.needs_url() {
                    return Err((
                        at("url_env"),
                        NotifyError::NoUrl {
                            field: format!("{} (${var} is not set)", at("url_env")),
                            kind: t.kind.as_str(),
                        },
                    ));
                }
                (at("url_env"), v)
            }
            (None, None) => (format!("notify.{name}"), None),
        };
        check_sink_url(&field, t.kind, url.as_deref()).map_err(|e| (field.clone(), e))?;
        out.push(Sink {
            name: name.clone(),
            kind: t.kind,
            url: url.map(|u| Secret::new(u.trim())),
            rule: Rule {
                events,
                users: t.users.clone(),
                projects: t.projects.clone(),
                tags: t.tags.clone(),
                digest: t.digest,
            },
            priority,
            origin: Origin::Config,
        });
    }
    Ok(out)
}
