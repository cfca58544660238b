//! Where Trainyard keeps its state: the Trainyard home directory.
//!
//! Precedence: an explicit path (the CLI's `--home`) > `TRAINYARD_HOME` > the
//! XDG data directory (`~/.local/share/trainyard` on Linux). This module only
//! resolves and creates paths; it knows nothing about what is stored there.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the home directory.
pub const HOME_ENV: &str = "TRAINYARD_HOME";

/// The Trainyard home directory and the well-known paths below it.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
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

    /// Create the home directory if it does not exist.
    pub fn ensure(&self) -> Result<(), HomeError> {
        std::fs::create_dir_all(&self.root).map_err(|source| HomeError::Create {
            path: self.root.clone(),
            source,
        })
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dataset store's directory.
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
}
