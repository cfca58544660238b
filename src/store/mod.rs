//! The local dataset store: content-addressed objects, version manifests, the
//! SQLite catalog of datasets/versions/tags, and the stat cache.
//!
//! The store knows nothing about jobs, runs or remotes. Everything it writes is
//! either immutable and named by its content (objects, manifests) or a row in
//! one of two SQLite files (the catalog and the rebuildable stat cache).
//! On-disk layout: `docs/store-format.md`.

mod catalog;
mod checkout;
mod error;
mod id;
mod maint;
mod manifest;
mod mindex;
mod objects;
mod pack;
mod refs;
mod snapshot;
mod statcache;
mod transfer;
mod walk;

/// The author recorded for new versions: [`crate::user::current`].
pub use crate::user::current as current_user;
pub use catalog::{DatasetInfo, TagInfo, VersionInfo};
pub use checkout::{CheckoutOptions, CheckoutReport, LinkMode};
pub use error::{Error, Result};
pub use id::{ObjectId, ParseIdError};
pub use maint::{FsckProblem, FsckReport, GcReport};
pub use manifest::{diff, Change, ChangeKind, Entry, Kind, Listed, Manifest};
pub use mindex::ManifestIndex;
pub use refs::{validate_dataset_name, validate_tag_name, DatasetRef};
pub use snapshot::{tree_stamp, AddOptions, AddReport, StatusReport, TreeStamp};
pub use transfer::{write_file_atomic, Export, Import, Incoming, ObjectReader};

/// Parse a pack file's bytes into (object id, offset, length) triples, each
/// object checked against its id. Exposed for the fuzz targets and for
/// tools that inspect packs; the store itself reads packs through its index.
pub fn scan_pack(bytes: &[u8]) -> std::result::Result<Vec<(ObjectId, u64, u64)>, String> {
    pack::scan(bytes)
}

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::home::Home;

/// The on-disk format version this code reads and writes (`store/config.json`).
pub const FORMAT_VERSION: u32 = 1;

/// An open store. Cheap to share across threads (`&Store`); every method opens
/// what it needs, and several processes may use one store at once.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    packs_dir: PathBuf,
    objects: objects::Objects,
    catalog: catalog::Catalog,
    statcache: statcache::StatCache,
}

/// Where an object lives.
pub(crate) enum Found {
    /// Its own file (at `Objects::path`).
    Loose,
    /// Inside a pack.
    Packed(pack::Location),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoreConfig {
    format: u32,
    hash: String,
}

impl Store {
    /// Open the store under `home`, creating it on first use. Refuses a store
    /// written by a newer, unknown format version.
    pub fn open(home: &Home) -> Result<Store> {
        let dir = home.store_dir();
        let config_path = dir.join("config.json");
        match std::fs::read(&config_path) {
            Ok(bytes) => {
                let cfg: StoreConfig =
                    serde_json::from_slice(&bytes).map_err(|e| Error::BadConfig {
                        path: config_path.clone(),
                        reason: e.to_string(),
                    })?;
                if cfg.format != FORMAT_VERSION || cfg.hash != "blake3-256" {
                    return Err(Error::UnsupportedFormat {
                        path: config_path,
                        found: format!("format {} with hash {}", cfg.format, cfg.hash),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
                let cfg = StoreConfig {
                    format: FORMAT_VERSION,
                    hash: "blake3-256".into(),
                };
                let body = serde_json::to_vec_pretty(&cfg).expect("config serializes");
                objects::write_atomic(&dir.join("tmp"), &config_path, &body)?;
            }
            Err(e) => return Err(Error::io("read", &config_path, e)),
        }
        let objects = objects::Objects::open(&dir)?;
        let packs_dir = dir.join("packs");
        std::fs::create_dir_all(&packs_dir).map_err(|e| Error::io("create", &packs_dir, e))?;
        let catalog = catalog::Catalog::open(&home.catalog_path())?;
        let statcache = statcache::StatCache::open(&dir.join("statcache.db"))?;
        Ok(Store {
            dir,
            packs_dir,
            objects,
            catalog,
            statcache,
        })
    }

    /// The store's directory (`$TRAINYARD_HOME/store`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the store lock: shared for writers of new objects and readers
    /// (add, checkout), exclusive for gc. Held until the returned file drops.
    fn lock(&self, exclusive: bool) -> Result<File> {
        let path = self.dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let r = if exclusive { f.lock() } else { f.lock_shared() };
        r.map_err(|e| Error::io("lock", &path, e))?;
        Ok(f)
    }

    /// All datasets, by name.
    pub fn datasets(&self) -> Result<Vec<DatasetInfo>> {
        self.catalog.datasets()
    }

    /// The versions of a dataset, newest first.
    pub fn log(&self, dataset: &str) -> Result<Vec<VersionInfo>> {
        let ds = self.catalog.dataset(dataset)?;
        self.catalog.versions(ds.id)
    }

    /// Resolve `NAME@REF` to a version.
    pub fn resolve(&self, r: &DatasetRef) -> Result<VersionInfo> {
        let ds = self.catalog.dataset(&r.dataset)?;
        self.catalog.resolve(&ds, r.reference.as_deref())
    }

    /// Whether the store holds object `id` of `size` bytes, loose or packed.
    pub(crate) fn has_object(
        &self,
        index: &catalog::PackIndex,
        id: &ObjectId,
        size: u64,
    ) -> Result<bool> {
        Ok(self.objects.contains(id, size) || index.lookup(id)?.is_some_and(|l| l.len == size))
    }

    /// Which of `wanted` (id, size) the store holds, loose or packed: one
    /// index query for the lot.
    pub(crate) fn held_objects(
        &self,
        index: &catalog::PackIndex,
        wanted: &[(ObjectId, u64)],
    ) -> Result<std::collections::HashSet<ObjectId>> {
        let ids: Vec<ObjectId> = wanted.iter().map(|w| w.0).collect();
        let packed = index.lookup_many(&ids)?;
        Ok(wanted
            .iter()
            .filter(|(id, size)| {
                packed.get(id).is_some_and(|l| l.len == *size) || self.objects.contains(id, *size)
            })
            .map(|w| w.0)
            .collect())
    }

    /// Where object `id` is.
    pub(crate) fn find_object(
        &self,
        index: &catalog::PackIndex,
        id: &ObjectId,
    ) -> Result<Option<Found>> {
        if self.objects.path(id).is_file() {
            return Ok(Some(Found::Loose));
        }
        Ok(index.lookup(id)?.map(Found::Packed))
    }

    /// Read a whole object, loose or packed, verified against its id.
    pub(crate) fn read_object(&self, index: &catalog::PackIndex, id: &ObjectId) -> Result<Vec<u8>> {
        match self.find_object(index, id)? {
            None => Err(Error::MissingObject(*id)),
            Some(Found::Loose) => self.objects.read_verified(id),
            Some(Found::Packed(loc)) => self.read_packed(id, &loc),
        }
    }

    /// Read a packed object at `loc`, verified against its id.
    pub(crate) fn read_packed(&self, id: &ObjectId, loc: &pack::Location) -> Result<Vec<u8>> {
        let bytes = pack::read_at(&self.packs_dir, loc)?;
        if ObjectId::of_bytes(&bytes) != *id {
            return Err(Error::CorruptObject {
                id: *id,
                path: pack::pack_path(&self.packs_dir, &loc.pack),
            });
        }
        Ok(bytes)
    }

    /// Read and verify a version's manifest.
    pub fn manifest(&self, id: &ObjectId) -> Result<Manifest> {
        let bytes = self.objects.read_verified(id)?;
        Manifest::decode(&bytes).map_err(|reason| Error::BadManifest { id: *id, reason })
    }

    /// A sparse index of version `id`'s manifest ([`ManifestIndex`]), so
    /// that [`Store::status_touched`] can read only the entries it needs.
    pub fn manifest_index(&self, id: &ObjectId) -> Result<ManifestIndex> {
        let bytes = self.objects.read_verified(id)?;
        ManifestIndex::build(*id, &bytes).map_err(|reason| Error::BadManifest { id: *id, reason })
    }

    /// The listing of `subpath` in version `r` ([`Manifest::list`]: one
    /// level, or everything below with `recursive`; a directory's size is
    /// its files' sum), with the version.
    pub fn ls(
        &self,
        r: &DatasetRef,
        subpath: Option<&str>,
        recursive: bool,
    ) -> Result<(VersionInfo, Vec<Listed>)> {
        let v = self.resolve(r)?;
        let sub = subpath.unwrap_or("");
        let listed =
            self.manifest(&v.id)?
                .list(sub, recursive)
                .ok_or_else(|| Error::NoSuchPath {
                    dataset: r.dataset.clone(),
                    version: v.id,
                    path: sub.trim_matches('/').to_string(),
                })?;
        Ok((v, listed))
    }

    /// Point tag `tag` of the version's dataset at `r`. An existing tag is
    /// moved only with `force`.
    pub fn tag(&self, r: &DatasetRef, tag: &str, force: bool) -> Result<VersionInfo> {
        refs::validate_tag_name(tag)?;
        let ds = self.catalog.dataset(&r.dataset)?;
        let v = self.catalog.resolve(&ds, r.reference.as_deref())?;
        self.catalog.set_tag(&ds, tag, &v.id, force)?;
        Ok(v)
    }

    /// Remove a tag.
    pub fn untag(&self, dataset: &str, tag: &str) -> Result<()> {
        let ds = self.catalog.dataset(dataset)?;
        self.catalog.delete_tag(&ds, tag)
    }

    /// Forget a dataset: its versions, tags and checkout records. Returns how
    /// many versions it had. The objects stay until [`Store::gc`].
    pub fn remove_dataset(&self, dataset: &str) -> Result<u64> {
        let ds = self.catalog.dataset(dataset)?;
        self.catalog.delete_dataset(&ds)?;
        Ok(ds.versions)
    }

    /// Tags of a dataset.
    pub fn tags(&self, dataset: &str) -> Result<Vec<TagInfo>> {
        let ds = self.catalog.dataset(dataset)?;
        self.catalog.tags(ds.id)
    }
}
