//! Maintenance: `fsck` (rehash every object, check every manifest and what it
//! references) and `gc` (delete objects no version or tag can reach).

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::manifest::{Kind, Manifest};
use super::objects::hash_file;
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
            FsckProblem::Stray { path } => write!(f, "stray file {}", path.display()),
        }
    }
}

/// What `fsck` checked and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsckReport {
    /// Objects rehashed.
    pub objects: u64,
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
    /// Leftover temporary files removed (from interrupted writers).
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
        let present: HashSet<ObjectId> = objects.iter().filter_map(|o| o.0).collect();
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
            bytes: bytes.into_inner(),
            manifests: roots.len() as u64,
            problems,
        })
    }

    /// Delete objects that no version or tag reaches, and leftover temp
    /// files. Holds the store lock exclusively, so no `add` runs meanwhile.
    /// Refuses to run if a manifest is missing or unreadable (it could not
    /// tell what that version needs).
    pub fn gc(&self, dry_run: bool, progress: &dyn Progress) -> Result<GcReport> {
        let _lock = self.lock(true)?;
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
                None => {}
            }
        }
        let mut temp_files = 0;
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
            temp_files,
            dry_run,
        })
    }
}
