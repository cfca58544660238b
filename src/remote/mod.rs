//! Dataset remotes: an S3 bucket (AWS or any S3-compatible server) or a
//! directory (`file:///…`, e.g. a NAS mount) that holds datasets in the
//! layout of `docs/remote-format.md`, reached through `object_store`.
//!
//! - [`config`]: the named remotes in `$TRAINYARD_HOME/remotes.toml` (never
//!   credentials).
//! - [`creds`]: AWS credentials from the environment or the shared
//!   credentials/config files, with the source named in every error.
//! - [`mod@format`]: keys, the pack index format, version and tag records.
//! - [`sync`]: push, pull (fetch) and listing.
//!
//! The store knows nothing about remotes; this module drives the store's
//! export/import API (`store::Export`, `store::Import`).

pub mod config;
pub mod creds;
pub mod format;
pub mod registry;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

pub use config::{RemoteConfig, Remotes};
pub use sync::{PullReport, PushReport, RemoteDataset};

/// Everything that can go wrong with a remote.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The remotes file or a remote's settings are wrong.
    #[error("{0}")]
    Config(String),
    /// No remote of that name.
    #[error("no remote named {0:?}; `trainyard remote list` shows them, `trainyard remote add NAME URL` adds one")]
    UnknownRemote(String),
    /// No remote given and none is the default.
    #[error("no remote given and no default remote; pass --remote NAME or `trainyard remote add NAME URL --default`")]
    NoDefault,
    /// No usable credentials.
    #[error("no AWS credentials for remote {remote}: tried {tried}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials")]
    NoCredentials {
        /// The remote.
        remote: String,
        /// What was tried.
        tried: String,
    },
    /// The server refused the credentials.
    #[error("remote {remote} ({url}) rejected the credentials from {source_name}: {answer}")]
    Rejected {
        /// The remote.
        remote: String,
        /// Its URL.
        url: String,
        /// Where the credentials came from.
        source_name: String,
        /// What the server said.
        answer: String,
    },
    /// The server could not be reached or failed.
    #[error("remote {remote} ({url}): {op} {key}: {message}")]
    Store {
        /// The remote.
        remote: String,
        /// Its URL.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// The key.
        key: String,
        /// object_store's message.
        message: String,
    },
    /// Something on the remote is damaged or not in the expected format.
    #[error("remote {remote}: {key}: {reason}")]
    Corrupt {
        /// The remote.
        remote: String,
        /// The key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A dataset, version or tag is not on the remote.
    #[error("remote {remote} has no {what}")]
    NotOnRemote {
        /// The remote.
        remote: String,
        /// What was looked for.
        what: String,
    },
    /// A tag was moved on the remote by someone else.
    #[error("tag {dataset}@{tag} on remote {remote} now names {theirs}, set by another push since you last synced it (yours: {ours}); not overwritten. Pull to see it, or push with --force-tags to move it anyway")]
    TagConflict {
        /// The remote.
        remote: String,
        /// Dataset.
        dataset: String,
        /// Tag.
        tag: String,
        /// The remote's version.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Local(#[from] crate::store::Error),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An opened remote.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: RemoteConfig,
    /// The object store (keys below are relative to [`Remote::root`]).
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix (the URL's path for S3, empty for a directory).
    pub root: ObjPath,
    /// Where the credentials came from (for messages), or `none`.
    pub cred_source: String,
}

/// How long one request may take, and the retry policy: transient failures
/// (5xx, timeouts, resets) are retried with exponential backoff.
fn client_options() -> (ClientOptions, RetryConfig) {
    let opts = ClientOptions::new()
        .with_timeout(Duration::from_secs(300))
        .with_connect_timeout(Duration::from_secs(10));
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(120),
    };
    (opts, retry)
}

impl Remote {
    /// Open a remote by its settings (credentials resolved now, not stored).
    pub fn open(name: &str, config: &RemoteConfig) -> Result<Remote> {
        let url = config::parse_url(&config.url)?;
        match url {
            config::Location::S3 { bucket, prefix } => {
                let c = creds::resolve(name, config.region.as_deref())?;
                let (opts, retry) = client_options();
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(&bucket)
                    .with_region(&c.region)
                    .with_access_key_id(&c.access_key_id)
                    .with_secret_access_key(c.secret_access_key.expose())
                    // After the client options: allow_http is one of them.
                    .with_client_options(opts)
                    .with_allow_http(config.allow_http)
                    .with_retry(retry);
                if let Some(t) = &c.session_token {
                    b = b.with_token(t.expose());
                }
                if let Some(ep) = &config.endpoint {
                    // S3-compatible servers: path-style requests.
                    b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
                }
                let store = b
                    .build()
                    .map_err(|e| Error::Config(format!("remote {name} ({}): {e}", config.url)))?;
                Ok(Remote {
                    name: name.to_string(),
                    config: config.clone(),
                    store: Arc::new(store),
                    root: ObjPath::from(prefix.as_str()),
                    cred_source: c.source,
                })
            }
            config::Location::Dir(path) => {
                std::fs::create_dir_all(&path).map_err(|e| {
                    Error::Config(format!(
                        "remote {name}: cannot create {}: {e}",
                        path.display()
                    ))
                })?;
                let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| {
                    Error::Config(format!("remote {name}: {}: {e}", path.display()))
                })?;
                Ok(Remote {
                    name: name.to_string(),
                    config: config.clone(),
                    store: Arc::new(store),
                    root: ObjPath::default(),
                    cred_source: "none (a directory)".into(),
                })
            }
        }
    }

    /// The full key of `rel` under the remote's root.
    pub fn key(&self, rel: &str) -> ObjPath {
        let mut parts: Vec<String> = self.root.parts().map(|p| p.as_ref().to_string()).collect();
        parts.extend(rel.split('/').filter(|s| !s.is_empty()).map(str::to_string));
        ObjPath::from(parts.join("/"))
    }

    /// Map an object_store error into one that names the remote, the key
    /// and, for refused credentials, where they came from.
    pub fn err(&self, op: &'static str, key: &ObjPath, e: object_store::Error) -> Error {
        let message = e.to_string();
        tracing::debug!(error = ?e, "object store error");
        let refused = matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || message.contains("403")
            || message.contains("InvalidAccessKeyId")
            || message.contains("SignatureDoesNotMatch")
            || message.contains("AccessDenied");
        if refused {
            return Error::Rejected {
                remote: self.name.clone(),
                url: self.config.url.clone(),
                source_name: self.cred_source.clone(),
                answer: message,
            };
        }
        Error::Store {
            remote: self.name.clone(),
            url: self.config.url.clone(),
            op,
            key: key.to_string(),
            message,
        }
    }
}
