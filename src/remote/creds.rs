//! AWS credentials, found where S3 tools look for them: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`),
//! then the profile `AWS_PROFILE` (or `default`) in the shared credentials
//! file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`). The region
//! comes from the remote's settings, `AWS_REGION`/`AWS_DEFAULT_REGION`, the
//! profile in `~/.aws/config` (`AWS_CONFIG_FILE`), else `us-east-1`.
//! Secrets are kept in [`Secret`]s, which never print.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Error, Result};
use crate::secret::Secret;

/// Resolved credentials and where they came from.
#[derive(Debug)]
pub struct Credentials {
    /// Access key id (not secret).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Session token.
    pub session_token: Option<Secret>,
    /// Region.
    pub region: String,
    /// Where they came from, for messages ("environment (AWS_ACCESS_KEY_ID)", …).
    pub source: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn aws_dir_file(var: &str, name: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|d| d.home_dir().join(".aws").join(name)))
}

/// Parse an AWS INI file into sections of key → value.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

/// Find credentials for remote `remote`.
pub fn resolve(remote: &str, region: Option<&str>) -> Result<Credentials> {
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let config = aws_dir_file("AWS_CONFIG_FILE", "config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_ini(&t))
        .unwrap_or_default();
    let section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let region = region
        .map(str::to_string)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| config.get(&section).and_then(|s| s.get("region")).cloned())
        .unwrap_or_else(|| "us-east-1".into());
    let mut tried = Vec::new();
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: Secret::new(secret),
                session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
                region,
                source: "the environment (AWS_ACCESS_KEY_ID)".into(),
            })
        }
        (Some(_), None) => {
            tried.push("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string())
        }
        (None, Some(_)) => {
            tried.push("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string())
        }
        (None, None) => tried.push("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (not set)".to_string()),
    }
    let path = aws_dir_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    if let Some(path) = path {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let ini = parse_ini(&text);
                match ini.get(&profile) {
                    Some(s) => match (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
                        (Some(id), Some(secret)) => {
                            return Ok(Credentials {
                                access_key_id: id.clone(),
                                secret_access_key: Secret::new(secret.clone()),
                                session_token: s.get("aws_session_token").cloned().map(Secret::new),
                                region,
                                source: format!("profile {profile} in {}", path.display()),
                            })
                        }
                        _ => tried.push(format!(
                            "profile {profile} in {} (it lacks aws_access_key_id or aws_secret_access_key)",
                            path.display()
                        )),
                    },
                    None => tried.push(format!("profile {profile} in {} (no such profile)", path.display())),
                }
            }
            Err(_) => tried.push(format!(
                "profile {profile} in {} (no such file)",
                path.display()
            )),
        }
    }
    Err(Error::NoCredentials {
        remote: remote.to_string(),
        tried: tried.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_keys() {
        let ini =
            parse_ini("[default]\naws_access_key_id = A\n# c\n[profile x]\nregion=eu-west-1\n");
        assert_eq!(ini["default"]["aws_access_key_id"], "A");
        assert_eq!(ini["profile x"]["region"], "eu-west-1");
    }
}
