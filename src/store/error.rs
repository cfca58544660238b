//! The store's error type: every variant names the path, object, dataset or
//! reference at fault, and says what to do where that is not obvious.

use std::path::{Path, PathBuf};

use super::ObjectId;

/// Result alias for store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What we were doing ("read", "create", …).
        op: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path to snapshot does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// A file or directory name is not valid UTF-8; Trainyard only records UTF-8 paths.
    #[error("{}: the name is not valid UTF-8; rename it (Trainyard records UTF-8 paths only)", .0.display())]
    NonUtf8Path(PathBuf),
    /// A FIFO, socket or device inside the snapshot.
    #[error("{path}: unsupported file type ({kind}); only files, directories and symlinks can be snapshotted")]
    UnsupportedFileType {
        /// The path at fault.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file was modified while it was being read.
    #[error("{0}: the file changed while it was being read; nothing was recorded for it. Re-run when writes to it have finished")]
    FileChanged(PathBuf),
    /// A SQLite database failed.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A database could not be opened or migrated.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The store's config file cannot be parsed.
    #[error("{path}: invalid store config: {reason}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store (or catalog) was written by a newer Trainyard.
    #[error("{path}: unsupported store format ({found}); this Trainyard reads format {}. Upgrade Trainyard", super::FORMAT_VERSION)]
    UnsupportedFormat {
        /// The file that says which format.
        path: PathBuf,
        /// What it says.
        found: String,
    },
    /// A dataset or tag name is not acceptable.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// "dataset" or "tag".
        what: &'static str,
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// `NAME@` with nothing after the `@` (it does not mean latest).
    #[error("empty ref after '@' in {0}: use NAME or NAME@REF")]
    EmptyRef(String),
    /// No dataset of this name.
    #[error("no dataset named {0:?} (see `trainyard data list`)")]
    UnknownDataset(String),
    /// The dataset has no versions yet.
    #[error("dataset {0:?} has no versions yet")]
    NoVersions(String),
    /// The reference matches no tag or version.
    #[error(
        "{dataset}@{reference}: no tag or version matches (see `trainyard data log {dataset}`)"
    )]
    UnknownRef {
        /// The dataset.
        dataset: String,
        /// The reference.
        reference: String,
    },
    /// A version id prefix matches several versions.
    #[error("{dataset}@{reference}: ambiguous, matches {candidates:?}; give more digits")]
    AmbiguousRef {
        /// The dataset.
        dataset: String,
        /// The prefix.
        reference: String,
        /// The full ids it matches.
        candidates: Vec<String>,
    },
    /// The tag exists and `--force` was not given.
    #[error(
        "tag {tag:?} of dataset {dataset:?} already points at {current}; pass --force to move it"
    )]
    TagExists {
        /// The dataset.
        dataset: String,
        /// The tag.
        tag: String,
        /// The version it points at.
        current: String,
    },
    /// No such tag.
    #[error("dataset {dataset:?} has no tag {tag:?}")]
    UnknownTag {
        /// The dataset.
        dataset: String,
        /// The tag.
        tag: String,
    },
    /// An object needed for the operation is not in the store.
    #[error("object {0} is missing from the store; run `trainyard data fsck`")]
    MissingObject(ObjectId),
    /// An object's bytes do not hash to its id.
    #[error("object {id} is corrupt ({path}): its content no longer matches its id; it was not used. Run `trainyard data fsck`")]
    CorruptObject {
        /// The object.
        id: ObjectId,
        /// Its file.
        path: PathBuf,
    },
    /// A version has no such path (`data ls NAME@REF PATH`).
    #[error("{dataset}@{} has no path {path:?}", version.short())]
    NoSuchPath {
        /// The dataset.
        dataset: String,
        /// The version.
        version: ObjectId,
        /// The path asked for.
        path: String,
    },
    /// A manifest cannot be decoded or is unsafe.
    #[error("manifest {id} is invalid: {reason}")]
    BadManifest {
        /// The manifest's id.
        id: ObjectId,
        /// What is wrong.
        reason: String,
    },
    /// A checkout would write outside its directory or through a symlink.
    #[error("refusing to write {path:?}: {reason}")]
    UnsafePath {
        /// The manifest path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A checkout would overwrite or delete files the version does not own.
    #[error("checkout into {dir} would overwrite or delete {} file(s) it does not own, e.g. {}; move them away or pass --force", paths.len(), paths.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    CheckoutConflict {
        /// The checkout directory.
        dir: PathBuf,
        /// The paths in conflict.
        paths: Vec<String>,
    },
    /// A link mode that this filesystem cannot do.
    #[error("cannot {mode} {from} to {to}: {source}")]
    Link {
        /// "reflink" or "hardlink".
        mode: &'static str,
        /// The object.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn sqlite(path: &Path) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Sqlite {
            path: path.to_path_buf(),
            source,
        }
    }
}
