//! The stat cache: (root, relative path) → (device, inode, size, mtime, ctime)
//! → object id, in its own SQLite file (`store/statcache.db`, WAL).
//!
//! It is only a hint: an entry is trusted when every stat field matches and
//! the file's mtime is at least [`RACY_NS`] older than the moment it was
//! hashed (a file modified within the filesystem's timestamp granularity of
//! being hashed could otherwise look unchanged — git's "racy clean" problem).
//! Deleting the file loses nothing but time: it is rebuilt by rehashing.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use super::catalog::{now_ns, open_db};
use super::objects::FileStamp;
use super::walk::WalkEntry;
use super::{manifest::Kind, Error, ObjectId, Result};

/// How much older than its hashing time a file's mtime must be to be trusted.
pub(crate) const RACY_NS: i64 = 2_000_000_000;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE stat (
        root TEXT NOT NULL,
        rel TEXT NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        oid BLOB NOT NULL,
        hashed_ns INTEGER NOT NULL,
        PRIMARY KEY (root, rel)
    ) WITHOUT ROWID;",
    // 2: the store's gc generation at which the object was known present (-1: not known)
    "ALTER TABLE stat ADD COLUMN gen INTEGER NOT NULL DEFAULT -1;",
];

/// The stat cache database.
#[derive(Debug)]
pub(crate) struct StatCache {
    path: PathBuf,
}

/// What a lookup found.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// Files whose id came from the cache.
    pub hits: u64,
    /// Cached paths that no longer exist (to forget).
    pub gone: Vec<String>,
}

impl StatCache {
    pub fn open(path: &Path) -> Result<StatCache> {
        let mut conn = open_db(path)?;
        crate::db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(StatCache {
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> Result<Connection> {
        open_db(&self.path)
    }

    /// Fill in `id` for the files in `entries` (sorted by `rel`) whose cached
    /// stat still matches, by one ordered scan merged with the walk; set
    /// `present` where the object was known present at gc generation `gen`.
    pub fn lookup(&self, root: &str, entries: &mut [WalkEntry], gen: i64) -> Result<Lookup> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT rel, dev, ino, size, mtime_ns, ctime_ns, oid, hashed_ns, gen
                 FROM stat WHERE root = ?1 ORDER BY rel",
            )
            .map_err(Error::sqlite(&self.path))?;
        let mut rows = st.query([root]).map_err(Error::sqlite(&self.path))?;
        let mut out = Lookup::default();
        let mut i = 0;
        while let Some(r) = rows.next().map_err(Error::sqlite(&self.path))? {
            let rel = r
                .get_ref(0)
                .ok()
                .and_then(|v| v.as_str().ok())
                .unwrap_or("");
            while i < entries.len() && entries[i].rel.as_bytes() < rel.as_bytes() {
                i += 1;
            }
            if i >= entries.len() || entries[i].rel != rel {
                out.gone.push(rel.to_string());
                continue;
            }
            let e = &mut entries[i];
            if e.kind != Kind::File {
                out.gone.push(rel.to_string());
                continue;
            }
            let get = |k| r.get::<_, i64>(k).unwrap_or(-1);
            let cached = FileStamp {
                dev: get(1) as u64,
                ino: get(2) as u64,
                size: get(3) as u64,
                mtime_ns: get(4),
                ctime_ns: get(5),
            };
            let hashed_ns = get(7);
            let oid: Vec<u8> = r.get(6).unwrap_or_default();
            if cached == e.stamp
                && e.stamp.mtime_ns.saturating_add(RACY_NS) <= hashed_ns
                && oid.len() == 32
            {
                let mut a = [0u8; 32];
                a.copy_from_slice(&oid);
                e.id = Some(ObjectId(a));
                e.present = get(8) == gen;
                out.hits += 1;
            }
        }
        Ok(out)
    }

    /// Record freshly hashed files and forget vanished ones, in one
    /// transaction. `gen`: the gc generation at which the objects of the
    /// fresh entries are known present (`None` if they were only hashed).
    pub fn update(
        &self,
        root: &str,
        entries: &[WalkEntry],
        gone: &[String],
        gen: Option<i64>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let err = Error::sqlite(&self.path);
        let hashed_ns = now_ns();
        let tx = conn.transaction().map_err(err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO stat (root, rel, dev, ino, size, mtime_ns, ctime_ns, oid, hashed_ns, gen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(Error::sqlite(&self.path))?;
            for e in entries.iter().filter(|e| e.fresh && e.kind == Kind::File) {
                let Some(id) = e.id else { continue };
                put.execute(params![
                    root,
                    e.rel,
                    e.stamp.dev as i64,
                    e.stamp.ino as i64,
                    e.stamp.size as i64,
                    e.stamp.mtime_ns,
                    e.stamp.ctime_ns,
                    &id.0[..],
                    hashed_ns,
                    gen.unwrap_or(-1)
                ])
                .map_err(Error::sqlite(&self.path))?;
            }
            let mut del = tx
                .prepare_cached("DELETE FROM stat WHERE root = ?1 AND rel = ?2")
                .map_err(Error::sqlite(&self.path))?;
            for rel in gone {
                del.execute(params![root, rel])
                    .map_err(Error::sqlite(&self.path))?;
            }
        }
        tx.commit().map_err(Error::sqlite(&self.path))
    }
}
