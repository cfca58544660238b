//! Connecting the desktop window to a lab daemon: reading the address the
//! user typed, and the connection test every connect goes through first
//! (reachable, a Trainyard daemon of an API version this app speaks, the
//! token accepted). Knows nothing of windows, trays or where the token is
//! kept: `lib.rs` switches the window only after [`probe`] says yes, so a
//! bad address, token or daemon leaves the previous connection as it was.

use std::time::Duration;

use serde::Serialize;
use trainyard::api::API_VERSION;
use trainyard::client::{Client, ClientError};
use trainyard::server::Secret;

/// How long a connection test may take in all (connect, health, token).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a lab daemon cannot be shown. Each message names the address and
/// says what to check; the UI shows it as is.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not an address this app can open.
    #[error("\"{input}\" is not a lab server address: {reason} (write it as http://HOST:PORT, e.g. http://gpu-lab:7171)")]
    BadUrl {
        /// What the user typed.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No token given and none remembered for this address.
    #[error("no token for {url}: paste the lab daemon's token (its daemon.token, or ask the lab's admin)")]
    NoToken {
        /// The lab address.
        url: String,
    },
    /// Nothing answered, or not in time.
    #[error("cannot reach {url}: {reason}. Check the address and that the lab daemon runs and listens beyond loopback (`trainyard up --bind 0.0.0.0`)")]
    Unreachable {
        /// The lab address.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// Something answered, but not a Trainyard API this app knows.
    #[error("{url} is not a Trainyard daemon this app can use: {reason}")]
    NotTrainyard {
        /// The lab address.
        url: String,
        /// What it answered.
        reason: String,
    },
    /// A Trainyard daemon of another API version.
    #[error("the daemon at {url} (Trainyard {version}) speaks API version {api}; this app speaks version {ours}. Install matching versions of Trainyard on the lab server and this computer")]
    Incompatible {
        /// The lab address.
        url: String,
        /// Its Trainyard version.
        version: String,
        /// Its API version.
        api: u32,
        /// Ours.
        ours: u32,
    },
    /// The daemon refused the token.
    #[error("the daemon at {url} refused the token: {message}. Paste the current content of the lab daemon's daemon.token")]
    WrongToken {
        /// The lab address.
        url: String,
        /// Its message.
        message: String,
    },
}

/// What a successful connection test learned.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LabInfo {
    /// The address, normalized (`http://host:port`).
    pub url: String,
    /// The daemon's Trainyard version.
    pub version: String,
}

/// The address the user typed → `scheme://host[:port]`: `http://` added
/// when no scheme is given; only http and https; no user, path, query or
/// fragment (the window adds its own `#token=`).
pub fn normalize_url(input: &str) -> Result<String, ConnectError> {
    let trimmed = input.trim();
    let bad = |reason: &str| ConnectError::BadUrl {
        input: trimmed.to_string(),
        reason: reason.to_string(),
    };
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// addresses can be shown"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "it carries a user name or password; the token goes in its own field",
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "give the daemon's address only, without a path, query or #fragment",
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// Test a lab daemon: it answers `GET /api/v1/health` as a Trainyard daemon
/// of [`API_VERSION`], and accepts `token` on an authenticated call. Never
/// takes longer than [`PROBE_TIMEOUT`].
pub async fn probe(url: &str, token: &Secret) -> Result<LabInfo, ConnectError> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(url, token)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Unreachable {
            url: url.to_string(),
            reason: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        }),
    }
}

async fn probe_inner(url: &str, token: &Secret) -> Result<LabInfo, ConnectError> {
    let client = Client::new(url, Some(token.clone()));
    let health = client.health().await.map_err(|e| match e {
        ClientError::Unreachable { reason, .. } => ConnectError::Unreachable {
            url: url.to_string(),
            reason,
        },
        ClientError::Api { status: 404, .. } => ConnectError::NotTrainyard {
            url: url.to_string(),
            reason: format!(
                "nothing at {}/health (a daemon of another API version, or not Trainyard)",
                trainyard::api::PREFIX
            ),
        },
        other => ConnectError::NotTrainyard {
            url: url.to_string(),
            reason: other.to_string(),
        },
    })?;
    if health.api != API_VERSION {
        return Err(ConnectError::Incompatible {
            url: url.to_string(),
            version: health.version,
            api: health.api,
            ours: API_VERSION,
        });
    }
    match client.agents().await {
        Ok(_) => Ok(LabInfo {
            url: url.to_string(),
            version: health.version,
        }),
        Err(ClientError::Unauthorized { message, .. }) => Err(ConnectError::WrongToken {
            url: url.to_string(),
            message,
        }),
        Err(ClientError::Unreachable { reason, .. }) => Err(ConnectError::Unreachable {
            url: url.to_string(),
            reason,
        }),
        Err(other) => Err(ConnectError::NotTrainyard {
            url: url.to_string(),
            reason: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trainyard::daemon::{self, Daemon};

    #[test]
    fn addresses_are_normalized_or_refused_with_the_reason() {
        assert_eq!(
            normalize_url("gpu-lab:7171").unwrap(),
            "http://gpu-lab:7171"
        );
        assert_eq!(
            normalize_url(" http://10.0.0.5:7171/ ").unwrap(),
            "http://10.0.0.5:7171"
        );
        assert_eq!(
            normalize_url("https://lab.example.org").unwrap(),
            "https://lab.example.org"
        );
        for (input, why) in [
            ("", "empty"),
            ("ftp://lab:21", "only http"),
            ("http://lab:7171/ui", "without a path"),
            ("http://lab:7171/#token=x", "without a path"),
            ("http://me:pw@lab:7171", "user name"),
            ("http://lab:99999", "invalid port"),
        ] {
            let e = normalize_url(input).unwrap_err().to_string();
            assert!(e.contains(why), "{input:?}: {e}");
            assert!(e.contains("http://HOST:PORT"), "{input:?}: {e}");
        }
    }

    /// A real daemon on loopback with a token of its own, as a lab runs.
    async fn lab() -> (Daemon, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let home = trainyard::Home::at(&dir.path().join("home"));
        home.ensure().unwrap();
        let config = daemon::Config::loopback(home, 0, None);
        (Daemon::start(config).await.unwrap(), dir)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lab_daemon_is_accepted_with_its_token_and_refused_with_another() {
        let (d, _dir) = lab().await;
        let url = d.url().trim_end_matches('/').to_string();
        let info = probe(&url, d.token()).await.unwrap();
        assert_eq!(info.url, url);
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));

        let e = probe(&url, &Secret::new("not-the-token".to_string()))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::WrongToken { .. }), "{e:?}");
        assert!(e.to_string().contains("refused the token"), "{e}");
        d.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nothing_listening_is_unreachable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let e = probe(&url, &Secret::new("t".to_string()))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains(&url), "{e}");
    }

    /// A minimal HTTP server answering every request with `body` and
    /// `status`: stands for a daemon of a future API version, which cannot
    /// exist here, and for a web server that is not Trainyard.
    async fn answering(status: &'static str, body: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn another_api_version_is_refused_naming_both_versions() {
        let url = answering(
            "200 OK",
            r#"{"version":"9.0.0","api":2,"auth_required":true,"features":[]}"#,
        )
        .await;
        let e = probe(&url, &Secret::new("t".to_string()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::Incompatible {
                    api: 2,
                    ours: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("9.0.0") && text.contains("API version 2"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_server_that_is_not_trainyard_is_named() {
        let url = answering("404 Not Found", "no such page").await;
        let e = probe(&url, &Secret::new("t".to_string()))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::NotTrainyard { .. }), "{e:?}");
        assert!(e.to_string().contains("not a Trainyard daemon"), "{e}");
    }
}
