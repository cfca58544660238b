//! Named remotes, kept in `$TRAINYARD_HOME/remotes.toml`:
//!
//! ```toml
//! default = "lab"
//! [remotes.lab]
//! url = "s3://datasets/trainyard"
//! endpoint = "http://10.0.0.5:9000"   # S3-compatible server (path-style requests)
//! region = "us-east-1"
//! allow_http = true
//! ```
//!
//! Credentials are never stored here (see [`super::creds`]); a URL with a
//! user or password in it is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// One remote's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3://bucket/prefix` or `file:///absolute/path`.
    pub url: String,
    /// Endpoint of an S3-compatible server (`http://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (default: from the AWS config, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

/// Where a remote's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 bucket and key prefix (no leading or trailing `/`).
    S3 {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
    },
    /// A directory.
    Dir(PathBuf),
}

/// Parse and check a remote URL.
pub fn parse_url(url: &str) -> Result<Location> {
    let bad = |reason: &'static str| Error::BadUrl {
        url: url.to_string(),
        reason,
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(bad("credentials do not belong in the URL; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"));
        }
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(bad(
                "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'",
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad(
                "a file URL needs an absolute path: file:///path/to/dir",
            ));
        }
        return Ok(Location::Dir(PathBuf::from(rest)));
    }
    Err(bad("use s3://bucket/prefix or file:///absolute/path"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    #[serde(default)]
    remotes: BTreeMap<String, RemoteConfig>,
}

/// The remotes file.
#[derive(Debug)]
pub struct Remotes {
    path: PathBuf,
    file: File,
}

impl Remotes {
    /// Load `path` (missing: no remotes).
    pub fn load(path: &Path) -> Result<Remotes> {
        let file = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| Error::BadConfigFile {
                path: path.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(source) => {
                return Err(Error::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Remotes {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Load the remotes file of `home` (`$TRAINYARD_HOME/remotes.toml`).
    pub fn load_home(home: &crate::Home) -> Result<Remotes> {
        Remotes::load(&home.root().join("remotes.toml"))
    }

    fn save(&self) -> Result<()> {
        let text = toml::to_string_pretty(&self.file).expect("remotes serialize");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |source: std::io::Error| Error::Io {
            op: "write",
            path: self.path.clone(),
            source,
        };
        let mut t = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut t, text.as_bytes()).map_err(io)?;
        t.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Add a remote (its URL checked); `default` makes it the default.
    pub fn add(&mut self, name: &str, config: RemoteConfig, default: bool) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.to_string()));
        }
        if self.file.remotes.contains_key(name) {
            return Err(Error::Exists(name.to_string()));
        }
        parse_url(&config.url)?;
        if let Some(ep) = &config.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(Error::BadEndpoint(ep.clone()));
            }
            if ep.starts_with("http://") && !config.allow_http {
                return Err(Error::PlainHttp(ep.clone()));
            }
        }
        self.file.remotes.insert(name.to_string(), config);
        if default || self.file.default.is_none() {
            self.file.default = Some(name.to_string());
        }
        self.save()
    }

    /// Remove a remote.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        if self.file.remotes.remove(name).is_none() {
            return Err(Error::UnknownRemote(name.into()));
        }
        if self.file.default.as_deref() == Some(name) {
            self.file.default = None;
        }
        self.save()
    }

    /// All remotes, by name.
    pub fn list(&self) -> impl Iterator<Item = (&String, &RemoteConfig)> {
        self.file.remotes.iter()
    }

    /// The default remote's name.
    pub fn default_name(&self) -> Option<&str> {
        self.file.default.as_deref()
    }

    /// The named remote, or the default one.
    pub fn get(&self, name: Option<&str>) -> Result<(String, RemoteConfig)> {
        let name = match name {
            Some(n) => n,
            None => self.file.default.as_deref().ok_or(Error::NoDefault)?,
        };
        let c = self
            .file
            .remotes
            .get(name)
            .ok_or_else(|| Error::UnknownRemote(name.into()))?;
        Ok((name.to_string(), c.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_errors_say_why() {
        assert_eq!(
            parse_url("s3://my-bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            parse_url("file:///mnt/nas").unwrap(),
            Location::Dir("/mnt/nas".into())
        );
        for (bad, why) in [
            ("s3://AKIA:secret@bucket/x", "credentials"),
            ("s3://B/x", "bucket name"),
            ("file://rel/dir", "absolute"),
            ("gs://x", "use s3://"),
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
