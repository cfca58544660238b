//! Maintenance: `fsck` (rehash every object, check every manifest and what it
//! references) and `gc` (delete objects no version or tag can reach).

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::manifest::{Kind, Manifest};
use super::objects::hash_file;
use super::pack;
use super::{Error, ObjectId, Result, Store};
use crate::progress::Progress;

/// One thing `fsck` found wrong.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum FsckProblem {
    /// The object's bytes do not hash to its name.
    Corrupt {
        /// The object id (its file name).
        id: ObjectId,
        /// The object's file.
        path: PathBuf,
    },
    /// An object a version needs is absent.
    Missing {
        /// The missing object.
        id: ObjectId,
        /// `dataset@version` and path that reference it.
        referenced_by: String,
    },
    /// A manifest that cannot be decoded.
    BadManifest {
        /// The manifest id.
        id: ObjectId,
        /// `dataset@version`.
        referenced_by: String,
        /// Why.
        reason: String,
    },
    /// A pack that cannot be read, is damaged, or lacks objects its index names.
    BadPack {
        /// The pack id.
        id: ObjectId,
        /// Its file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file in the objects directory whose name is not an object id.
    Stray {
        /// The file.
        path: PathBuf,
    },
}

impl std::fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsckProblem::Corrupt { id, path } => {
                write!(
                    f,
                    "corrupt object {id} ({}): content does not match its id",
                    path.display()
                )
            }
            FsckProblem::Missing { id, referenced_by } => {
                write!(f, "missing object {id}, needed by {referenced_by}")
            }
            FsckProblem::BadManifest {
                id,
                referenced_by,
                reason,
            } => write!(f, "bad manifest {id} ({referenced_by}): {reason}"),
            FsckProblem::BadPack { id, path, reason } => {
                write!(f, "bad pack {id} ({}): {reason}", path.display())
            }
            FsckProblem::Stray { path } => write!(f, "stray file {}", path.display()),
        }
    }
}

/// What `fsck` checked and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsckReport {
    /// Loose objects rehashed.
    pub objects: u64,
    /// Packs verified.
    pub packs: u64,
    /// Objects inside those packs.
    pub packed_objects: u64,
    /// Bytes rehashed.
    pub bytes: u64,
    /// Manifests (versions and tags) checked.
    pub manifests: u64,
    /// Problems found; empty means the store is sound.
    pub problems: Vec<FsckProblem>,
}

/// What `gc` deleted (or would delete, with `dry_run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcReport {
    /// Objects kept.
    pub kept: u64,
    /// Unreachable objects deleted (or to delete).
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Live packed objects copied into new packs (packs that had dead objects).
    pub repacked: u64,
    /// Leftover temporary files and unindexed packs removed (from interrupted writers).
    pub temp_files: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
}

impl Store {
    /// Every object file: (id or None for a stray name, path, size).
    fn list_objects(&self) -> Result<Vec<(Option<ObjectId>, PathBuf, u64)>> {
        let root = self.objects.root();
        let fan: Vec<PathBuf> = (0..=255u8).map(|i| root.join(format!("{i:02x}"))).collect();
        let lists: Vec<Vec<(Option<ObjectId>, PathBuf, u64)>> = fan
            .par_iter()
            .map(|d| -> Result<Vec<_>> {
                let mut v = Vec::new();
                let rd = match fs::read_dir(d) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
                    Err(e) => return Err(Error::io("read directory", d, e)),
                };
                let prefix = d.file_name().and_then(|n| n.to_str()).unwrap_or("");
                for de in rd {
                    let de = de.map_err(|e| Error::io("read directory", d, e))?;
                    let name = de.file_name();
                    let id = name
                        .to_str()
                        .and_then(|n| format!("{prefix}{n}").parse::<ObjectId>().ok());
                    let size = de.metadata().map(|m| m.len()).unwrap_or(0);
                    v.push((id, de.path(), size));
                }
                Ok(v)
            })
            .collect::<Result<_>>()?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// Rehash every object and check every version's manifest and objects.
    pub fn fsck(&self, progress: &dyn Progress) -> Result<FsckReport> {
        let objects = self.list_objects()?;
        let total: u64 = objects.iter().map(|o| o.2).sum();
        progress.phase("verifying objects", Some(total));
        let bytes = AtomicU64::new(0);
        let mut problems: Vec<FsckProblem> = objects
            .par_iter()
            .filter_map(|(id, path, size)| {
                let r = match id {
                    None if is_temp(path) => None,
                    None => Some(FsckProblem::Stray { path: path.clone() }),
                    Some(id) => match hash_file(path, false) {
                        Ok((got, _, _)) if got == *id => None,
                        _ => Some(FsckProblem::Corrupt {
                            id: *id,
                            path: path.clone(),
                        }),
                    },
                };
                bytes.fetch_add(*size, Ordering::Relaxed);
                progress.inc(*size);
                r
            })
            .collect();
        let corrupt: HashSet<ObjectId> = problems
            .iter()
            .filter_map(|p| match p {
                FsckProblem::Corrupt { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        let mut present: HashSet<ObjectId> = objects.iter().filter_map(|o| o.0).collect();
        let (pack_problems, packed, packs) = self.fsck_packs(progress)?;
        problems.extend(pack_problems);
        let packed_objects = packed.len() as u64;
        present.extend(packed);
        let roots = self.catalog.all_manifests()?;
        progress.phase("checking versions", Some(roots.len() as u64));
        let mut reported: HashSet<ObjectId> = HashSet::new();
        for (mid, label) in &roots {
            progress.inc(1);
            if !present.contains(mid) {
                if reported.insert(*mid) {
                    problems.push(FsckProblem::Missing {
                        id: *mid,
                        referenced_by: format!("{label} (its manifest)"),
                    });
                }
                continue;
            }
            if corrupt.contains(mid) {
                continue;
            }
            let bytes = fs::read(self.objects.path(mid))
                .map_err(|e| Error::io("read", &self.objects.path(mid), e))?;
            let m = match Manifest::decode(&bytes) {
                Ok(m) => m,
                Err(reason) => {
                    problems.push(FsckProblem::BadManifest {
                        id: *mid,
                        referenced_by: label.clone(),
                        reason,
                    });
                    continue;
                }
            };
            for e in m.entries.iter().filter(|e| e.kind != Kind::Dir) {
                if !present.contains(&e.id) && reported.insert(e.id) {
                    problems.push(FsckProblem::Missing {
                        id: e.id,
                        referenced_by: format!("{label}:{}", e.path),
                    });
                }
            }
        }
        progress.finish();
        Ok(FsckReport {
            objects: objects.len() as u64,
            packs,
            packed_objects,
            bytes: bytes.into_inner(),
            manifests: roots.len() as u64,
            problems,
        })
    }

    /// Verify every pack against its bytes and its index; returns the
    /// problems and every object id the index says is packed.
    fn fsck_packs(
        &self,
        progress: &dyn Progress,
    ) -> Result<(Vec<FsckProblem>, Vec<ObjectId>, u64)> {
        let packs = self.catalog.packs()?;
        progress.phase("verifying packs", Some(packs.iter().map(|p| p.1).sum()));
        let indexed: Vec<Vec<(ObjectId, u64, u64)>> = packs
            .iter()
            .map(|(id, _)| self.catalog.pack_entries(id))
            .collect::<Result<_>>()?;
        let problems: Vec<FsckProblem> = packs
            .par_iter()
            .zip(indexed.par_iter())
            .filter_map(|((id, size), index)| {
                progress.inc(*size);
                let path = pack::pack_path(&self.packs_dir, id);
                let bad = |reason: String| {
                    Some(FsckProblem::BadPack {
                        id: *id,
                        path: path.clone(),
                        reason,
                    })
                };
                let bytes = match fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => return bad(format!("cannot read it: {e}")),
                };
                match pack::scan(&bytes) {
                    Err(reason) => bad(reason),
                    Ok(found) => {
                        let found: HashSet<_> = found.into_iter().collect();
                        index
                            .iter()
                            .find(|e| !found.contains(e))
                            .and_then(|(oid, off, _)| {
                                bad(format!("its index names object {oid} at offset {off}, which the pack does not hold intact"))
                            })
                    }
                }
            })
            .collect();
        let n = packs.len() as u64;
        Ok((
            problems,
            indexed.into_iter().flatten().map(|e| e.0).collect(),
            n,
        ))
    }

    /// Delete objects that no version or tag reaches, and leftover temp
    /// files. Holds the store lock exclusively, so no `add` runs meanwhile.
    /// Refuses to run if a manifest is missing or unreadable (it could not
    /// tell what that version needs).
    pub fn gc(&self, dry_run: bool, progress: &dyn Progress) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        if !dry_run {
            // Before anything is deleted: stat cache entries stop vouching for objects.
            self.catalog.bump_gc_generation()?;
        }
        let mut reachable: HashSet<ObjectId> = HashSet::new();
        for (mid, _) in self.catalog.all_manifests()? {
            let m = self.manifest(&mid)?;
            reachable.insert(mid);
            reachable.extend(
                m.entries
                    .iter()
                    .filter(|e| e.kind != Kind::Dir)
                    .map(|e| e.id),
            );
        }
        let objects = self.list_objects()?;
        progress.phase("collecting", Some(objects.len() as u64));
        let (mut kept, mut deleted, mut deleted_bytes) = (0u64, 0u64, 0u64);
        let mut temp_files = 0;
        for (id, path, size) in objects {
            progress.inc(1);
            match id {
                Some(id) if reachable.contains(&id) => kept += 1,
                Some(_) => {
                    if !dry_run {
                        fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                    }
                    deleted += 1;
                    deleted_bytes += size;
                }
                None if is_temp(&path) => {
                    if !dry_run {
                        let _ = fs::remove_file(&path);
                    }
                    temp_files += 1;
                }
                None => {}
            }
        }
        let (mut repacked, mut dead_packed) = (0u64, 0u64);
        let mut removed = Vec::new();
        let mut writer = pack::PackWriter::new(&self.packs_dir, self.objects.tmp());
        let index = self.catalog.pack_index()?;
        for (pid, _) in self.catalog.packs()? {
            let entries = self.catalog.pack_entries(&pid)?;
            let live: Vec<_> = entries
                .iter()
                .filter(|e| reachable.contains(&e.0))
                .collect();
            kept += live.len() as u64;
            if live.len() == entries.len() {
                continue;
            }
            for e in entries.iter().filter(|e| !reachable.contains(&e.0)) {
                dead_packed += 1;
                deleted_bytes += e.2;
            }
            if !dry_run {
                for e in &live {
                    let bytes = self.read_object(&index, &e.0)?;
                    writer.add(e.0, &bytes)?;
                    repacked += 1;
                }
            }
            removed.push(pid);
        }
        deleted += dead_packed;
        let new_packs = writer.finish()?;
        if !dry_run && !removed.is_empty() {
            // New packs durable before the index points at them; old ones
            // deleted only after it no longer does.
            self.objects.flush()?;
            self.catalog.replace_packs(&removed, &new_packs)?;
            for pid in &removed {
                let path = pack::pack_path(&self.packs_dir, pid);
                fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        // Pack files no index row names: left by interrupted adds.
        let indexed: HashSet<ObjectId> = self.catalog.packs()?.into_iter().map(|p| p.0).collect();
        if let Ok(rd) = fs::read_dir(&self.packs_dir) {
            for de in rd.flatten() {
                let name = de.file_name();
                let id = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".pack"))
                    .and_then(|h| h.parse::<ObjectId>().ok());
                if id.is_none_or(|id| !indexed.contains(&id)) {
                    if !dry_run {
                        let _ = fs::remove_file(de.path());
                    }
                    temp_files += 1;
                }
            }
        }
        let tmp = self.objects.tmp();
        if let Ok(rd) = fs::read_dir(tmp) {
            for de in rd.flatten() {
                if !dry_run {
                    let _ = fs::remove_file(de.path());
                }
                temp_files += 1;
            }
        }
        progress.finish();
        Ok(GcReport {
            kept,
            deleted,
            deleted_bytes,
            repacked,
            temp_files,
            dry_run,
        })
    }
}

/// Whether a path in the objects directory is an interrupted writer's temp file.
fn is_temp(p: &std::path::Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp-"))
}
