//! The lab's settings: `config.toml` in the home, read once when the daemon
//! starts. A file that does not parse, or names an unknown key or time zone,
//! stops the start with the file, line and field named: a daemon never runs
//! on half a config. No secrets live here (they come from the environment,
//! `~/.netrc` or 0600 files).
//!
//! ```toml
//! [usage]
//! timezone = "Asia/Seoul"     # days and months of usage reports; default: the system's
//! ignore_tag = "ignore-usage" # jobs and runs with this tag are not counted
//!
//! [teams.vision]
//! users = ["ana", "bo"]
//! projects = ["detr"]         # a project's team wins over its submitter's
//!
//! [idle]                      # the idle policy's defaults (`crate::idle::IdleConfig`)
//! window = "30m"
//! action = "stop"
//!
//! [notify.team-slack]         # a notification sink (`crate::notify::config`)
//! kind = "slack"
//! url_env = "TEAM_SLACK_URL"  # or url = "…" in a config.toml only its owner reads
//! events = ["job_failed"]
//! ```
//!
//! A webhook URL is a secret: it comes from the daemon's environment
//! (`url_env`), or from `url` only when the file is not readable by others.

use std::path::{Path, PathBuf};

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::idle::{IdleConfig, IdleError};
use crate::notify::{self, config::SinkConfig};
use crate::usage::{self, Teams};

/// Why the lab config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid TOML or has an unknown or mistyped key.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with the line and the key.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value that parses but makes no sense.
    #[error("{}: {field}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `usage.timezone`.
        field: &'static str,
        /// What is wrong.
        #[source]
        source: Box<usage::UsageError>,
    },
    /// An `[idle]` value that cannot be used (the message names the
    /// field, e.g. `idle.window`).
    #[error("{}: {source}", path.display())]
    Idle {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field.
        #[source]
        source: IdleError,
    },
    /// A `[notify.NAME]` table that cannot be used (the message names
    /// the field).
    #[error("{}: {source}", path.display())]
    Notify {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `notify.team.events`.
        field: String,
        /// What is wrong (URLs shown as scheme and host only).
        #[source]
        source: Box<notify::NotifyError>,
    },
}

/// The lab's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// Usage accounting.
    #[serde(default)]
    pub usage: UsageConfig,
    /// Teams: users and projects.
    #[serde(default)]
    pub teams: Teams,
    /// Notification sinks and their rules, by name.
    #[serde(default)]
    pub notify: BTreeMap<String, SinkConfig>,
    /// The idle policy's lab and project defaults.
    #[serde(default)]
    pub idle: IdleConfig,
}

/// `[usage]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// IANA zone whose days and months reports use; the system's when unset.
    pub timezone: Option<String>,
    /// Jobs and runs carrying this tag are left out of usage ("" counts all).
    pub ignore_tag: String,
}

impl Default for UsageConfig {
    fn default() -> UsageConfig {
        UsageConfig {
            timezone: None,
            ignore_tag: "ignore-usage".into(),
        }
    }
}

impl LabConfig {
    /// Read `path`; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<LabConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LabConfig::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let c: LabConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        c.zone().map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "usage.timezone",
            source: Box::new(e),
        })?;
        c.notify_sinks(path)?;
        c.idle.check().map_err(|source| ConfigError::Idle {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(c)
    }

    /// The notification sinks of `[notify.*]`, their URLs read from the
    /// process environment where `url_env` says so. [`LabConfig::load`]
    /// has checked them; this reads them again for the daemon.
    pub fn notify_sinks(&self, path: &Path) -> Result<Vec<notify::Sink>, ConfigError> {
        let shared = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
        };
        self.notify_sinks_from(shared, &|v| std::env::var(v).ok())
            .map_err(|(field, e)| ConfigError::Notify {
                path: path.to_path_buf(),
                field,
                source: Box::new(e),
            })
    }

    fn notify_sinks_from(
        &self,
        file_shared: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<notify::Sink>, (String, notify::NotifyError)> {
        notify::config::resolve(&self.notify, &notify::config::Sources { env, file_shared })
    }

    /// The lab's time zone.
    pub fn zone(&self) -> Result<TimeZone, usage::UsageError> {
        match &self.usage.timezone {
            Some(z) => usage::parse_zone(z),
            None => Ok(TimeZone::system()),
        }
    }

    /// The tag that keeps jobs and runs out of usage, if any.
    pub fn ignore_tag(&self) -> Option<&str> {
        Some(self.usage.ignore_tag.as_str()).filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_missing_and_errors_name_the_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        let p = crate::Home::at(d.path()).config_path();
        assert_eq!(LabConfig::load(&p).unwrap(), LabConfig::default());
        std::fs::write(
            &p,
            "[usage]\ntimezone = \"Asia/Seoul\"\n[teams.vision]\nusers = [\"ana\"]\nprojects = [\"detr\"]\n",
        )
        .unwrap();
        let c = LabConfig::load(&p).unwrap();
        assert_eq!(c.teams.of("bo", "detr"), Some("vision"));
        assert_eq!(c.ignore_tag(), Some("ignore-usage"));
        for (text, want) in [
            (
                "[usage]\ntimezone = \"Mars/Base\"\n",
                "usage.timezone: unknown time zone",
            ),
            ("[usage]\ntimezon = \"UTC\"\n", "unknown field `timezon`"),
            ("[teams.x]\nmembers = []\n", "unknown field `members`"),
            ("[usage\n", "config.toml"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = LabConfig::load(&p).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("config.toml"),
                "{text:?}: {e}"
            );
        }
    }
}
