//! The catalog: datasets, versions, tags and checkouts in SQLite (WAL).
//!
//! One transaction per state change. Rows only ever refer to manifests that
//! are already durable in the object directory (the snapshot code flushes
//! objects before it calls [`Catalog::add_version`]).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::db;

use std::sync::Mutex;

use super::pack::{Location, PackRecord};
use super::{Error, ObjectId, Result};

/// Schema migrations, applied in order; `PRAGMA user_version` counts them.
const MIGRATIONS: &[&str] = &[
    // 1: datasets, versions, tags, checkouts
    "CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE versions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        manifest BLOB NOT NULL CHECK (length(manifest) = 32),
        parent BLOB CHECK (parent IS NULL OR length(parent) = 32),
        message TEXT NOT NULL,
        author TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        new_bytes INTEGER NOT NULL,
        source TEXT
    );
    CREATE INDEX versions_by_dataset ON versions(dataset_id, seq);
    CREATE INDEX versions_by_manifest ON versions(manifest);
    CREATE TABLE tags (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        name TEXT NOT NULL,
        manifest BLOB NOT NULL CHECK (length(manifest) = 32),
        created_ns INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, name)
    );
    CREATE TABLE checkouts (
        dir TEXT PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        manifest BLOB NOT NULL CHECK (length(manifest) = 32),
        created_ns INTEGER NOT NULL
    );",
    // 2: pack files of small objects and where each packed object is
    "CREATE TABLE packs (
        id BLOB PRIMARY KEY CHECK (length(id) = 32),
        size INTEGER NOT NULL,
        objects INTEGER NOT NULL,
        created_ns INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE packed (
        id BLOB PRIMARY KEY CHECK (length(id) = 32),
        pack BLOB NOT NULL REFERENCES packs(id),
        offset INTEGER NOT NULL,
        len INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX packed_by_pack ON packed(pack);",
    // 3: counters; gc_generation changes whenever gc may delete objects
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('gc_generation', 0);",
];

/// Open a store database (see [`crate::db::open`]).
pub(crate) fn open_db(path: &Path) -> Result<Connection> {
    Ok(db::open(path)?)
}

pub(crate) use db::now_ns;

/// A dataset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetInfo {
    #[serde(skip)]
    pub(crate) id: i64,
    /// Its name.
    pub name: String,
    /// Number of versions.
    pub versions: u64,
    /// The newest version's id.
    pub latest: Option<ObjectId>,
    /// Files in the newest version.
    pub files: u64,
    /// Bytes in the newest version.
    pub bytes: u64,
}

/// One version of a dataset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    /// The dataset.
    pub dataset: String,
    /// The version id (its manifest's object id).
    pub id: ObjectId,
    /// The previous version of the dataset, if any.
    pub parent: Option<ObjectId>,
    /// The message given at `data add`.
    pub message: String,
    /// Who added it.
    pub author: String,
    /// When, in nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// Number of files.
    pub files: u64,
    /// Total file bytes.
    pub bytes: u64,
    /// Bytes that were new to the store when it was added.
    pub new_bytes: u64,
    /// Where it was snapshotted from.
    pub source: Option<String>,
    /// Tags pointing at it.
    pub tags: Vec<String>,
}

/// A tag.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagInfo {
    /// Tag name.
    pub name: String,
    /// The version it names.
    pub version: ObjectId,
    /// When it was set.
    pub created_ns: i64,
}

/// What `add_version` records.
pub(crate) struct NewVersion<'a> {
    pub dataset: &'a str,
    pub manifest: ObjectId,
    pub message: &'a str,
    pub author: &'a str,
    pub files: u64,
    pub bytes: u64,
    pub new_bytes: u64,
    pub source: Option<&'a str>,
    pub tag: Option<&'a str>,
    /// Packs written for this version, indexed in the same transaction.
    pub packs: &'a [PackRecord],
    /// Creation time when it is not now (a version received from elsewhere).
    pub created_ns: Option<i64>,
}

/// Insert packs and their objects' locations (objects already packed
/// elsewhere keep their first location).
fn insert_packs(tx: &rusqlite::Transaction<'_>, packs: &[PackRecord]) -> rusqlite::Result<()> {
    let now = now_ns();
    let mut p = tx.prepare_cached(
        "INSERT OR IGNORE INTO packs (id, size, objects, created_ns) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut o = tx.prepare_cached(
        "INSERT OR IGNORE INTO packed (id, pack, offset, len) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for pack in packs {
        p.execute(params![
            &pack.id.0[..],
            pack.size as i64,
            pack.entries.len() as i64,
            now
        ])?;
        for (id, off, len) in &pack.entries {
            o.execute(params![&id.0[..], &pack.id.0[..], *off as i64, *len as i64])?;
        }
    }
    Ok(())
}

/// Looks up where packed objects are; one connection shared by worker threads.
pub(crate) struct PackIndex {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl PackIndex {
    /// Where each of `ids` is packed (absent ids are left out).
    pub fn lookup_many(
        &self,
        ids: &[ObjectId],
    ) -> Result<std::collections::HashMap<ObjectId, Location>> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let conn = self.conn.lock().map_err(|_| {
            Error::io(
                "use",
                &self.path,
                std::io::Error::other("a thread panicked while holding the pack index"),
            )
        })?;
        for batch in ids.chunks(500) {
            let sql = format!(
                "SELECT id, pack, offset, len FROM packed WHERE id IN ({})",
                vec!["?"; batch.len()].join(",")
            );
            let mut st = conn
                .prepare_cached(&sql)
                .map_err(Error::sqlite(&self.path))?;
            let params = rusqlite::params_from_iter(batch.iter().map(|id| id.0.to_vec()));
            let mut rows = st.query(params).map_err(Error::sqlite(&self.path))?;
            while let Some(r) = rows.next().map_err(Error::sqlite(&self.path))? {
                let get = |k| r.get::<_, i64>(k).map_err(Error::sqlite(&self.path));
                out.insert(
                    id_of(r.get(0).map_err(Error::sqlite(&self.path))?),
                    Location {
                        pack: id_of(r.get(1).map_err(Error::sqlite(&self.path))?),
                        offset: get(2)? as u64,
                        len: get(3)? as u64,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Where `id` is packed, if it is.
    pub fn lookup(&self, id: &ObjectId) -> Result<Option<Location>> {
        Ok(self.lookup_many(std::slice::from_ref(id))?.remove(id))
    }
}

/// The catalog database.
#[derive(Debug)]
pub(crate) struct Catalog {
    path: PathBuf,
}

fn id_of(b: Vec<u8>) -> ObjectId {
    let mut a = [0u8; 32];
    if b.len() == 32 {
        a.copy_from_slice(&b);
    }
    ObjectId(a)
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let mut conn = open_db(path)?;
        db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Catalog {
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> Result<Connection> {
        open_db(&self.path)
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        Error::sqlite(&self.path)
    }

    pub fn datasets(&self) -> Result<Vec<DatasetInfo>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare(
                "SELECT d.id, d.name,
                        (SELECT count(*) FROM versions v WHERE v.dataset_id = d.id),
                        v.manifest, v.files, v.bytes
                 FROM datasets d
                 LEFT JOIN versions v ON v.seq = (SELECT max(seq) FROM versions WHERE dataset_id = d.id)
                 ORDER BY d.name",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok(DatasetInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    versions: r.get::<_, i64>(2)? as u64,
                    latest: r.get::<_, Option<Vec<u8>>>(3)?.map(id_of),
                    files: r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u64,
                    bytes: r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    pub fn dataset(&self, name: &str) -> Result<DatasetInfo> {
        self.datasets()?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::UnknownDataset(name.to_string()))
    }

    /// Like [`Catalog::dataset`] but `None` when absent.
    pub fn find_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        match self.dataset(name) {
            Ok(d) => Ok(Some(d)),
            Err(Error::UnknownDataset(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The datasets that have versions snapshotted from `source` (a
    /// canonical path), the one with the newest such version first.
    pub fn datasets_from_source(&self, source: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare(
                "SELECT d.name FROM versions v JOIN datasets d ON d.id = v.dataset_id
                 WHERE v.source = ?1 GROUP BY d.id ORDER BY max(v.seq) DESC",
            )
            .map_err(self.err())?;
        let rows = st.query_map([source], |r| r.get(0)).map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    pub fn versions(&self, dataset_id: i64) -> Result<Vec<VersionInfo>> {
        let conn = self.conn()?;
        let mut tags = conn
            .prepare("SELECT manifest, name FROM tags WHERE dataset_id = ?1 ORDER BY name")
            .map_err(self.err())?;
        let tag_rows: Vec<(ObjectId, String)> = tags
            .query_map([dataset_id], |r| Ok((id_of(r.get(0)?), r.get(1)?)))
            .map_err(self.err())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err())?;
        let mut st = conn
            .prepare(
                "SELECT d.name, v.manifest, v.parent, v.message, v.author, v.created_ns,
                        v.files, v.bytes, v.new_bytes, v.source
                 FROM versions v JOIN datasets d ON d.id = v.dataset_id
                 WHERE v.dataset_id = ?1 ORDER BY v.seq DESC",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([dataset_id], |r| {
                let id = id_of(r.get(1)?);
                Ok(VersionInfo {
                    dataset: r.get(0)?,
                    id,
                    parent: r.get::<_, Option<Vec<u8>>>(2)?.map(id_of),
                    message: r.get(3)?,
                    author: r.get(4)?,
                    created_ns: r.get(5)?,
                    files: r.get::<_, i64>(6)? as u64,
                    bytes: r.get::<_, i64>(7)? as u64,
                    new_bytes: r.get::<_, i64>(8)? as u64,
                    source: r.get(9)?,
                    tags: Vec::new(),
                })
            })
            .map_err(self.err())?;
        let mut out: Vec<VersionInfo> =
            rows.collect::<rusqlite::Result<_>>().map_err(self.err())?;
        // A tag names a version id; show it on the newest row with that id.
        for (id, name) in tag_rows {
            if let Some(v) = out.iter_mut().find(|v| v.id == id) {
                v.tags.push(name);
            }
        }
        Ok(out)
    }

    /// Resolve a reference within a dataset.
    pub fn resolve(&self, ds: &DatasetInfo, reference: Option<&str>) -> Result<VersionInfo> {
        let versions = self.versions(ds.id)?;
        let reference = reference.unwrap_or("latest");
        if versions.is_empty() {
            return Err(Error::NoVersions(ds.name.clone()));
        }
        if reference == "latest" {
            return Ok(versions.into_iter().next().expect("not empty"));
        }
        // A full id names that version, whatever the tags say.
        if let Ok(id) = reference.to_ascii_lowercase().parse::<ObjectId>() {
            if let Some(v) = versions.iter().find(|v| v.id == id) {
                return Ok(v.clone());
            }
        }
        if let Some(v) = versions
            .iter()
            .find(|v| v.tags.iter().any(|t| t == reference))
        {
            return Ok(v.clone());
        }
        let lower = reference.to_ascii_lowercase();
        if lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches: Vec<&VersionInfo> = Vec::new();
            for v in &versions {
                if v.id.to_hex().starts_with(&lower) && !matches.iter().any(|m| m.id == v.id) {
                    matches.push(v);
                }
            }
            match matches.len() {
                1 => return Ok(matches[0].clone()),
                0 => {}
                _ => {
                    return Err(Error::AmbiguousRef {
                        dataset: ds.name.clone(),
                        reference: reference.to_string(),
                        candidates: matches.iter().map(|v| v.id.to_hex()).collect(),
                    })
                }
            }
        }
        Err(Error::UnknownRef {
            dataset: ds.name.clone(),
            reference: reference.to_string(),
        })
    }

    /// Record a version (and optionally a tag) in one transaction. Returns
    /// `false` when the manifest equals the dataset's latest version, in which
    /// case no version row is added (the tag, if any, is still set).
    pub fn add_version(&self, v: &NewVersion<'_>) -> Result<(bool, Option<ObjectId>)> {
        let mut conn = self.conn()?;
        if !v.packs.is_empty() {
            // Room for the index pages a large pack insert touches.
            conn.execute_batch("PRAGMA cache_size = -32768")
                .map_err(self.err())?;
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let now = now_ns();
        tx.execute(
            "INSERT OR IGNORE INTO datasets (name, created_ns) VALUES (?1, ?2)",
            params![v.dataset, now],
        )
        .map_err(self.err())?;
        let ds_id: i64 = tx
            .query_row(
                "SELECT id FROM datasets WHERE name = ?1",
                [v.dataset],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        let parent: Option<ObjectId> = tx
            .query_row(
                "SELECT manifest FROM versions WHERE dataset_id = ?1 ORDER BY seq DESC LIMIT 1",
                [ds_id],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map_err(self.err())?
            .map(id_of);
        let created = parent != Some(v.manifest);
        if created {
            tx.execute(
                "INSERT INTO versions (dataset_id, manifest, parent, message, author, created_ns,
                                       files, bytes, new_bytes, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    ds_id,
                    &v.manifest.0[..],
                    parent.as_ref().map(|p| p.0.to_vec()),
                    v.message,
                    v.author,
                    v.created_ns.unwrap_or(now),
                    v.files as i64,
                    v.bytes as i64,
                    v.new_bytes as i64,
                    v.source,
                ],
            )
            .map_err(self.err())?;
        }
        insert_packs(&tx, v.packs).map_err(self.err())?;
        if let Some(tag) = v.tag {
            tx.execute(
                "INSERT INTO tags (dataset_id, name, manifest, created_ns) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (dataset_id, name) DO UPDATE SET manifest = excluded.manifest,
                                                              created_ns = excluded.created_ns",
                params![ds_id, tag, &v.manifest.0[..], now],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok((created, parent))
    }

    /// The gc generation: objects known present at this generation are still
    /// present while it is unchanged (only gc deletes objects).
    pub fn gc_generation(&self) -> Result<i64> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'gc_generation'",
            [],
            |r| r.get(0),
        )
        .map_err(self.err())
    }

    /// Start a new gc generation (before gc deletes anything).
    pub fn bump_gc_generation(&self) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'gc_generation'",
            [],
        )
        .map_err(self.err())?;
        Ok(())
    }

    /// A handle for pack lookups from many threads.
    pub fn pack_index(&self) -> Result<PackIndex> {
        Ok(PackIndex {
            path: self.path.clone(),
            conn: Mutex::new(self.conn()?),
        })
    }

    /// Every pack: (id, size).
    pub fn packs(&self) -> Result<Vec<(ObjectId, u64)>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare("SELECT id, size FROM packs ORDER BY id")
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| Ok((id_of(r.get(0)?), r.get::<_, i64>(1)? as u64)))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// The indexed objects of one pack: (id, offset, length), by offset.
    pub fn pack_entries(&self, pack: &ObjectId) -> Result<Vec<(ObjectId, u64, u64)>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare("SELECT id, offset, len FROM packed WHERE pack = ?1 ORDER BY offset")
            .map_err(self.err())?;
        let rows = st
            .query_map([&pack.0[..]], |r| {
                Ok((
                    id_of(r.get(0)?),
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Swap packs in one transaction (gc): index `added`, then drop `removed`
    /// and every location still pointing into them.
    pub fn replace_packs(&self, removed: &[ObjectId], added: &[PackRecord]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        for p in removed {
            tx.execute("DELETE FROM packed WHERE pack = ?1", [&p.0[..]])
                .map_err(self.err())?;
            tx.execute("DELETE FROM packs WHERE id = ?1", [&p.0[..]])
                .map_err(self.err())?;
        }
        insert_packs(&tx, added).map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    pub fn set_tag(&self, ds: &DatasetInfo, tag: &str, id: &ObjectId, force: bool) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let current: Option<Vec<u8>> = tx
            .query_row(
                "SELECT manifest FROM tags WHERE dataset_id = ?1 AND name = ?2",
                params![ds.id, tag],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(cur) = current {
            let cur = id_of(cur);
            if cur != *id && !force {
                return Err(Error::TagExists {
                    dataset: ds.name.clone(),
                    tag: tag.to_string(),
                    current: cur.to_hex(),
                });
            }
        }
        tx.execute(
            "INSERT INTO tags (dataset_id, name, manifest, created_ns) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (dataset_id, name) DO UPDATE SET manifest = excluded.manifest,
                                                          created_ns = excluded.created_ns",
            params![ds.id, tag, &id.0[..], now_ns()],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    pub fn delete_tag(&self, ds: &DatasetInfo, tag: &str) -> Result<()> {
        let conn = self.conn()?;
        let n = conn
            .execute(
                "DELETE FROM tags WHERE dataset_id = ?1 AND name = ?2",
                params![ds.id, tag],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(Error::UnknownTag {
                dataset: ds.name.clone(),
                tag: tag.to_string(),
            });
        }
        Ok(())
    }

    /// Forget a dataset with all its versions, tags and checkout records.
    /// Its objects stay until `gc`.
    pub fn delete_dataset(&self, ds: &DatasetInfo) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        for table in ["tags", "checkouts", "versions"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE dataset_id = ?1"),
                [ds.id],
            )
            .map_err(self.err())?;
        }
        tx.execute("DELETE FROM datasets WHERE id = ?1", [ds.id])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    pub fn tags(&self, dataset_id: i64) -> Result<Vec<TagInfo>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare(
                "SELECT name, manifest, created_ns FROM tags WHERE dataset_id = ?1 ORDER BY name",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([dataset_id], |r| {
                Ok(TagInfo {
                    name: r.get(0)?,
                    version: id_of(r.get(1)?),
                    created_ns: r.get(2)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Every manifest any version or tag refers to (the roots for gc and fsck),
    /// with one `dataset@id` label each for reports.
    pub fn all_manifests(&self) -> Result<Vec<(ObjectId, String)>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare(
                "SELECT v.manifest, d.name FROM versions v JOIN datasets d ON d.id = v.dataset_id
                 UNION SELECT t.manifest, d.name FROM tags t JOIN datasets d ON d.id = t.dataset_id",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                let id = id_of(r.get(0)?);
                let name: String = r.get(1)?;
                Ok((id, format!("{name}@{}", id.short())))
            })
            .map_err(self.err())?;
        let mut v: Vec<(ObjectId, String)> =
            rows.collect::<rusqlite::Result<_>>().map_err(self.err())?;
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        Ok(v)
    }

    /// The version last checked out into `dir`, if Trainyard did it.
    pub fn checkout_of(&self, dir: &str) -> Result<Option<ObjectId>> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT manifest FROM checkouts WHERE dir = ?1",
            [dir],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .optional()
        .map_err(self.err())
        .map(|o| o.map(id_of))
    }

    pub fn record_checkout(&self, dir: &str, ds: &DatasetInfo, id: &ObjectId) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO checkouts (dir, dataset_id, manifest, created_ns) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (dir) DO UPDATE SET dataset_id = excluded.dataset_id,
                 manifest = excluded.manifest, created_ns = excluded.created_ns",
            params![dir, ds.id, &id.0[..], now_ns()],
        )
        .map_err(self.err())?;
        Ok(())
    }
}
