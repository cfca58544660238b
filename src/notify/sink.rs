//! Sinks and their routing rules: where a notification goes ([`SinkKind`],
//! its URL, a [`Secret`]) and which events it wants ([`Rule`]: kinds,
//! users, projects, tags). The URL is checked when a sink is made (config
//! load, `notify add`) and never shown beyond its scheme and host
//! ([`redact`]).

use serde::{Deserialize, Serialize};

use super::event::{Event, EventKind};
use super::NotifyError;
use crate::secret::Secret;

/// What a sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A generic JSON webhook: the event as JSON (`docs/notify-format.md`).
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// A Discord webhook.
    Discord,
    /// An ntfy topic URL (`https://ntfy.sh/TOPIC`).
    Ntfy,
    /// The desktop app's native notifications (no URL).
    Desktop,
}

impl SinkKind {
    /// Every kind.
    pub const ALL: [SinkKind; 5] = [
        SinkKind::Webhook,
        SinkKind::Slack,
        SinkKind::Discord,
        SinkKind::Ntfy,
        SinkKind::Desktop,
    ];
    /// The name (`slack`).
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Discord => "discord",
            SinkKind::Ntfy => "ntfy",
            SinkKind::Desktop => "desktop",
        }
    }
    /// Parse a name.
    pub fn from_name(s: &str) -> Option<SinkKind> {
        SinkKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
    /// Whether it needs a URL (all but `desktop`).
    pub fn needs_url(self) -> bool {
        self != SinkKind::Desktop
    }
}

/// Which events a sink wants. Empty lists do not filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Event kinds; empty: every kind.
    pub events: Vec<EventKind>,
    /// Only jobs of these users.
    pub users: Vec<String>,
    /// Only jobs of these projects.
    pub projects: Vec<String>,
    /// Only jobs with one of these tags.
    pub tags: Vec<String>,
    /// A summary per period ([`super::digest`]). A digest sink gets
    /// individual events only of the kinds `events` names (none when it
    /// is empty): `--digest daily` alone is the digest instead of the
    /// events, with `--events` it comes besides them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<super::digest::Every>,
}

impl Rule {
    /// Whether a job of `user` and `project` with `tags` is one this rule
    /// covers (empty lists do not filter).
    pub fn covers(&self, user: &str, project: &str, tags: &[String]) -> bool {
        let any = |want: &[String], have: &str| want.is_empty() || want.iter().any(|w| w == have);
        any(&self.users, user)
            && any(&self.projects, project)
            && (self.tags.is_empty() || tags.iter().any(|t| self.tags.contains(t)))
    }

    /// Whether `event` of `kind` goes to a sink with this rule. Events
    /// that belong to no user/project/tag (an agent lost, a disk low) pass
    /// user, project and tag filters only when those are empty.
    pub fn matches(&self, kind: EventKind, event: &Event) -> bool {
        if matches!(kind, EventKind::Test | EventKind::Digest) {
            return false;
        }
        if self.digest.is_some() && self.events.is_empty() {
            return false;
        }
        let any = |want: &[String], have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w == h))
        };
        (self.events.is_empty() || self.events.contains(&kind))
            && any(&self.users, event.user.as_deref())
            && any(&self.projects, event.project.as_deref())
            && (self.tags.is_empty() || event.tags.iter().any(|t| self.tags.contains(t)))
    }
}

/// Where a sink was defined: the config file (read-only from the CLI) or
/// `notify add` (stored in `queue.db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `[notify.NAME]` in `config.toml`.
    Config,
    /// `trainyard notify add` / `POST /notify/sinks`.
    Cli,
}

/// A sink: its name, kind, URL and rule.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its name (`[a-z0-9_-]`, up to 64).
    pub name: String,
    /// What it speaks.
    pub kind: SinkKind,
    /// Its URL (a secret: a webhook URL is its own credential). `None`
    /// only for `desktop`.
    pub url: Option<Secret>,
    /// Which events it wants.
    pub rule: Rule,
    /// ntfy priority, 1 (min) to 5 (max); default: 4 for alarms, 3 otherwise.
    pub priority: Option<u8>,
    /// Where it was defined.
    pub origin: Origin,
}

impl Sink {
    /// The URL as it may be shown: scheme and host only.
    pub fn shown_url(&self) -> Option<String> {
        self.url.as_ref().map(|u| redact(u.expose()))
    }
}

/// Check a sink's name: what a config table key and a URL path segment
/// can carry.
pub fn check_name(name: &str) -> Result<(), NotifyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NotifyError::BadName {
            name: name.to_string(),
        })
    }
}

/// Check a sink URL: http or https, with a host. `field` names where it
/// came from in the error (`--slack`, `notify.team.url`), which shows at
/// most its scheme and host.
pub fn check_url(field: &str, url: &str) -> Result<reqwest::Url, NotifyError> {
    let bad = |why: &str| NotifyError::BadUrl {
        field: field.to_string(),
        shown: redact(url),
        why: why.to_string(),
    };
    let u = reqwest::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(u)
}

/// A URL as it may be printed: `scheme://host[:port]/…`, never its path,
/// query or credentials (a webhook's path is its secret). Something that
/// does not parse shows as `(not a URL)`.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let more = if u.path().len() > 1 || u.query().is_some() {
                "/…"
            } else {
                ""
            };
            format!("{}://{host}{port}{more}", u.scheme())
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_scheme_and_host_only() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/SECRETSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact("http://user:pw@127.0.0.1:8080/x?token=abc"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redact("https://ntfy.sh"), "https://ntfy.sh");
        assert_eq!(redact("hooks.slack.com/services/SECRET"), "(not a URL)");
        let e = check_url("--slack", "ftp://hooks.slack.com/services/SECRET").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("--slack") && s.contains("http or https"), "{s}");
        assert!(!s.contains("SECRET"), "{s}");
        let e = check_url("--webhook", "not a url SECRET").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn rules_filter_by_kind_user_project_and_tag() {
        let ev = Event {
            user: Some("ana".into()),
            project: Some("detr".into()),
            tags: vec!["big".into()],
            ..Event::default()
        };
        let all = Rule::default();
        assert!(all.matches(EventKind::JobFailed, &ev));
        assert!(!all.matches(EventKind::Test, &ev), "test goes to one sink");
        let r = Rule {
            events: vec![EventKind::JobFailed, EventKind::IdleStopped],
            users: vec!["ana".into()],
            ..Rule::default()
        };
        assert!(r.matches(EventKind::JobFailed, &ev));
        assert!(!r.matches(EventKind::JobSucceeded, &ev));
        let bo = Event {
            user: Some("bo".into()),
            ..ev.clone()
        };
        assert!(!r.matches(EventKind::JobFailed, &bo));
        let p = Rule {
            projects: vec!["other".into()],
            ..Rule::default()
        };
        assert!(!p.matches(EventKind::JobFailed, &ev));
        let t = Rule {
            tags: vec!["big".into(), "x".into()],
            ..Rule::default()
        };
        assert!(t.matches(EventKind::JobFailed, &ev));
        // An agent lost belongs to no user: only unfiltered rules get it.
        let lost = Event {
            agent: Some("gpu1".into()),
            ..Event::default()
        };
        assert!(all.matches(EventKind::AgentLost, &lost));
        assert!(!r.matches(EventKind::AgentLost, &lost));
        // A digest sink: the digest instead of the events, or besides
        // those it names; never another sink's digest.
        let digest_only = Rule {
            digest: Some(crate::notify::digest::Every::Daily),
            ..Rule::default()
        };
        assert!(!digest_only.matches(EventKind::JobFailed, &ev));
        let besides = Rule {
            events: vec![EventKind::JobFailed],
            ..digest_only.clone()
        };
        assert!(besides.matches(EventKind::JobFailed, &ev));
        assert!(!besides.matches(EventKind::JobSucceeded, &ev));
        assert!(!all.matches(EventKind::Digest, &ev));
        assert!(digest_only.covers("ana", "detr", &[]));
        let anas = Rule {
            users: vec!["ana".into()],
            ..Rule::default()
        };
        assert!(!anas.covers("bo", "detr", &[]));
    }
}
