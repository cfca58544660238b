//! Snapshotting (`data add`) and comparing a directory with a version
//! (`data status`).
//!
//! Write order for `add`, which is what makes it crash-safe: objects (temp
//! file + rename) → manifest object → one filesystem flush → the version row
//! in one catalog transaction → stat cache. A kill at any point leaves either
//! no new version or a complete one; stray objects are reclaimed by `gc`.
//!
//! Neither `add` nor `status` sees a checkout's temporary files
//! (`.trainyard-tmp-<pid>-<ns>-<n>`): they are not the user's data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rayon::prelude::*;

use super::catalog::NewVersion;
use super::manifest::{diff, encode_parts, Change, Entry, Kind, Manifest};
use super::objects::{hash_file, Stored};
use super::pack::{PackWriter, PACK_THRESHOLD};
use super::walk::{walk, Walk, WalkEntry};
use super::{refs, DatasetRef, Error, ObjectId, Result, Store};
use crate::progress::Progress;

/// Options for [`Store::add`].
#[derive(Debug, Default, Clone)]
pub struct AddOptions {
    /// Dataset name; defaults to the snapshotted path's file name.
    pub name: Option<String>,
    /// Version message.
    pub message: Option<String>,
    /// Tag to set on the new version.
    pub tag: Option<String>,
    /// Author; defaults to `$USER`.
    pub author: Option<String>,
}

/// What [`Store::add`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddReport {
    /// The dataset.
    pub dataset: String,
    /// The version id.
    pub version: ObjectId,
    /// `false` when the content equals the latest version (no new version).
    pub created: bool,
    /// The previous latest version.
    pub parent: Option<ObjectId>,
    /// Files in the version.
    pub files: u64,
    /// Total file bytes.
    pub bytes: u64,
    /// Bytes written to the store that it did not already have.
    pub new_bytes: u64,
    /// Files whose content was read (the rest came from the stat cache).
    pub hashed_files: u64,
    /// The tag set, if any.
    pub tag: Option<String>,
}

/// What [`Store::status`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    /// The dataset compared against.
    pub dataset: String,
    /// The version compared against (`None`: the dataset has no versions).
    pub against: Option<ObjectId>,
    /// Changes from that version to the directory, in path order.
    pub changes: Vec<Change>,
    /// Files in the directory.
    pub files: u64,
    /// Files that had to be read because the stat cache could not vouch for them.
    pub hashed_files: u64,
    /// When there was nothing to compare against: the datasets this store
    /// has, so the user can pick one with `--name`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_datasets: Vec<String>,
    /// Answered from a record of changed paths ([`Store::status_touched`]):
    /// how many were recorded. `None`: the directory was walked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touched: Option<u64>,
}

/// What a stat walk of a tree saw, without reading any file's content:
/// counts and one digest of every entry's path, kind, mode bit, size,
/// inode, mtime and ctime. Two equal stamps mean nothing a stat can see
/// changed (the watcher's polling compares them between polls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TreeStamp {
    /// Entries (files, directories, symlinks) below the root.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// BLAKE3 of the entries' paths and stat fields, in path order.
    pub digest: ObjectId,
}

/// Stat-walk `path` (in parallel, never following symlinks, checkout temp
/// files left out as `add` leaves them out) into a [`TreeStamp`]. Reads
/// directories and inodes only, never a file's bytes.
pub fn tree_stamp(path: &Path) -> Result<TreeStamp> {
    let Walk { entries, .. } = walk(path)?;
    let mut h = blake3::Hasher::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    for e in &entries {
        if e.kind == Kind::File {
            files += 1;
            bytes += e.stamp.size;
        }
        h.update(&(e.rel.len() as u64).to_le_bytes());
        h.update(e.rel.as_bytes());
        h.update(&[e.kind as u8, u8::from(e.exec)]);
        for v in [
            e.stamp.size,
            e.stamp.ino,
            e.stamp.mtime_ns as u64,
            e.stamp.ctime_ns as u64,
        ] {
            h.update(&v.to_le_bytes());
        }
    }
    Ok(TreeStamp {
        entries: entries.len() as u64,
        files,
        bytes,
        digest: ObjectId::from(h.finalize()),
    })
}

fn lock(m: &Mutex<PackWriter>) -> Result<MutexGuard<'_, PackWriter>> {
    m.lock().map_err(|_| {
        Error::io(
            "write a pack",
            Path::new("store/tmp"),
            std::io::Error::other("another writer thread panicked"),
        )
    })
}

/// Canonical absolute path (symlinks in the path itself resolved) as UTF-8.
pub(crate) fn canonical(path: &Path) -> Result<(PathBuf, String)> {
    let abs = std::fs::canonicalize(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path.to_path_buf())
        } else {
            Error::io("resolve", path, e)
        }
    })?;
    let s = abs
        .to_str()
        .ok_or_else(|| Error::NonUtf8Path(abs.clone()))?
        .to_string();
    Ok((abs, s))
}

/// The dataset name a path snapshots to by default: its file name.
pub(crate) fn default_name(abs: &Path) -> Result<String> {
    let name = abs
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::NonUtf8Path(abs.to_path_buf()))?;
    refs::validate_dataset_name(name).map_err(|_| Error::InvalidName {
        what: "dataset",
        name: name.to_string(),
        reason: "it is the default taken from the path; pass --name with letters, digits, '.', '_', '-'",
    })?;
    Ok(name.to_string())
}

impl Store {
    /// Walk `abs`, take ids from the stat cache, and return the entries, the
    /// cache's vanished paths, and the checkout temp files found (never
    /// entries: a snapshot or status does not see them).
    pub(super) fn scan(
        &self,
        abs: &Path,
        root_key: &str,
        gen: i64,
    ) -> Result<(Vec<WalkEntry>, Vec<String>, Vec<String>)> {
        let Walk { mut entries, temps } = walk(abs)?;
        let lookup = self.statcache.lookup(root_key, &mut entries, gen)?;
        Ok((entries, lookup.gone, temps))
    }

    /// Path of an entry on disk.
    fn on_disk(abs: &Path, is_dir: bool, rel: &str) -> PathBuf {
        if is_dir {
            abs.join(rel)
        } else {
            abs.to_path_buf()
        }
    }

    /// Snapshot a directory or file into a new version of a dataset.
    pub fn add(
        &self,
        path: &Path,
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddReport> {
        let (abs, root_key) = canonical(path)?;
        let name = match &opts.name {
            Some(n) => {
                refs::validate_dataset_name(n)?;
                n.clone()
            }
            None => default_name(&abs)?,
        };
        if let Some(t) = &opts.tag {
            refs::validate_tag_name(t)?;
        }
        let _lock = self.lock(false)?;
        let is_dir = abs.is_dir();
        let t0 = std::time::Instant::now();
        progress.phase("scanning", None);
        let gen = self.catalog.gc_generation()?;
        let (mut entries, gone, _temps) = self.scan(&abs, &root_key, gen)?;
        tracing::debug!(entries = entries.len(), elapsed = ?t0.elapsed(), "scanned");

        let total_bytes: u64 = entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.stamp.size)
            .sum();
        progress.phase("storing", Some(total_bytes));
        let new_bytes = AtomicU64::new(0);
        let hashed = AtomicU64::new(0);
        let index = self.catalog.pack_index()?;
        let packer = Mutex::new(PackWriter::new(&self.packs_dir, self.objects.tmp()));
        // Read (hash, and for large files store) one file whose content the
        // stat cache could not vouch for. Small contents are returned for packing.
        let read = |e: &mut WalkEntry, p: &Path| -> Result<Option<Vec<u8>>> {
            hashed.fetch_add(1, Ordering::Relaxed);
            e.fresh = true;
            if e.stamp.size < PACK_THRESHOLD {
                if let (id, stamp, Some(bytes)) = hash_file(p, true)? {
                    e.id = Some(id);
                    e.stamp = stamp;
                    return Ok(Some(bytes));
                }
                // grew past the small-file size meanwhile: store it loose
            }
            let Stored {
                id,
                stamp,
                new_bytes: n,
            } = self.objects.put_file(p)?;
            new_bytes.fetch_add(n, Ordering::Relaxed);
            e.id = Some(id);
            e.stamp = stamp;
            Ok(None)
        };
        // Work in chunks so that "does the store have these?" is one query per
        // chunk and the pack writer is locked once per chunk, not per file.
        entries
            .par_chunks_mut(256)
            .try_for_each(|chunk| -> Result<()> {
                let mut small: Vec<(usize, Vec<u8>)> = Vec::new();
                let mut confirm: Vec<usize> = Vec::new();
                for (i, e) in chunk.iter_mut().enumerate() {
                    let p = Self::on_disk(&abs, is_dir, &e.rel);
                    match e.kind {
                        Kind::Dir => {}
                        Kind::Symlink => {
                            let target = std::fs::read_link(&p)
                                .map_err(|err| Error::io("read link", &p, err))?;
                            let bytes = target.as_os_str().as_encoded_bytes().to_vec();
                            e.stamp.size = bytes.len() as u64;
                            e.id = Some(ObjectId::of_bytes(&bytes));
                            small.push((i, bytes));
                        }
                        Kind::File if e.id.is_some() && e.present => progress.inc(e.stamp.size),
                        // Known content, but gc ran since: is the object still there?
                        Kind::File if e.id.is_some() => confirm.push(i),
                        Kind::File => {
                            if let Some(bytes) = read(e, &p)? {
                                small.push((i, bytes));
                            }
                            progress.inc(e.stamp.size);
                        }
                    }
                }
                let wanted: Vec<(ObjectId, u64)> = small
                    .iter()
                    .map(|(i, b)| (chunk[*i].id.unwrap_or(ObjectId::ZERO), b.len() as u64))
                    .chain(
                        confirm
                            .iter()
                            .map(|&i| (chunk[i].id.unwrap_or(ObjectId::ZERO), chunk[i].stamp.size)),
                    )
                    .collect();
                let held = self.held_objects(&index, &wanted)?;
                for i in confirm {
                    let e = &mut chunk[i];
                    if e.id.is_some_and(|id| held.contains(&id)) {
                        e.fresh = true; // re-vouch at this generation
                    } else {
                        let p = Self::on_disk(&abs, is_dir, &e.rel);
                        if let Some(bytes) = read(e, &p)? {
                            let id = e.id.unwrap_or(ObjectId::ZERO);
                            if !self.has_object(&index, &id, bytes.len() as u64)? {
                                small.push((i, bytes));
                            }
                        }
                    }
                    progress.inc(e.stamp.size);
                }
                let mut w = lock(&packer)?;
                for (i, bytes) in small {
                    let id = chunk[i].id.unwrap_or(ObjectId::ZERO);
                    if !held.contains(&id) && w.add(id, &bytes)? {
                        new_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                }
                Ok(())
            })?;
        let packs = packer
            .into_inner()
            .map_err(|_| {
                Error::io(
                    "write packs in",
                    self.objects.tmp(),
                    std::io::Error::other("a writer thread panicked"),
                )
            })?
            .finish()?;
        drop(index);

        let encoded = encode_parts(entries.len(), entries.iter().map(WalkEntry::parts));
        let (version, _) = self.objects.put_bytes(&encoded)?;
        drop(encoded);
        tracing::debug!(elapsed = ?t0.elapsed(), "objects and manifest written");
        progress.phase("flushing", None);
        self.objects.flush()?;
        tracing::debug!(elapsed = ?t0.elapsed(), "flushed");

        let files = entries.iter().filter(|e| e.kind == Kind::File).count() as u64;
        let bytes: u64 = entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.stamp.size)
            .sum();
        let author = opts.author.clone().unwrap_or_else(crate::user::current);
        let new_bytes = new_bytes.into_inner();
        let (created, parent) = self.catalog.add_version(&NewVersion {
            dataset: &name,
            manifest: version,
            message: opts.message.as_deref().unwrap_or(""),
            author: &author,
            files,
            bytes,
            new_bytes,
            source: Some(&root_key),
            tag: opts.tag.as_deref(),
            packs: &packs,
            created_ns: None,
        })?;
        tracing::debug!(elapsed = ?t0.elapsed(), "version committed");
        if let Err(e) = self.statcache.update(&root_key, &entries, &gone, Some(gen)) {
            tracing::warn!(error = %e, "could not update the stat cache; the next status will rehash");
        }
        tracing::debug!(elapsed = ?t0.elapsed(), "stat cache updated");
        progress.finish();
        tracing::info!(dataset = %name, version = %version, files, bytes, new_bytes, created, "snapshot recorded");
        Ok(AddReport {
            dataset: name,
            version,
            created,
            parent,
            files,
            bytes,
            new_bytes,
            hashed_files: hashed.into_inner(),
            tag: opts.tag.clone(),
        })
    }

    /// Compare a directory (or file) with the dataset's latest version, or
    /// with `against` (a REF of that dataset). Reads only files the stat
    /// cache cannot vouch for, and teaches the cache what it read.
    pub fn status(
        &self,
        path: &Path,
        name: Option<&str>,
        against: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<StatusReport> {
        let (abs, root_key) = canonical(path)?;
        let name = match name {
            Some(n) => {
                refs::validate_dataset_name(n)?;
                n.to_string()
            }
            None => {
                // A directory added under another --name is still that
                // dataset's: find it by where its versions came from.
                let default = default_name(&abs)?;
                let known = self.catalog.find_dataset(&default)?;
                match self.catalog.datasets_from_source(&root_key)?.first() {
                    Some(from) if known.is_none_or(|d| d.versions == 0) => from.clone(),
                    _ => default,
                }
            }
        };
        let base = match (self.catalog.find_dataset(&name)?, against) {
            (None, None) => None,
            (None, Some(_)) => return Err(Error::UnknownDataset(name)),
            (Some(ds), r) => match self.catalog.resolve(&ds, r) {
                Ok(v) => Some(v.id),
                Err(Error::NoVersions(_)) if r.is_none() => None,
                Err(e) => return Err(e),
            },
        };
        let base_manifest = match &base {
            Some(id) => self.manifest(id)?,
            None => Manifest::default(),
        };
        let is_dir = abs.is_dir();
        progress.phase("scanning", None);
        let (mut entries, gone, _temps) = self.scan(&abs, &root_key, -2)?;
        let todo: u64 = entries
            .iter()
            .filter(|e| e.kind == Kind::File && e.id.is_none())
            .map(|e| e.stamp.size)
            .sum();
        progress.phase("hashing", Some(todo));
        entries.par_iter_mut().try_for_each(|e| -> Result<()> {
            let p = Self::on_disk(&abs, is_dir, &e.rel);
            match e.kind {
                Kind::Dir => {}
                Kind::Symlink => {
                    let t =
                        std::fs::read_link(&p).map_err(|err| Error::io("read link", &p, err))?;
                    let b = t.as_os_str().as_encoded_bytes();
                    e.stamp.size = b.len() as u64;
                    e.id = Some(ObjectId::of_bytes(b));
                }
                Kind::File if e.id.is_none() => {
                    let (id, stamp, _) = hash_file(&p, false)?;
                    e.id = Some(id);
                    e.stamp = stamp;
                    e.fresh = true;
                    progress.inc(stamp.size);
                }
                Kind::File => {}
            }
            Ok(())
        })?;
        let hashed = entries.iter().filter(|e| e.fresh).count() as u64;
        let files = entries.iter().filter(|e| e.kind == Kind::File).count() as u64;
        if hashed > 0 || !gone.is_empty() {
            if let Err(e) = self.statcache.update(&root_key, &entries, &gone, None) {
                tracing::warn!(error = %e, "could not update the stat cache");
            }
        }
        let current: Vec<Entry> = entries.into_iter().map(WalkEntry::into_entry).collect();
        let changes = diff(&base_manifest.entries, &current);
        progress.finish();
        let other_datasets = match base {
            Some(_) => Vec::new(),
            None => self
                .catalog
                .datasets()?
                .into_iter()
                .filter(|d| d.versions > 0 && d.name != name)
                .map(|d| d.name)
                .collect(),
        };
        Ok(StatusReport {
            dataset: name,
            against: base,
            changes,
            files,
            hashed_files: hashed,
            other_datasets,
            touched: None,
        })
    }

    /// `status` from a record of what changed: the directory `path` is
    /// known to equal version `base` of `dataset` except, at most, at the
    /// paths `touched` (relative; a directory stands for everything below
    /// it). Only those paths are looked at — stat, and a hash for files —
    /// so the answer costs the touched files plus the manifest read, not a
    /// walk (a watcher's record, as git's fsmonitor gives git). With
    /// `index` (the [`super::ManifestIndex`] of `base`) only the runs of
    /// the manifest that hold the touched paths' entries are read; without
    /// it, the whole manifest.
    pub fn status_touched(
        &self,
        path: &Path,
        dataset: &str,
        base: &ObjectId,
        touched: &[String],
        index: Option<&super::ManifestIndex>,
    ) -> Result<StatusReport> {
        let (abs, _) = canonical(path)?;
        let mut roots: Vec<&str> = touched.iter().map(String::as_str).collect();
        roots.sort_unstable();
        roots.dedup();
        // Drop paths below another touched path: the walk of that one covers them.
        let mut kept: Vec<&str> = Vec::with_capacity(roots.len());
        for r in roots {
            if kept.last().is_some_and(|k| {
                r.len() > k.len() && r.starts_with(k) && r.as_bytes()[k.len()] == b'/'
            }) {
                continue;
            }
            kept.push(r);
        }
        let within = |p: &str| {
            let i = kept.partition_point(|k| *k <= p);
            if i == 0 {
                return false;
            }
            let k = kept[i - 1];
            p == k || (p.starts_with(k) && p.as_bytes().get(k.len()) == Some(&b'/'))
        };
        // The base entries at and below the touched paths: through the
        // index, only the runs of the manifest that hold them; else one
        // pass over the whole (verified) manifest.
        let (old, files_before) = match index.filter(|ix| ix.manifest == *base) {
            Some(ix) => {
                let (old, read) = ix
                    .read_selected(&self.objects.path(base), kept.iter().copied(), within)
                    .map_err(|e| match e {
                        super::mindex::ReadError::Io(e) => {
                            Error::io("read", &self.objects.path(base), e)
                        }
                        super::mindex::ReadError::Corrupt(_) => Error::CorruptObject {
                            id: *base,
                            path: self.objects.path(base),
                        },
                    })?;
                tracing::debug!(read, of = ix.len, "manifest read through its index");
                (old, ix.files)
            }
            None => {
                let bytes = self.objects.read_verified(base)?;
                Manifest::select(&bytes, within)
                    .map_err(|reason| Error::BadManifest { id: *base, reason })?
            }
        };
        let mut now: Vec<WalkEntry> = Vec::new();
        for rel in &kept {
            let p = abs.join(rel);
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", &p, e)),
            };
            if super::walk::temp_writer_pid(rel.rsplit('/').next().unwrap_or(rel)).is_some() {
                continue;
            }
            let mut top = super::walk::walk(&p)?;
            if meta.is_dir() {
                for e in &mut top.entries {
                    e.rel = format!("{rel}/{}", e.rel);
                }
                now.push(super::walk::entry_of(&p, rel.to_string(), &meta)?);
            } else {
                for e in &mut top.entries {
                    e.rel = rel.to_string();
                }
            }
            now.extend(top.entries);
        }
        now.sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
        now.dedup_by(|a, b| a.rel == b.rel);
        now.par_iter_mut().try_for_each(|e| -> Result<()> {
            let p = abs.join(&e.rel);
            match e.kind {
                Kind::Dir => {}
                Kind::Symlink => {
                    let t =
                        std::fs::read_link(&p).map_err(|err| Error::io("read link", &p, err))?;
                    let b = t.as_os_str().as_encoded_bytes();
                    e.stamp.size = b.len() as u64;
                    e.id = Some(ObjectId::of_bytes(b));
                }
                Kind::File => {
                    let (id, stamp, _) = hash_file(&p, false)?;
                    e.id = Some(id);
                    e.stamp = stamp;
                }
            }
            Ok(())
        })?;
        let hashed = now.iter().filter(|e| e.kind == Kind::File).count() as u64;
        let current: Vec<Entry> = now.into_iter().map(WalkEntry::into_entry).collect();
        let changes = diff(&old, &current);
        let files_before = files_before as i64;
        let files = files_before - old.iter().filter(|e| e.kind == Kind::File).count() as i64
            + current.iter().filter(|e| e.kind == Kind::File).count() as i64;
        Ok(StatusReport {
            dataset: dataset.to_string(),
            against: Some(*base),
            changes,
            files: files.max(0) as u64,
            hashed_files: hashed,
            other_datasets: Vec::new(),
            touched: Some(touched.len() as u64),
        })
    }

    /// Differences between two versions (possibly of different datasets).
    pub fn diff(
        &self,
        a: &DatasetRef,
        b: &DatasetRef,
    ) -> Result<(ObjectId, ObjectId, Vec<Change>)> {
        let va = self.resolve(a)?;
        let vb = self.resolve(b)?;
        let ma = self.manifest(&va.id)?;
        let mb = self.manifest(&vb.id)?;
        Ok((va.id, vb.id, diff(&ma.entries, &mb.entries)))
    }
}
