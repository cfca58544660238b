//! Where Trainyard keeps its state: the Trainyard home directory.
//!
//! Precedence: an explicit path (the CLI's `--home`) > `TRAINYARD_HOME` > the
//! XDG data directory (`~/.local/share/trainyard` on Linux). This module only
//! resolves and creates paths, names the well-known paths below the home
//! (callers ask [`Home`] for them rather than join names onto
//! [`Home::root`]), and keeps the home private to its owner (0700; the
//! well-known files below it 0600); it knows nothing else about what is
//! stored there.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the home directory.
pub const HOME_ENV: &str = "TRAINYARD_HOME";

/// The Trainyard home directory and the well-known paths below it.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

/// Mode of the home directory: its databases, logs and token are the
/// owner's alone.
pub const HOME_MODE: u32 = 0o700;

/// Mode of the well-known files at the top of the home.
pub const FILE_MODE: u32 = 0o600;

/// The daemon's URL and pid while it runs (`daemon.json`).
pub const DAEMON_FILE: &str = "daemon.json";

/// The daemon's bearer token (`daemon.token`).
pub const TOKEN_FILE: &str = "daemon.token";

/// The file a running daemon holds an exclusive lock on (`daemon.lock`).
pub const LOCK_FILE: &str = "daemon.lock";

/// Whether a top-level file of the home is one kept owner-only: databases
/// and their SQLite side files, the daemon's token and `daemon.json`.
fn is_private_file(name: &str) -> bool {
    name == TOKEN_FILE
        || name == DAEMON_FILE
        || name.ends_with(".db")
        || crate::db::SIDE_FILES
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|b| b.ends_with(".db")))
}

/// The home directory could not be determined or created.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// No `--home`, no `TRAINYARD_HOME` and no XDG data directory.
    #[error("cannot find a home for Trainyard's data: set TRAINYARD_HOME or pass --home")]
    NoHome,
    /// Creating the directory failed.
    #[error("cannot create the Trainyard home {path}: {source}")]
    Create {
        /// The directory we tried to create.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Home {
    /// Resolve the home: `explicit`, else `TRAINYARD_HOME`, else the XDG data dir.
    pub fn resolve(explicit: Option<&Path>) -> Result<Home, HomeError> {
        if let Some(p) = explicit {
            return Ok(Home::at(p));
        }
        if let Some(p) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Home::at(Path::new(&p)));
        }
        let dirs = directories::ProjectDirs::from("", "", "trainyard").ok_or(HomeError::NoHome)?;
        Ok(Home::at(dirs.data_dir()))
    }

    /// A home at exactly this path (made absolute against the current directory).
    pub fn at(path: &Path) -> Home {
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        };
        Home { root }
    }

    /// Create the home directory (mode 0700) if it does not exist. An
    /// existing home that its group or others may enter is narrowed to 0700,
    /// and its databases, `daemon.token` and `daemon.json` to 0600, with one
    /// warning saying what changed.
    pub fn ensure(&self) -> Result<(), HomeError> {
        let create = |source| HomeError::Create {
            path: self.root.clone(),
            source,
        };
        if let Some(parent) = self.root.parent() {
            fs::create_dir_all(parent).map_err(create)?;
        }
        match fs::DirBuilder::new().mode(HOME_MODE).create(&self.root) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(create(e)),
        }
        self.tighten();
        Ok(())
    }

    /// Narrow an existing home that others may enter (see [`Home::ensure`]).
    /// Never fails: what cannot be changed is named in the warning.
    fn tighten(&self) {
        let Ok(meta) = fs::metadata(&self.root) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if !meta.is_dir() || mode & 0o077 == 0 {
            return;
        }
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        let mut chmod = |p: &Path, label: String, from: u32, to: u32| match fs::set_permissions(
            p,
            fs::Permissions::from_mode(to),
        ) {
            Ok(()) => changed.push(format!("{label} {from:04o} -> {to:04o}")),
            Err(e) => failed.push(format!("{label}: {e}")),
        };
        chmod(&self.root, "the home".into(), mode, HOME_MODE);
        if let Ok(rd) = fs::read_dir(&self.root) {
            let mut files: Vec<(String, u32)> = rd
                .flatten()
                .filter_map(|de| {
                    let name = de.file_name().into_string().ok()?;
                    // symlink_metadata: never chmod through a link.
                    let m = de.path().symlink_metadata().ok()?;
                    let mode = m.permissions().mode() & 0o777;
                    (m.is_file() && is_private_file(&name) && mode & 0o077 != 0)
                        .then_some((name, mode))
                })
                .collect();
            files.sort();
            for (name, from) in files {
                chmod(&self.root.join(&name), name, from, FILE_MODE);
            }
        }
        if !changed.is_empty() {
            tracing::warn!(
                home = %self.root.display(),
                "the Trainyard home was open to other users; narrowed {}",
                changed.join(", ")
            );
        }
        if !failed.is_empty() {
            tracing::warn!(
                home = %self.root.display(),
                "the Trainyard home is open to other users and could not be narrowed: {}; run chmod 700 on it",
                failed.join(", ")
            );
        }
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dataset store's directory (objects, packs, the stat cache; its
    /// layout is the store's, `docs/store-format.md`).
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The catalog database (datasets, versions, tags, checkouts).
    pub fn catalog_path(&self) -> PathBuf {
        self.root.join("catalog.db")
    }

    /// The index of wandb runs found on this machine (a cache).
    pub fn runs_path(&self) -> PathBuf {
        self.root.join("runs.db")
    }

    /// The ledger of what was synced to which wandb server.
    pub fn sync_path(&self) -> PathBuf {
        self.root.join("sync.db")
    }

    /// The lab's settings (`config.toml`: usage, teams), read by the daemon.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The GPU telemetry database (the daemon's alone).
    pub fn telemetry_path(&self) -> PathBuf {
        self.root.join("telemetry.db")
    }

    /// The watch rules, their log and record (`watch.db`, `docs/watch.md`).
    pub fn watch_path(&self) -> PathBuf {
        self.root.join("watch.db")
    }

    /// The job queue database (the daemon's alone).
    pub fn queue_path(&self) -> PathBuf {
        self.root.join("queue.db")
    }

    /// The daemon's copies of attempt logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The dataset remotes configuration (`remotes.toml`; never credentials).
    pub fn remotes_path(&self) -> PathBuf {
        self.root.join("remotes.toml")
    }

    /// The cache of what is known of remote `name` (its pack indexes).
    pub fn remote_cache_dir(&self, name: &str) -> PathBuf {
        self.root.join("remotes").join(name)
    }

    /// Clones of git data registries.
    pub fn registry_cache_dir(&self) -> PathBuf {
        self.root.join("git-cache")
    }

    /// The daemon's token file.
    pub fn token_path(&self) -> PathBuf {
        self.root.join(TOKEN_FILE)
    }

    /// Where the running daemon writes its URL and pid.
    pub fn daemon_file_path(&self) -> PathBuf {
        self.root.join(DAEMON_FILE)
    }

    /// The lock a running daemon holds: one daemon per home.
    pub fn daemon_lock_path(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// Agent `name`'s own directory: its identity, lock, attempt records,
    /// work directories and local logs.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.root.join("agent").join(name)
    }

    /// The agents' cache of job source repositories (one bare repository
    /// per URL), shared by the agents of this home.
    pub fn agent_git_cache(&self) -> PathBuf {
        self.root.join("agent").join("git")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_home_is_0700() {
        let d = tempfile::tempdir().unwrap();
        let h = Home::at(&d.path().join("a/b/home"));
        h.ensure().unwrap();
        assert_eq!(mode(h.root()), 0o700);
        h.ensure().unwrap();
        assert_eq!(mode(h.root()), 0o700);
    }

    #[test]
    fn an_open_home_and_its_private_files_are_narrowed_others_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let h = Home::at(&d.path().join("home"));
        fs::create_dir(h.root()).unwrap();
        fs::set_permissions(h.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let private = [
            "queue.db",
            "queue.db-wal",
            "queue.db-shm",
            "catalog.db",
            "daemon.json",
            "daemon.token",
        ];
        for f in private.iter().chain(&["remotes.toml", "notes.dbx"]) {
            fs::write(h.root().join(f), b"x").unwrap();
            fs::set_permissions(h.root().join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        h.ensure().unwrap();
        assert_eq!(mode(h.root()), 0o700);
        for f in private {
            assert_eq!(mode(&h.root().join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&h.root().join("remotes.toml")), 0o644);
        assert_eq!(mode(&h.root().join("notes.dbx")), 0o644);
    }
}
