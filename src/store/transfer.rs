//! What moving versions to and from another store (a remote) needs from this
//! one: export a version (manifest + readable objects) and import one
//! (verified objects in, then one catalog commit). The store still knows
//! nothing about remotes; `crate::remote` drives these.
//!
//! Import keeps the store's invariants: every object is checked against its
//! id before it becomes visible, everything is made durable (one `syncfs`)
//! before the version row that needs it commits, and the shared store lock
//! keeps `gc` out meanwhile.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::catalog::{NewVersion, PackIndex};
use super::manifest::Manifest;
use super::pack::{PackWriter, PACK_THRESHOLD};
use super::{DatasetRef, Error, Kind, ObjectId, Result, Store, VersionInfo};

/// A version ready to send.
#[derive(Debug, Clone)]
pub struct Export {
    /// The version.
    pub info: VersionInfo,
    /// Its manifest's bytes (their BLAKE3 is the version id).
    pub manifest_bytes: Vec<u8>,
    /// The manifest decoded.
    pub manifest: Manifest,
}

impl Export {
    /// The distinct objects the version needs (file contents and symlink
    /// targets), with their sizes.
    pub fn objects(&self) -> Vec<(ObjectId, u64)> {
        let mut seen = HashSet::new();
        self.manifest
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Dir)
            .map(|e| (e.id, e.size))
            .filter(|(id, _)| seen.insert(*id))
            .collect()
    }
}

/// Reads objects for an export; holds the shared store lock.
pub struct ObjectReader<'a> {
    store: &'a Store,
    index: PackIndex,
    _lock: File,
}

impl ObjectReader<'_> {
    /// An object's bytes, verified against its id.
    pub fn read(&self, id: &ObjectId) -> Result<Vec<u8>> {
        self.store.read_object(&self.index, id)
    }

    /// The file of a loose (large) object, to stream from; `None` when packed.
    pub fn loose_path(&self, id: &ObjectId) -> Option<PathBuf> {
        let p = self.store.objects.path(id);
        p.is_file().then_some(p)
    }
}

/// A version received from elsewhere, as [`Import::commit`] records it.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// Dataset name.
    pub dataset: &'a str,
    /// Version id.
    pub id: ObjectId,
    /// Its message, author and creation time at the origin.
    pub message: &'a str,
    /// Author.
    pub author: &'a str,
    /// Created, ns since the epoch.
    pub created_ns: i64,
    /// Where it came from (e.g. `remote lab` or a git registry), shown by `data log`.
    pub source: &'a str,
}

/// Objects being received; nothing is visible in the catalog until
/// [`Import::commit`].
pub struct Import<'a> {
    store: &'a Store,
    index: PackIndex,
    packs: PackWriter,
    new_bytes: u64,
    _lock: File,
}

impl Store {
    /// A version and its manifest, for sending elsewhere.
    pub fn export(&self, r: &DatasetRef) -> Result<Export> {
        let info = self.resolve(r)?;
        let manifest_bytes = self.objects.read_verified(&info.id)?;
        let manifest = Manifest::decode(&manifest_bytes).map_err(|reason| Error::BadManifest {
            id: info.id,
            reason,
        })?;
        Ok(Export {
            info,
            manifest_bytes,
            manifest,
        })
    }

    /// A reader of this store's objects (holds the shared lock: gc waits).
    pub fn object_reader(&self) -> Result<ObjectReader<'_>> {
        Ok(ObjectReader {
            store: self,
            _lock: self.lock(false)?,
            index: self.catalog.pack_index()?,
        })
    }

    /// Which of `wanted` this store lacks.
    pub fn missing(&self, wanted: &[(ObjectId, u64)]) -> Result<Vec<(ObjectId, u64)>> {
        let index = self.catalog.pack_index()?;
        let held = self.held_objects(&index, wanted)?;
        Ok(wanted
            .iter()
            .filter(|(id, _)| !held.contains(id))
            .copied()
            .collect())
    }

    /// Rehash a loose object; `Ok(false)` if damaged.
    pub fn verify_loose(&self, id: &ObjectId) -> Result<bool> {
        self.objects.verify(id)
    }

    /// Whether the store holds the version (manifest) `id` of `dataset`.
    pub fn has_version(&self, dataset: &str, id: &ObjectId) -> Result<bool> {
        let Some(ds) = self.catalog.find_dataset(dataset)? else {
            return Ok(false);
        };
        Ok(self.catalog.resolve(&ds, Some(&id.to_hex())).is_ok())
    }

    /// Start receiving objects (holds the shared lock: gc waits).
    pub fn import(&self) -> Result<Import<'_>> {
        let tmp = self.dir.join("tmp");
        Ok(Import {
            store: self,
            _lock: self.lock(false)?,
            index: self.catalog.pack_index()?,
            packs: PackWriter::new(&self.packs_dir, &tmp),
            new_bytes: 0,
        })
    }
}

impl Import<'_> {
    /// Store an object received as bytes, after checking it against `id`.
    pub fn put(&mut self, id: &ObjectId, bytes: &[u8]) -> Result<()> {
        if ObjectId::of_bytes(bytes) != *id {
            return Err(Error::CorruptObject {
                id: *id,
                path: PathBuf::from("(received)"),
            });
        }
        let size = bytes.len() as u64;
        if self.store.has_object(&self.index, id, size)? {
            return Ok(());
        }
        if size < PACK_THRESHOLD {
            self.packs.add(*id, bytes)?;
        } else {
            self.store.objects.put_bytes(bytes)?;
        }
        self.new_bytes += size;
        Ok(())
    }

    /// A directory for received large objects: files written there and
    /// given to [`Import::put_file`] are renamed into the store, not copied.
    pub fn tmp_dir(&self) -> PathBuf {
        self.store.objects.tmp().to_path_buf()
    }

    /// Store a received large object from a file in [`Import::tmp_dir`],
    /// after checking it against `id`; the file is moved (or removed).
    pub fn put_file(&mut self, id: &ObjectId, file: &Path) -> Result<()> {
        let r = self.store.objects.adopt(file, id);
        if r.is_err() {
            let _ = std::fs::remove_file(file);
        }
        self.new_bytes += r?;
        Ok(())
    }

    /// Store a received manifest after checking it against `id` and decoding it.
    pub fn put_manifest(&mut self, id: &ObjectId, bytes: &[u8]) -> Result<Manifest> {
        if ObjectId::of_bytes(bytes) != *id {
            return Err(Error::CorruptObject {
                id: *id,
                path: PathBuf::from("(received manifest)"),
            });
        }
        let m = Manifest::decode(bytes).map_err(|reason| Error::BadManifest { id: *id, reason })?;
        self.store.objects.put_bytes(bytes)?;
        Ok(m)
    }

    /// Make everything durable and record the version (unless the dataset
    /// already has it) with the tags that may be set. Returns whether a
    /// version row was added. Every object the manifest names must be present.
    pub fn commit(self, v: &Incoming<'_>, manifest: &Manifest) -> Result<bool> {
        let packs = self.packs.finish()?;
        // Objects, packs and the manifest are durable before the row that needs them.
        self.store.objects.flush()?;
        // Everything present? (Packs just written count: index them first in a scratch set.)
        let just_packed: HashSet<ObjectId> = packs
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.0))
            .collect();
        let wanted: Vec<(ObjectId, u64)> = manifest
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Dir)
            .map(|e| (e.id, e.size))
            .filter(|(id, _)| !just_packed.contains(id))
            .collect();
        let held = self.store.held_objects(&self.index, &wanted)?;
        if let Some((id, _)) = wanted.iter().find(|(id, _)| !held.contains(id)) {
            return Err(Error::MissingObject(*id));
        }
        if self.store.has_version(v.dataset, &v.id)? {
            // Still index any packs written (objects other versions may share).
            self.store.catalog.replace_packs(&[], &packs)?;
            return Ok(false);
        }
        let (created, _) = self.store.catalog.add_version(&NewVersion {
            dataset: v.dataset,
            manifest: v.id,
            message: v.message,
            author: v.author,
            files: manifest.file_count(),
            bytes: manifest.file_bytes(),
            new_bytes: self.new_bytes,
            source: Some(v.source),
            tag: None,
            packs: &packs,
            created_ns: Some(v.created_ns),
        })?;
        Ok(created)
    }
}

/// Write `body` to `path` atomically (a temp file beside it, then rename),
/// creating the directory. For small state files next to the store.
pub fn write_file_atomic(path: &Path, body: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    super::objects::write_atomic(dir, path, body)
}
