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
//! - [`state`]: how each remote's versions of a dataset compare with the
//!   local ones ([`SyncState`]).
//! - [`registry`]: pointer files in a git data registry; pinning a pushed
//!   version and getting the version a pointer names.
//!
//! The store knows nothing about remotes; this module drives the store's
//! export/import API (`store::Export`, `store::Import`).

pub mod config;
pub mod creds;
pub mod format;
pub mod registry;
pub mod state;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

pub use config::{RemoteConfig, Remotes};
pub use state::{dataset_on_remotes, DatasetSync, RemoteSync, SyncState};
pub use sync::{PullReport, PushReport, RemoteDataset};

/// Everything that can go wrong with a remote. Each variant names the
/// remote, file, key or pointer at fault and keeps the error that caused it
/// as its `source`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of Trainyard's own (the remotes file, a cache) could not be
    /// read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What we were doing ("read", "write", "create").
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The remotes file is not valid TOML or has unknown keys.
    #[error("{}: {source}", path.display())]
    BadConfigFile {
        /// The remotes file.
        path: PathBuf,
        /// The parser's error.
        source: toml::de::Error,
    },
    /// A remote URL is not one Trainyard can use.
    #[error("remote URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why it is refused, and what to use.
        reason: &'static str,
    },
    /// A remote name is not acceptable.
    #[error("invalid remote name {0:?}: use 1-64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    /// A remote of that name is already configured.
    #[error("remote {0} exists; `trainyard remote remove {0}` first")]
    Exists(String),
    /// An endpoint that is not an http(s) URL.
    #[error("--endpoint {0:?}: use http://host:port or https://host")]
    BadEndpoint(String),
    /// A plain-HTTP endpoint without `allow_http`.
    #[error("--endpoint {0} is plain HTTP; pass --allow-http to use it")]
    PlainHttp(String),
    /// object_store refused a remote's settings.
    #[error("remote {remote} ({url}): {source}")]
    Open {
        /// The remote.
        remote: String,
        /// Its URL.
        url: String,
        /// object_store's error.
        source: Box<object_store::Error>,
    },
    /// A directory remote's directory could not be created.
    #[error("remote {remote}: cannot create {}: {source}", path.display())]
    CreateDir {
        /// The remote.
        remote: String,
        /// Its directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// object_store refused a directory remote's directory.
    #[error("remote {remote}: {}: {source}", path.display())]
    OpenDir {
        /// The remote.
        remote: String,
        /// Its directory.
        path: PathBuf,
        /// object_store's error.
        source: Box<object_store::Error>,
    },
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
    #[error("remote {remote} ({url}) rejected the credentials from {source_name}: {source}")]
    Rejected {
        /// The remote.
        remote: String,
        /// Its URL.
        url: String,
        /// Where the credentials came from.
        source_name: String,
        /// What the server said.
        source: Box<object_store::Error>,
    },
    /// The server could not be reached or failed.
    #[error("remote {remote} ({url}): {op} {key}: {source}")]
    Store {
        /// The remote.
        remote: String,
        /// Its URL.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// The key.
        key: String,
        /// object_store's error.
        source: Box<object_store::Error>,
    },
    /// Streaming a large object to the remote failed.
    #[error("remote {remote} ({url}): upload {key}: {source}")]
    Upload {
        /// The remote.
        remote: String,
        /// Its URL.
        url: String,
        /// The key.
        key: String,
        /// The error of the upload stream (object_store's, as an I/O error).
        source: std::io::Error,
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
    /// A version id prefix matches several versions on the remote.
    #[error(
        "{dataset}@{reference} is ambiguous on remote {remote}: {matches} versions start with it"
    )]
    Ambiguous {
        /// The remote.
        remote: String,
        /// Dataset.
        dataset: String,
        /// The prefix asked for.
        reference: String,
        /// How many versions it matches.
        matches: usize,
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
    /// A registry pointer file is not valid TOML or has unknown keys.
    #[error("{what} is not a Trainyard pointer: {source}")]
    BadPointer {
        /// The pointer (file, or repo@rev:path).
        what: String,
        /// The parser's error.
        source: toml::de::Error,
    },
    /// A registry pointer names something that is not a full version id.
    #[error("{what}: version {version:?} is not a full version id")]
    PointerVersion {
        /// The pointer.
        what: String,
        /// What it names.
        version: String,
    },
    /// A registry pointer names an invalid dataset name.
    #[error("{what}: {source}")]
    PointerDataset {
        /// The pointer.
        what: String,
        /// Why the name is refused.
        source: crate::store::Error,
    },
    /// A registry pointer is not UTF-8.
    #[error("{0} is not UTF-8 text")]
    PointerNotText(String),
    /// A path given for a pointer file cannot be made absolute.
    #[error("{}: {source}", path.display())]
    PointerPath {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pointer file's directory is not in a git repository.
    #[error("{} is not inside a git repository; `git init` one (the data registry) first", .0.display())]
    NotInRepo(PathBuf),
    /// The enclosing git repository has no work tree.
    #[error("the git repository is bare; pin inside a clone")]
    BareRepo,
    /// The pointer file is outside the repository's work tree.
    #[error("{} is outside {}", file.display(), workdir.display())]
    OutsideRepo {
        /// The pointer file.
        file: PathBuf,
        /// The work tree.
        workdir: PathBuf,
    },
    /// A git tag was asked for without a commit.
    #[error("--git-tag needs --commit: a tag names a commit")]
    TagNeedsCommit,
    /// A version to pin is not on the remote.
    #[error("{dataset}@{version} is not on remote {remote}; push it first: trainyard data push {dataset}@{version} --remote {remote}")]
    NotPushed {
        /// Dataset.
        dataset: String,
        /// The version's short id.
        version: String,
        /// The remote.
        remote: String,
    },
    /// A git operation on the registry's work tree failed.
    #[error("{what}: {}", source.message())]
    Git {
        /// What we were doing ("git add", "git commit", ...).
        what: String,
        /// libgit2's error.
        source: git2::Error,
    },
    /// The registry could not be fetched or the pointer read from it.
    #[error(transparent)]
    Registry(#[from] crate::agent::git::GitError),
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
                let store = b.build().map_err(|source| Error::Open {
                    remote: name.to_string(),
                    url: config.url.clone(),
                    source: Box::new(source),
                })?;
                Ok(Remote {
                    name: name.to_string(),
                    config: config.clone(),
                    store: Arc::new(store),
                    root: ObjPath::from(prefix.as_str()),
                    cred_source: c.source,
                })
            }
            config::Location::Dir(path) => {
                std::fs::create_dir_all(&path).map_err(|source| Error::CreateDir {
                    remote: name.to_string(),
                    path: path.clone(),
                    source,
                })?;
                let store =
                    LocalFileSystem::new_with_prefix(&path).map_err(|source| Error::OpenDir {
                        remote: name.to_string(),
                        path: path.clone(),
                        source: Box::new(source),
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

    /// Open the remote `name` of `home`'s remotes file, or its default
    /// remote when `name` is `None`.
    pub fn named(home: &crate::Home, name: Option<&str>) -> Result<Remote> {
        let (name, config) = Remotes::load_home(home)?.get(name)?;
        Remote::open(&name, &config)
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
                source: Box::new(e),
            };
        }
        Error::Store {
            remote: self.name.clone(),
            url: self.config.url.clone(),
            op,
            key: key.to_string(),
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn errors_keep_their_cause_as_source_and_their_message() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("remotes.toml");
        std::fs::write(&file, "default = [").unwrap();
        let e = Remotes::load(&file).unwrap_err();
        assert!(matches!(e, Error::BadConfigFile { .. }), "{e:?}");
        let cause = e
            .source()
            .expect("the TOML error is the source")
            .to_string();
        assert_eq!(e.to_string(), format!("{}: {cause}", file.display()));

        // A directory remote below a file cannot be created.
        let cfg = RemoteConfig {
            url: format!("file://{}/sub", file.display()),
            endpoint: None,
            region: None,
            allow_http: false,
        };
        let e = Remote::open("nas", &cfg).unwrap_err();
        assert!(matches!(e, Error::CreateDir { .. }), "{e:?}");
        let cause = e.source().expect("the OS error is the source").to_string();
        assert_eq!(
            e.to_string(),
            format!("remote nas: cannot create {}/sub: {cause}", file.display())
        );
    }
}
