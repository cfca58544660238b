//! The idle policy (issue 17): when a job's GPUs count as idle, what then
//! happens, and the evidence of the decision. Pure: no clock, no database,
//! no queue. Time is always an argument (ms since the epoch), so every
//! case is tested to the millisecond.
//!
//! - [`IdleConfig`] is the `[idle]` table of the lab's `config.toml` (lab
//!   defaults, per-project overrides, the exempt tag, what "busy" means);
//! - [`Override`] is a job's `--idle WINDOW:THRESHOLD:ACTION` / `--idle
//!   off` and [`parse_grace`] its `--idle-grace`;
//! - [`IdleConfig::policy_for`] resolves them into one [`Policy`] per
//!   attempt (or none: exempt);
//! - [`detect::Tracker`] follows one attempt's samples and says when to
//!   warn and when to act, keeping the [`detect::Evidence`].
//!
//! It must not import the queue, the server or the agent: they call it.

pub mod detect;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use detect::{Decision, Evidence, EvidenceSample, Observation, Phase, Status, Tracker};

/// What the idle policy does when a job's GPUs stayed idle for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send `idle_warned` to the sinks; the job keeps running.
    #[default]
    Notify,
    /// Stop the job (SIGTERM to its group, SIGKILL after the grace):
    /// final state `idle_stopped`.
    Stop,
    /// Stop the job and put it back in the queue; the attempt does not
    /// count against `max_attempts`.
    Requeue,
}

impl Action {
    /// The name (`notify`, `stop`, `requeue`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Notify => "notify",
            Action::Stop => "stop",
            Action::Requeue => "requeue",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "notify" => Some(Action::Notify),
            "stop" => Some(Action::Stop),
            "requeue" => Some(Action::Requeue),
            _ => None,
        }
    }

    /// Whether the action ends the attempt (and so is announced ahead).
    pub fn ends_attempt(self) -> bool {
        !matches!(self, Action::Notify)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value of the idle policy that cannot be used; names the field or
/// flag (`--idle`, `idle.window`, `idle_grace`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct IdleError {
    /// The flag or field at fault.
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> IdleError {
    IdleError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The shortest window accepted (tests use a few seconds).
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

fn duration(field: &str, text: &str) -> Result<Duration, IdleError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        bad(
            field,
            format!("{text:?} is not a duration like 30m, 90s or 2h ({e})"),
        )
    })?;
    Ok(d)
}

fn threshold(field: &str, text: &str) -> Result<u8, IdleError> {
    let t = text.trim();
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    match num.parse::<u8>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(bad(
            field,
            format!("{text:?} is not a utilization threshold: a whole percentage from 1% to 100%"),
        )),
    }
}

/// A job's own idle setting: `off`, or some of the window, threshold and
/// action (the rest from the lab's or project's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override {
    /// Exempt: never idle.
    Off,
    /// These parts replace the defaults.
    Rule {
        /// The window.
        window: Option<Duration>,
        /// The threshold, %.
        threshold_pct: Option<u8>,
        /// The action.
        action: Option<Action>,
    },
    /// Nothing given: the defaults.
    #[default]
    Default,
}

impl Override {
    /// Parse `--idle` (`field` names the flag or spec field in errors):
    /// `off`, or `WINDOW[:THRESHOLD[:ACTION]]`, each part may be empty
    /// (the default), e.g. `30m:5%:stop`, `2h`, `:10%`, `::requeue`.
    pub fn parse(field: &str, text: &str) -> Result<Override, IdleError> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(Override::Off);
        }
        if t.is_empty() {
            return Err(bad(
                field,
                "empty: give off, or WINDOW:THRESHOLD:ACTION like 30m:5%:stop",
            ));
        }
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() > 3 {
            return Err(bad(
                field,
                format!(
                    "{text:?} has {} parts; give WINDOW:THRESHOLD:ACTION like 30m:5%:stop, or off",
                    parts.len()
                ),
            ));
        }
        let window = match parts[0].trim() {
            "" => None,
            w => {
                let d = duration(field, w)?;
                if d < MIN_WINDOW {
                    return Err(bad(
                        field,
                        format!("window {w:?} is under the minimum of 1s"),
                    ));
                }
                Some(d)
            }
        };
        let threshold_pct = match parts.get(1).map(|s| s.trim()) {
            None | Some("") => None,
            Some(p) => Some(threshold(field, p)?),
        };
        let action = match parts.get(2).map(|s| s.trim()) {
            None | Some("") => None,
            Some(a) => Some(Action::parse(a).ok_or_else(|| {
                bad(
                    field,
                    format!("unknown action {a:?}: give notify, stop or requeue"),
                )
            })?),
        };
        Ok(Override::Rule {
            window,
            threshold_pct,
            action,
        })
    }

    /// The canonical text (what a spec stores): `off`, `30m:5%:stop`,
    /// with empty parts for defaults.
    pub fn text(&self) -> Option<String> {
        match self {
            Override::Default => None,
            Override::Off => Some("off".into()),
            Override::Rule {
                window,
                threshold_pct,
                action,
            } => {
                let w = window
                    .map(|d| humantime::format_duration(d).to_string().replace(' ', ""))
                    .unwrap_or_default();
                let t = threshold_pct.map(|p| format!("{p}%")).unwrap_or_default();
                let a = action.map(|a| a.as_str().to_string()).unwrap_or_default();
                let mut s = format!("{w}:{t}:{a}");
                while s.ends_with(':') {
                    s.pop();
                }
                Some(s)
            }
        }
    }
}

/// Parse `--idle-grace` (a duration, `0s` allowed: detection armed from
/// the start).
pub fn parse_grace(field: &str, text: &str) -> Result<Duration, IdleError> {
    duration(field, text)
}

/// One attempt's idle policy, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The GPUs must stay idle this long, ms.
    pub window_ms: i64,
    /// A GPU under this utilization, %, is idle.
    pub threshold_pct: u8,
    /// What happens at the end of the window.
    pub action: Action,
    /// Detection arms at the latest this long after the start, ms (or
    /// earlier, at the first sample a GPU is used).
    pub grace_ms: i64,
    /// `idle_warned` goes out this long before a stop or requeue, ms.
    pub warn_before_ms: i64,
    /// The job's processes are busy (detection suspended) when their CPU
    /// use is at least this, % of one core.
    pub busy_cpu_pct: f64,
    /// … or when they read and write at least this many bytes per second.
    pub busy_io_bytes_per_s: u64,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// `[idle]` of `config.toml`: the lab's defaults.
///
/// ```toml
/// [idle]
/// window = "30m"          # idle this long …
/// threshold = 5           # … under this GPU utilization, %
/// action = "notify"       # notify | stop | requeue
/// grace = "15m"           # detection arms at the latest this long after the start
/// warn_before = "5m"      # idle_warned this long before a stop or requeue
/// exempt_tag = "no-idle"  # jobs with this tag are never idle ("": none)
/// busy_cpu = 50           # processes using this much CPU (% of one core) are busy …
/// busy_io = "1MiB"        # … or reading and writing this much per second
///
/// [idle.project.vision]   # a project's own window, threshold, action, grace
/// action = "stop"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleConfig {
    /// Window (a duration).
    pub window: String,
    /// Threshold, %.
    pub threshold: u8,
    /// Action.
    pub action: Action,
    /// Start grace (a duration).
    pub grace: String,
    /// Warning lead time (a duration).
    pub warn_before: String,
    /// Jobs with this tag are exempt ("" for none).
    pub exempt_tag: String,
    /// Busy CPU, % of one core.
    pub busy_cpu: f64,
    /// Busy I/O per second (a size: `1MiB`, `500KB`, `0` never busy by I/O).
    pub busy_io: String,
    /// Per project.
    pub project: BTreeMap<String, ProjectIdle>,
}

/// `[idle.project.NAME]`: what a project changes of the lab's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectIdle {
    /// `off` exempts the project's jobs.
    pub enabled: Option<bool>,
    /// Window.
    pub window: Option<String>,
    /// Threshold, %.
    pub threshold: Option<u8>,
    /// Action.
    pub action: Option<Action>,
    /// Start grace.
    pub grace: Option<String>,
}

impl Default for IdleConfig {
    fn default() -> IdleConfig {
        IdleConfig {
            window: "30m".into(),
            threshold: 5,
            action: Action::Notify,
            grace: "15m".into(),
            warn_before: "5m".into(),
            exempt_tag: "no-idle".into(),
            busy_cpu: 50.0,
            busy_io: "1MiB".into(),
            project: BTreeMap::new(),
        }
    }
}

/// A byte size: `1MiB`, `500KB`, `2GB`, `1048576`.
fn bytes(field: &str, text: &str) -> Result<u64, IdleError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| bad(field, format!("{text:?} is not a size like 1MiB or 500KB")))?;
    let f: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => {
            return Err(bad(
                field,
                format!("unknown unit {u:?} in {text:?} (use KiB, MiB or GiB)"),
            ))
        }
    };
    n.checked_mul(f)
        .ok_or_else(|| bad(field, format!("{text:?} is too large")))
}

/// A job's idle settings as its spec carries them.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobIdle<'a> {
    /// Its project.
    pub project: &'a str,
    /// Its tags.
    pub tags: &'a [String],
    /// `--idle`, as stored.
    pub idle: Option<&'a str>,
    /// `--idle-grace`, as stored.
    pub grace: Option<&'a str>,
}

impl IdleConfig {
    /// Check every value (called when the config is loaded): the error
    /// names the field, e.g. `idle.project.vision.window`.
    pub fn check(&self) -> Result<(), IdleError> {
        self.base()?;
        for (name, p) in &self.project {
            if let Some(w) = &p.window {
                let d = duration(&format!("idle.project.{name}.window"), w)?;
                if d < MIN_WINDOW {
                    return Err(bad(
                        &format!("idle.project.{name}.window"),
                        "under the minimum of 1s",
                    ));
                }
            }
            if let Some(t) = p.threshold {
                threshold(&format!("idle.project.{name}.threshold"), &t.to_string())?;
            }
            if let Some(g) = &p.grace {
                duration(&format!("idle.project.{name}.grace"), g)?;
            }
        }
        Ok(())
    }

    fn base(&self) -> Result<Policy, IdleError> {
        let window = duration("idle.window", &self.window)?;
        if window < MIN_WINDOW {
            return Err(bad("idle.window", "under the minimum of 1s"));
        }
        if !(self.busy_cpu.is_finite() && self.busy_cpu >= 0.0) {
            return Err(bad("idle.busy_cpu", "must be a percentage ≥ 0"));
        }
        Ok(Policy {
            window_ms: ms(window),
            threshold_pct: threshold("idle.threshold", &self.threshold.to_string())?,
            action: self.action,
            grace_ms: ms(duration("idle.grace", &self.grace)?),
            warn_before_ms: ms(duration("idle.warn_before", &self.warn_before)?),
            busy_cpu_pct: self.busy_cpu,
            busy_io_bytes_per_s: bytes("idle.busy_io", &self.busy_io)?,
        })
    }

    /// The policy of a job, or `None` when it is exempt (`--idle off`, the
    /// exempt tag, a project with `enabled = false`). The job's own values
    /// win over its project's, which win over the lab's.
    pub fn policy_for(&self, job: &JobIdle<'_>) -> Result<Option<Policy>, IdleError> {
        let mut p = self.base()?;
        if !self.exempt_tag.is_empty() && job.tags.contains(&self.exempt_tag) {
            return Ok(None);
        }
        if let Some(proj) = self.project.get(job.project) {
            if proj.enabled == Some(false) {
                return Ok(None);
            }
            let f = |k: &str| format!("idle.project.{}.{k}", job.project);
            if let Some(w) = &proj.window {
                p.window_ms = ms(duration(&f("window"), w)?);
            }
            if let Some(t) = proj.threshold {
                p.threshold_pct = threshold(&f("threshold"), &t.to_string())?;
            }
            if let Some(a) = proj.action {
                p.action = a;
            }
            if let Some(g) = &proj.grace {
                p.grace_ms = ms(duration(&f("grace"), g)?);
            }
        }
        match job.idle.map(|t| Override::parse("idle", t)).transpose()? {
            Some(Override::Off) => return Ok(None),
            Some(Override::Rule {
                window,
                threshold_pct,
                action,
            }) => {
                if let Some(w) = window {
                    p.window_ms = ms(w);
                }
                if let Some(t) = threshold_pct {
                    p.threshold_pct = t;
                }
                if let Some(a) = action {
                    p.action = a;
                }
            }
            Some(Override::Default) | None => {}
        }
        if let Some(g) = job.grace {
            p.grace_ms = ms(parse_grace("idle_grace", g)?);
        }
        Ok(Some(p))
    }
}

/// "12 min", "45 s", "2 h 5 min": a short human duration for `ps` and
/// messages.
pub fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else {
        let (h, m) = (s / 3600, (s % 3600) / 60);
        if m == 0 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_values_parse_and_round_trip() {
        let p = Override::parse("--idle", "30m:5%:stop").unwrap();
        assert_eq!(
            p,
            Override::Rule {
                window: Some(Duration::from_secs(1800)),
                threshold_pct: Some(5),
                action: Some(Action::Stop)
            }
        );
        assert_eq!(p.text().unwrap(), "30m:5%:stop");
        assert_eq!(Override::parse("--idle", "OFF").unwrap(), Override::Off);
        assert_eq!(
            Override::parse("--idle", "2s").unwrap().text().unwrap(),
            "2s"
        );
        assert_eq!(
            Override::parse("--idle", "::requeue").unwrap(),
            Override::Rule {
                window: None,
                threshold_pct: None,
                action: Some(Action::Requeue)
            }
        );
        assert_eq!(
            Override::parse("--idle", "::requeue")
                .unwrap()
                .text()
                .unwrap(),
            "::requeue"
        );
        assert_eq!(
            Override::parse("--idle", "1h30m:10")
                .unwrap()
                .text()
                .unwrap(),
            "1h30m:10%"
        );
    }

    #[test]
    fn bad_idle_values_name_the_flag_and_say_what_is_expected() {
        for (text, want) in [
            ("", "empty"),
            ("soon", "not a duration"),
            ("30m:5%:kill", "unknown action \"kill\""),
            ("30m:0%", "1% to 100%"),
            ("30m:101%", "1% to 100%"),
            ("30m:five", "not a utilization threshold"),
            ("30m:5%:stop:now", "4 parts"),
            ("500ms", "minimum of 1s"),
        ] {
            let e = Override::parse("--idle", text).unwrap_err();
            assert_eq!(e.field, "--idle", "{text}");
            assert!(e.to_string().starts_with("--idle: "), "{e}");
            assert!(e.reason.contains(want), "{text:?}: {e}");
        }
        assert!(parse_grace("--idle-grace", "later")
            .unwrap_err()
            .to_string()
            .starts_with("--idle-grace: "));
        assert_eq!(parse_grace("--idle-grace", "0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn a_jobs_values_win_over_its_projects_which_win_over_the_labs() {
        let mut c = IdleConfig::default();
        c.project.insert(
            "vision".into(),
            ProjectIdle {
                action: Some(Action::Stop),
                window: Some("10m".into()),
                ..ProjectIdle::default()
            },
        );
        c.project.insert(
            "free".into(),
            ProjectIdle {
                enabled: Some(false),
                ..ProjectIdle::default()
            },
        );
        c.check().unwrap();
        let lab = c
            .policy_for(&JobIdle {
                project: "default",
                ..JobIdle::default()
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (lab.window_ms, lab.threshold_pct, lab.action, lab.grace_ms),
            (1_800_000, 5, Action::Notify, 900_000)
        );
        assert_eq!(lab.warn_before_ms, 300_000);
        assert_eq!(lab.busy_io_bytes_per_s, 1 << 20);
        let vision = c
            .policy_for(&JobIdle {
                project: "vision",
                ..JobIdle::default()
            })
            .unwrap()
            .unwrap();
        assert_eq!((vision.window_ms, vision.action), (600_000, Action::Stop));
        let own = c
            .policy_for(&JobIdle {
                project: "vision",
                idle: Some("2s:20%"),
                grace: Some("0s"),
                ..JobIdle::default()
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (own.window_ms, own.threshold_pct, own.action, own.grace_ms),
            (2000, 20, Action::Stop, 0)
        );
        // Exempt: --idle off, the exempt tag, a project turned off.
        let tags = vec!["no-idle".to_string()];
        for j in [
            JobIdle {
                project: "default",
                idle: Some("off"),
                ..JobIdle::default()
            },
            JobIdle {
                project: "default",
                tags: &tags,
                ..JobIdle::default()
            },
            JobIdle {
                project: "free",
                ..JobIdle::default()
            },
        ] {
            assert_eq!(c.policy_for(&j).unwrap(), None);
        }
        // No exempt tag: the tag means nothing.
        c.exempt_tag.clear();
        assert!(c
            .policy_for(&JobIdle {
                project: "default",
                tags: &tags,
                ..JobIdle::default()
            })
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_bad_config_names_the_field() {
        let mut c = IdleConfig {
            window: "soon".into(),
            ..IdleConfig::default()
        };
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("idle.window: "));
        c.window = "30m".into();
        c.busy_io = "1 parsec".into();
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("idle.busy_io: "));
        c.busy_io = "0".into();
        c.threshold = 0;
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("idle.threshold: "));
        c.threshold = 5;
        c.project.insert(
            "p".into(),
            ProjectIdle {
                grace: Some("x".into()),
                ..ProjectIdle::default()
            },
        );
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("idle.project.p.grace: "));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_ms(12_500), "12 s");
        assert_eq!(human_ms(12 * 60_000 + 5), "12 min");
        assert_eq!(human_ms(7_200_000), "2 h");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
    }
}
