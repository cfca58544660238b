//! Which wandb server to talk to and with which API key, found where the
//! `wandb` client itself keeps them, so `wandb login --host …` once is enough:
//!
//! - the server: `--host`, else `WANDB_BASE_URL`, else `base_url` in the
//!   `[default]` section of `$WANDB_CONFIG_DIR/settings` (default
//!   `~/.config/wandb/settings`). There is no default: a lab that cannot send
//!   data to wandb.ai must never do so by accident.
//! - the key: `WANDB_API_KEY`, else the password of the `~/.netrc` (or
//!   `$NETRC`) entry whose machine is the server's `host:port` (what `wandb
//!   login --host` writes), else its bare host.
//!
//! Keys never come from Trainyard's own files and never print: the key is a
//! [`Secret`], whose `Debug` is redacted and which has no `Display`; it is
//! exposed only for the Authorization header.

use std::fmt;
use std::path::{Path, PathBuf};

use super::SyncError;
use crate::secret::Secret;

/// Where the API key came from, named in errors ("rejected (from …)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `WANDB_API_KEY`.
    Env,
    /// A netrc file entry.
    Netrc {
        /// The file.
        path: PathBuf,
        /// The machine name matched.
        machine: String,
    },
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => f.write_str("WANDB_API_KEY"),
            KeySource::Netrc { path, machine } => {
                write!(f, "{}, machine {machine}", path.display())
            }
        }
    }
}

/// Where the server URL came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSource {
    /// `--host`.
    Flag,
    /// `WANDB_BASE_URL`.
    Env,
    /// A wandb settings file.
    Settings(PathBuf),
}

/// A wandb server and the key to use with it.
#[derive(Debug, Clone)]
pub struct Server {
    /// Base URL without a trailing slash, e.g. `http://wandb.lab:8080`.
    pub base_url: String,
    /// Where the URL came from.
    pub host_source: HostSource,
    /// The API key.
    pub key: Secret,
    /// Where the key came from.
    pub key_source: KeySource,
}

impl Server {
    /// A server with a key given directly (tests, the desktop app).
    pub fn new(base_url: &str, key: Secret) -> Result<Server, SyncError> {
        Ok(Server {
            base_url: normalize(base_url, "the server URL")?,
            host_source: HostSource::Flag,
            key,
            key_source: KeySource::Env,
        })
    }

    /// `host:port` of the base URL, as people and netrc name it.
    pub fn netloc(&self) -> String {
        netloc(&self.base_url).unwrap_or_else(|| self.base_url.clone())
    }
}

/// Looks up environment variables; tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Resolves the server and its key (see the module docs for the order).
pub fn resolve(host_flag: Option<&str>, env: EnvLookup<'_>) -> Result<Server, SyncError> {
    let home = env("HOME").map(PathBuf::from);
    let (raw, host_source) = if let Some(h) = host_flag {
        (h.to_string(), HostSource::Flag)
    } else if let Some(h) = env("WANDB_BASE_URL") {
        (h, HostSource::Env)
    } else {
        let dir = env("WANDB_CONFIG_DIR")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".config/wandb")));
        let settings = dir.map(|d| d.join("settings"));
        match settings.as_deref().map(settings_base_url).transpose()? {
            Some(Some(url)) => (url, HostSource::Settings(settings.unwrap_or_default())),
            _ => return Err(SyncError::NoHost),
        }
    };
    let what = match &host_source {
        HostSource::Flag => "--host".to_string(),
        HostSource::Env => "WANDB_BASE_URL".to_string(),
        HostSource::Settings(p) => format!("base_url in {}", p.display()),
    };
    let base_url = normalize(&raw, &what)?;
    let netloc = netloc(&base_url).unwrap_or_default();
    if let Some(k) = env("WANDB_API_KEY") {
        return Ok(Server {
            base_url,
            host_source,
            key: Secret::new(k.trim()),
            key_source: KeySource::Env,
        });
    }
    let netrc = env("NETRC")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".netrc")));
    if let Some(path) = netrc {
        let bare = netloc.split(':').next().unwrap_or_default().to_string();
        for machine in [netloc.clone(), bare] {
            if let Some(key) = netrc_password(&path, &machine)? {
                return Ok(Server {
                    base_url,
                    host_source,
                    key: Secret::new(key),
                    key_source: KeySource::Netrc { path, machine },
                });
            }
        }
    }
    Err(SyncError::NoKey {
        host: netloc.clone(),
        hint: format!(
            "set WANDB_API_KEY, or run `wandb login --host {base_url}` (it writes a ~/.netrc entry for machine {netloc})"
        ),
    })
}

/// Checks and normalizes a server URL: http(s), a host, no trailing slash.
fn normalize(url: &str, what: &str) -> Result<String, SyncError> {
    let url = url.trim().trim_end_matches('/');
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && netloc(url).is_some_and(|n| !n.is_empty());
    if !ok {
        return Err(SyncError::BadHost {
            url: url.to_string(),
            from: what.to_string(),
        });
    }
    Ok(url.to_string())
}

/// `host:port` (or `host`) of an http(s) URL.
fn netloc(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit('@').next()?;
    Some(host.to_string())
}

/// A config file's text; `None` when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<String>, SyncError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SyncError::ReadConfig {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `base_url` from the `[default]` section of a wandb settings file (INI).
fn settings_base_url(path: &Path) -> Result<Option<String>, SyncError> {
    let Some(text) = read_if_present(path)? else {
        return Ok(None);
    };
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if section != "default" {
            continue;
        }
        if let Some((k, v)) = line.split_once(['=', ':']) {
            if k.trim() == "base_url" && !v.trim().is_empty() {
                return Ok(Some(v.trim().to_string()));
            }
        }
    }
    Ok(None)
}

/// The password of `machine` in a netrc file (`default` entries match any
/// machine). Refuses a file that others can read, as Python's `netrc` does.
fn netrc_password(path: &Path, machine: &str) -> Result<Option<String>, SyncError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(text) = read_if_present(path)? else {
        return Ok(None);
    };
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o600);
    let mut tokens = text.split_whitespace();
    let mut current: Option<bool> = None; // Some(matches) inside an entry
    let mut found = None;
    while let Some(tok) = tokens.next() {
        match tok {
            "machine" => current = Some(tokens.next() == Some(machine)),
            "default" => current = Some(true),
            "password" => {
                let pw = tokens.next();
                if current == Some(true) && found.is_none() {
                    found = pw.map(str::to_string);
                }
            }
            "login" | "account" => {
                tokens.next();
            }
            "macdef" => {
                // a macro runs to the next blank line; whitespace splitting
                // cannot see that, so stop matching inside it
                current = Some(false);
            }
            _ => {}
        }
    }
    if found.is_some() && mode & 0o077 != 0 {
        return Err(SyncError::NetrcTooOpen {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_flag_env_settings_and_netrc_by_host_port() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::create_dir_all(h.join(".config/wandb")).unwrap();
        std::fs::write(
            h.join(".config/wandb/settings"),
            "[default]\nbase_url = http://wandb.lab:8080/\n",
        )
        .unwrap();
        let netrc = h.join(".netrc");
        std::fs::write(
            &netrc,
            "machine other:1 login user password nope\nmachine wandb.lab:8080\n  login user\n  password local-abc\n",
        )
        .unwrap();
        std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o600)).unwrap();
        let vars = env_of(&[("HOME", h.to_str().unwrap())]);
        let env = |k: &str| vars.get(k).cloned();
        let s = resolve(None, &env).unwrap();
        assert_eq!(s.base_url, "http://wandb.lab:8080");
        assert!(matches!(s.host_source, HostSource::Settings(_)));
        assert_eq!(s.key.expose(), "local-abc");
        assert_eq!(
            s.key_source,
            KeySource::Netrc {
                path: netrc.clone(),
                machine: "wandb.lab:8080".into()
            }
        );
        assert_eq!(format!("{:?}", s.key), "Secret(***)");
        assert!(!format!("{s:?}").contains("local-abc"), "{s:?}");

        let vars = env_of(&[
            ("HOME", h.to_str().unwrap()),
            ("WANDB_BASE_URL", "http://other:1"),
            ("WANDB_API_KEY", "envkey"),
        ]);
        let env = |k: &str| vars.get(k).cloned();
        let s = resolve(None, &env).unwrap();
        assert_eq!(s.base_url, "http://other:1");
        assert_eq!(s.key_source, KeySource::Env);
        let s = resolve(Some("https://flag.example"), &env).unwrap();
        assert_eq!(s.base_url, "https://flag.example");
        assert_eq!(s.host_source, HostSource::Flag);

        // netrc readable by others is refused when it holds the key
        std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o644)).unwrap();
        let vars = env_of(&[("HOME", h.to_str().unwrap())]);
        let env = |k: &str| vars.get(k).cloned();
        let e = resolve(None, &env).unwrap_err().to_string();
        assert!(e.contains(".netrc") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn missing_host_or_key_says_what_to_do() {
        let home = tempfile::tempdir().unwrap();
        let vars = env_of(&[("HOME", home.path().to_str().unwrap())]);
        let env = |k: &str| vars.get(k).cloned();
        let e = resolve(None, &env).unwrap_err().to_string();
        assert!(e.contains("--host") && e.contains("WANDB_BASE_URL"), "{e}");
        let e = resolve(Some("http://h:9"), &env).unwrap_err().to_string();
        assert!(e.contains("WANDB_API_KEY") && e.contains("h:9"), "{e}");
        let e = resolve(Some("wandb.lab"), &env).unwrap_err().to_string();
        assert!(e.contains("wandb.lab") && e.contains("--host"), "{e}");
    }
}
