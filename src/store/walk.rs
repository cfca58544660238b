//! Walking a directory tree into sorted entries, in parallel, never following
//! symlinks. Only UTF-8 names are accepted; FIFOs, sockets and devices are
//! refused with the path named.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::manifest::{Entry, Kind};
use super::objects::FileStamp;
use super::{Error, ObjectId, Result};

/// Names Trainyard itself leaves in checkout directories while writing.
pub(crate) const TEMP_PREFIX: &str = ".trainyard-tmp-";

/// One path found by a walk, with what we know of its content so far.
#[derive(Debug, Clone)]
pub(crate) struct WalkEntry {
    pub rel: String,
    pub kind: Kind,
    pub exec: bool,
    pub stamp: FileStamp,
    /// The content id, once known (from the stat cache or by hashing).
    pub id: Option<ObjectId>,
    /// Hashed or checked during this operation (so the stat cache should learn it).
    pub fresh: bool,
    /// The stat cache vouches that the object was in the store at the
    /// current gc generation.
    pub present: bool,
}

impl WalkEntry {
    /// The manifest fields: (path, kind, exec, size, id).
    pub fn parts(&self) -> (&str, Kind, bool, u64, ObjectId) {
        let (size, id) = match self.kind {
            Kind::Dir => (0, ObjectId::ZERO),
            _ => (self.stamp.size, self.id.unwrap_or(ObjectId::ZERO)),
        };
        (
            &self.rel,
            self.kind,
            self.kind == Kind::File && self.exec,
            size,
            id,
        )
    }

    /// The manifest entry, moving the path.
    pub fn into_entry(self) -> Entry {
        let (_, kind, exec, size, id) = self.parts();
        Entry {
            path: self.rel,
            kind,
            exec,
            size,
            id,
        }
    }
}

fn classify(path: &Path, meta: &fs::Metadata) -> Result<(Kind, bool)> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        Ok((Kind::Symlink, false))
    } else if ft.is_dir() {
        Ok((Kind::Dir, false))
    } else if ft.is_file() {
        Ok((Kind::File, meta.permissions().mode() & 0o100 != 0))
    } else {
        let kind = if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_char_device() {
            "character device"
        } else {
            "unknown"
        };
        Err(Error::UnsupportedFileType {
            path: path.to_path_buf(),
            kind,
        })
    }
}

fn entry(path: &Path, rel: String, meta: &fs::Metadata) -> Result<WalkEntry> {
    let (kind, exec) = classify(path, meta)?;
    let mut stamp = FileStamp::of(meta);
    if kind == Kind::Dir {
        stamp.size = 0;
    }
    Ok(WalkEntry {
        rel,
        kind,
        exec,
        stamp,
        id: None,
        fresh: false,
        present: false,
    })
}

/// Walk `root`. A directory yields all its descendants (not itself) with
/// paths relative to it; a file or symlink yields one entry named after it.
/// `skip` names top-level-or-deeper file names to leave out (checkout temp files).
pub(crate) fn walk(root: &Path, skip_temp: bool) -> Result<Vec<WalkEntry>> {
    let meta = fs::symlink_metadata(root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(root.to_path_buf())
        } else {
            Error::io("stat", root, e)
        }
    })?;
    if !meta.is_dir() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::NonUtf8Path(root.to_path_buf()))?;
        return Ok(vec![entry(root, name.to_string(), &meta)?]);
    }
    // One shared vector that every directory appends to: a large Vec grows
    // by mremap without copying, where concatenating per-directory vectors
    // would hold every entry twice at the peak (1M files: ~100 MB more).
    let out = Mutex::new(Vec::new());
    walk_dir(root.to_path_buf(), String::new(), skip_temp, &out)?;
    let mut out = out.into_inner().map_err(|_| {
        Error::io(
            "walk",
            root,
            std::io::Error::other("a walker thread panicked"),
        )
    })?;
    out.par_sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

fn walk_dir(abs: PathBuf, rel: String, skip_temp: bool, all: &Mutex<Vec<WalkEntry>>) -> Result<()> {
    let rd = fs::read_dir(&abs).map_err(|e| Error::io("read directory", &abs, e))?;
    let mut out = Vec::new();
    let mut subdirs: Vec<(PathBuf, String)> = Vec::new();
    for de in rd {
        let de = de.map_err(|e| Error::io("read directory", &abs, e))?;
        let path = de.path();
        let name = de
            .file_name()
            .into_string()
            .map_err(|_| Error::NonUtf8Path(path.clone()))?;
        if skip_temp && name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let meta = de.metadata().map_err(|e| Error::io("stat", &path, e))?;
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let e = entry(&path, child_rel, &meta)?;
        if e.kind == Kind::Dir {
            subdirs.push((path, e.rel.clone()));
        }
        out.push(e);
    }
    all.lock()
        .map_err(|_| {
            Error::io(
                "walk",
                &abs,
                std::io::Error::other("a walker thread panicked"),
            )
        })?
        .extend(out);
    subdirs
        .into_par_iter()
        .try_for_each(|(p, r)| walk_dir(p, r, skip_temp, all))
}
