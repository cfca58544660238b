//! Where the desktop app keeps a lab daemon's token: the OS keyring (the
//! freedesktop Secret Service: GNOME Keyring, KWallet) where one answers,
//! else a 0600 file of its own in the app's config directory — never the
//! settings file. One entry per lab address, so a token is only ever sent
//! to the address it was given for. Blocking (D-Bus, files): call it off
//! the async threads.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyring_core::{CredentialStore, Entry};
use trainyard::server::Secret;

/// The keyring entries' service name (the user name is the lab address).
pub const SERVICE: &str = "dev.trainyard.desktop";

/// `TRAINYARD_DESKTOP_TOKEN_STORE`: `keyring` or `file` forces one store
/// (`keyring` fails when none answers); unset, the keyring when it answers.
pub const STORE_ENV: &str = "TRAINYARD_DESKTOP_TOKEN_STORE";

/// The file store's name in the config directory.
pub const FILE_NAME: &str = "lab-token";

/// A token could not be kept, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The keyring refused.
    #[error("the OS keyring (Secret Service) failed on the token of {url}: {source}")]
    Keyring {
        /// The lab address.
        url: String,
        /// What the keyring said.
        source: keyring_core::Error,
    },
    /// The token file could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// `TRAINYARD_DESKTOP_TOKEN_STORE=keyring` but no keyring answers.
    #[error("{STORE_ENV}=keyring, but no Secret Service answers on the session bus: {0}")]
    NoKeyring(keyring_core::Error),
    /// An unknown `TRAINYARD_DESKTOP_TOKEN_STORE`.
    #[error("{STORE_ENV}={0:?}: expected keyring or file")]
    BadChoice(String),
}

/// The store in use.
pub enum TokenStore {
    /// The Secret Service.
    Keyring(Arc<CredentialStore>),
    /// `lab-token` (0600) in this directory: the address on the first line,
    /// the token on the second.
    File(PathBuf),
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenStore::Keyring(_) => f.write_str("TokenStore::Keyring"),
            TokenStore::File(p) => write!(f, "TokenStore::File({})", p.display()),
        }
    }
}

impl TokenStore {
    /// The keyring if it answers (or as `TRAINYARD_DESKTOP_TOKEN_STORE`
    /// says), else the file in `config_dir`.
    pub fn open(config_dir: &Path) -> Result<TokenStore, TokenError> {
        let file = TokenStore::File(config_dir.join(FILE_NAME));
        match std::env::var(STORE_ENV).ok().as_deref() {
            Some("file") => Ok(file),
            Some("keyring") => keyring().map_err(TokenError::NoKeyring),
            Some("") | None => match keyring() {
                Ok(k) => Ok(k),
                Err(e) => {
                    tracing::info!(error = %e, "no usable OS keyring: lab tokens go to a 0600 file");
                    Ok(file)
                }
            },
            Some(other) => Err(TokenError::BadChoice(other.to_string())),
        }
    }

    /// `keyring` or `file`, for the UI.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenStore::Keyring(_) => "keyring",
            TokenStore::File(_) => "file",
        }
    }

    /// Keep `token` for the lab at `url` (replacing one kept before).
    pub fn save(&self, url: &str, token: &Secret) -> Result<(), TokenError> {
        match self {
            TokenStore::Keyring(s) => {
                entry(s, url)?
                    .set_password(token.expose())
                    .map_err(|source| TokenError::Keyring {
                        url: url.to_string(),
                        source,
                    })
            }
            TokenStore::File(path) => write_private(path, &format!("{url}\n{}\n", token.expose()))
                .map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// The token kept for `url`, if any.
    pub fn load(&self, url: &str) -> Result<Option<Secret>, TokenError> {
        match self {
            TokenStore::Keyring(s) => match entry(s, url)?.get_password() {
                Ok(t) => Ok(Some(Secret::new(t))),
                Err(keyring_core::Error::NoEntry) => Ok(None),
                Err(source) => Err(TokenError::Keyring {
                    url: url.to_string(),
                    source,
                }),
            },
            TokenStore::File(path) => match fs::read_to_string(path) {
                Ok(text) => {
                    let mut lines = text.lines();
                    match (lines.next(), lines.next()) {
                        (Some(u), Some(t)) if u == url && !t.is_empty() => {
                            Ok(Some(Secret::new(t.to_string())))
                        }
                        _ => Ok(None),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TokenError::File {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// Forget the token of `url` (nothing kept is not an error).
    pub fn forget(&self, url: &str) -> Result<(), TokenError> {
        match self {
            TokenStore::Keyring(s) => match entry(s, url)?.delete_credential() {
                Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
                Err(source) => Err(TokenError::Keyring {
                    url: url.to_string(),
                    source,
                }),
            },
            TokenStore::File(path) => {
                // Only the token of this address: another one's stays.
                if self.load(url)?.is_none() {
                    return Ok(());
                }
                match fs::remove_file(path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(TokenError::File {
                        path: path.clone(),
                        source,
                    }),
                }
            }
        }
    }
}

/// The Secret Service store, if one answers a lookup.
fn keyring() -> Result<TokenStore, keyring_core::Error> {
    let store: Arc<CredentialStore> = zbus_secret_service_keyring_store::Store::new()?;
    // Connecting succeeds whenever a session bus does; a lookup tells
    // whether a Secret Service is behind it.
    match Entry::new_in_store(&store, SERVICE, "probe")?.get_password() {
        Ok(_) | Err(keyring_core::Error::NoEntry) => Ok(TokenStore::Keyring(store)),
        Err(e) => Err(e),
    }
}

fn entry(store: &Arc<CredentialStore>, url: &str) -> Result<Entry, TokenError> {
    Entry::new_in_store(store, SERVICE, url).map_err(|source| TokenError::Keyring {
        url: url.to_string(),
        source,
    })
}

/// Write `text` to `path` atomically, readable by its owner only from the
/// first byte (a temp file created 0600, then renamed over).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_store_keeps_one_token_0600_for_its_address_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::File(dir.path().join("cfg").join(FILE_NAME));
        let url = "http://lab:7171";
        assert!(store.load(url).unwrap().is_none());
        store.save(url, &Secret::new("s3cret".to_string())).unwrap();
        let path = dir.path().join("cfg").join(FILE_NAME);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load(url).unwrap().unwrap().expose(), "s3cret");
        // Never sent to another address.
        assert!(store.load("http://elsewhere:7171").unwrap().is_none());
        store.forget("http://elsewhere:7171").unwrap();
        assert!(path.exists());
        // A new token replaces the old.
        store.save(url, &Secret::new("second".to_string())).unwrap();
        assert_eq!(store.load(url).unwrap().unwrap().expose(), "second");
        store.forget(url).unwrap();
        assert!(!path.exists());
        assert!(store.load(url).unwrap().is_none());
        store.forget(url).unwrap();
    }

    /// The keyring path, where a Secret Service answers on this session bus
    /// (the GUI test starts gnome-keyring under dbus-run-session); says so
    /// and checks nothing where none does.
    #[test]
    fn the_keyring_store_round_trips_where_a_secret_service_answers() {
        let store = match keyring() {
            Ok(s) => s,
            Err(e) => {
                println!("no Secret Service on this session bus ({e}); the keyring path is tested by the GUI test under gnome-keyring");
                return;
            }
        };
        let url = format!("http://unit-test-{}:7171", std::process::id());
        store.save(&url, &Secret::new("k3y".to_string())).unwrap();
        assert_eq!(store.load(&url).unwrap().unwrap().expose(), "k3y");
        store.forget(&url).unwrap();
        assert!(store.load(&url).unwrap().is_none());
    }
}
