//! The SQLite conventions every Trainyard database follows: WAL, a busy
//! timeout so several processes share a file, foreign keys on, and numbered
//! migrations counted in `PRAGMA user_version` (a newer schema is refused).

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
    let conn = Connection::open(path).map_err(err(path))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(err(path))?;
    // Switching a new database to WAL takes a lock that the busy handler does
    // not wait for, so several processes creating one at once retry here.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
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
