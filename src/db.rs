//! The SQLite conventions every Trainyard database follows: WAL, a busy
//! timeout so several processes share a file, foreign keys on, numbered
//! migrations counted in `PRAGMA user_version` (a newer schema is refused),
//! and files readable by their owner only (0600): a database, and above all
//! its WAL, may hold secrets in clear (a job's `--env`).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior};

/// A database could not be opened, migrated or queried.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The directory for the database could not be created.
    #[error("cannot create {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database file could not be created owner-only.
    #[error("cannot create {path} (mode 0600): {source}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Written by a newer Trainyard.
    #[error("{path}: schema version {found} is newer than this Trainyard knows ({known}); upgrade Trainyard")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: usize,
        /// The newest this build knows.
        known: usize,
    },
}

/// Map a SQLite error on `path` into a [`DbError`].
pub fn err(path: &Path) -> impl FnOnce(rusqlite::Error) -> DbError + '_ {
    move |source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Open `path` (creating its directory) with the house settings.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    private_files(path)?;
    let conn = Connection::open(path).map_err(err(path))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(err(path))?;
    // Switching a new database to WAL takes a lock that the busy handler does
    // not wait for, so several processes creating one at once retry here.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.execute_batch(
            // mmap: reads come straight from the OS page cache instead of a
            // pread and a copy per page (a year's usage report spent 14 % of
            // its CPU there); writes still go through the WAL.
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA mmap_size = 268435456;",
        ) {
            Ok(()) => return Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(err(path)(e)),
        }
    }
}

/// Mode of every database file and of its `-wal`, `-shm` and `-journal`.
pub const FILE_MODE: u32 = 0o600;

/// The side files SQLite keeps beside a database.
pub const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Make `path` exist with mode 0600 before SQLite opens it: SQLite creates
/// the `-wal` and `-shm` with the database file's mode, so they are 0600 too.
/// An existing database (or side file) that others may read, left by an
/// older Trainyard, is narrowed to 0600 with a warning.
fn private_files(path: &Path) -> Result<(), DbError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(DbError::Create {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    for suffix in std::iter::once("").chain(SIDE_FILES) {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        let p = PathBuf::from(name);
        // Never through a symlink: only plain files are narrowed.
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = m.permissions().mode() & 0o777;
        if !m.is_file() || mode & 0o077 == 0 {
            continue;
        }
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(FILE_MODE)) {
            Ok(()) => tracing::warn!(
                path = %p.display(),
                "others could read this database file; changed its mode {mode:04o} -> 0600"
            ),
            Err(e) => tracing::warn!(
                path = %p.display(),
                error = %e,
                "others can read this database file (mode {mode:04o}) and it cannot be narrowed to 0600"
            ),
        }
    }
    Ok(())
}

/// Apply the pending `migrations` in one transaction.
pub fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), DbError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err(path))?;
    let have = tx
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(err(path))? as usize;
    if have > migrations.len() {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found: have,
            known: migrations.len(),
        });
    }
    for (i, m) in migrations.iter().enumerate().skip(have) {
        tx.execute_batch(m).map_err(err(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err(path))?;
    }
    tx.commit().map_err(err(path))
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn databases_and_their_wal_are_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.db");
        let conn = open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('secret');")
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&d.path().join("x.db-wal")), 0o600);
        assert_eq!(mode(&d.path().join("x.db-shm")), 0o600);
        drop(conn);
        // One left open to others by an older version is narrowed on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _conn = open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
