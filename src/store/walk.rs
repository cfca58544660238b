//! Walking a directory tree into sorted entries, in parallel, never following
//! symlinks. Only UTF-8 names are accepted; FIFOs, sockets and devices are
//! refused with the path named. A checkout's temporary files
//! (`.trainyard-tmp-<pid>-<ns>-<n>`) are never entries: they are returned
//! apart, so that `add` and `status` ignore them and `checkout` can remove
//! those of dead writers.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::manifest::{Entry, Kind};
use super::objects::FileStamp;
use super::{Error, ObjectId, Result};

/// Names Trainyard itself leaves in checkout directories while writing:
/// `.trainyard-tmp-<pid>-<ns>-<n>` (writer pid, time, counter).
pub(crate) const TEMP_PREFIX: &str = ".trainyard-tmp-";

/// The writer's pid if `name` is exactly a checkout temp name
/// (`.trainyard-tmp-<pid>-<ns>-<n>`, all decimal); `None` for anything else,
/// so a user's own `.trainyard-tmp-notes` is an ordinary file.
pub(crate) fn temp_writer_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.split('-');
    let mut field = || {
        parts
            .next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let pid = field()?.parse().ok()?;
    field()?;
    field()?;
    parts.next().is_none().then_some(pid)
}

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// The entries, sorted by path bytes.
    pub entries: Vec<WalkEntry>,
    /// Checkout temp files (not directories) found, relative to the root:
    /// never entries.
    pub temps: Vec<String>,
}

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

/// The entry of one path whose metadata is at hand.
pub(crate) fn entry_of(path: &Path, rel: String, meta: &fs::Metadata) -> Result<WalkEntry> {
    entry(path, rel, meta)
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
/// Checkout temp files below a directory are set apart in [`Walk::temps`].
pub(crate) fn walk(root: &Path) -> Result<Walk> {
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
        return Ok(Walk {
            entries: vec![entry(root, name.to_string(), &meta)?],
            temps: Vec::new(),
        });
    }
    // One shared vector that every directory appends to: a large Vec grows
    // by mremap without copying, where concatenating per-directory vectors
    // would hold every entry twice at the peak (1M files: ~100 MB more).
    let out = Mutex::new(Walk::default());
    walk_dir(root.to_path_buf(), String::new(), &out)?;
    let mut out = out.into_inner().map_err(|_| panicked(root))?;
    out.entries
        .par_sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    out.temps.sort();
    Ok(out)
}

fn panicked(dir: &Path) -> Error {
    Error::io(
        "walk",
        dir,
        std::io::Error::other("a walker thread panicked"),
    )
}

fn walk_dir(abs: PathBuf, rel: String, all: &Mutex<Walk>) -> Result<()> {
    let rd = fs::read_dir(&abs).map_err(|e| Error::io("read directory", &abs, e))?;
    let mut out = Vec::new();
    let mut temps = Vec::new();
    let mut subdirs: Vec<(PathBuf, String)> = Vec::new();
    for de in rd {
        let de = de.map_err(|e| Error::io("read directory", &abs, e))?;
        let path = de.path();
        let name = de
            .file_name()
            .into_string()
            .map_err(|_| Error::NonUtf8Path(path.clone()))?;
        let meta = de.metadata().map_err(|e| Error::io("stat", &path, e))?;
        let is_temp = !meta.is_dir() && temp_writer_pid(&name).is_some();
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if is_temp {
            temps.push(child_rel);
            continue;
        }
        let e = entry(&path, child_rel, &meta)?;
        if e.kind == Kind::Dir {
            subdirs.push((path, e.rel.clone()));
        }
        out.push(e);
    }
    {
        let mut all = all.lock().map_err(|_| panicked(&abs))?;
        all.entries.extend(out);
        all.temps.extend(temps);
    }
    subdirs
        .into_par_iter()
        .try_for_each(|(p, r)| walk_dir(p, r, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert_eq!(
            temp_writer_pid(".trainyard-tmp-123-1700000000000-7"),
            Some(123)
        );
        for not in [
            ".trainyard-tmp-notes",
            ".trainyard-tmp-123-456",
            ".trainyard-tmp-123-456-7-8",
            ".trainyard-tmp--456-7",
            ".trainyard-tmp-12a-456-7",
            "trainyard-tmp-1-2-3",
            ".trainyard-tmp-99999999999-1-2",
        ] {
            assert_eq!(temp_writer_pid(not), None, "{not}");
        }
    }

    #[test]
    fn temps_are_set_apart_from_entries() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("a"), b"a").unwrap();
        fs::write(d.path().join("sub/.trainyard-tmp-1-2-3"), b"x").unwrap();
        fs::write(d.path().join(".trainyard-tmp-notes"), b"mine").unwrap();
        let w = walk(d.path()).unwrap();
        let rels: Vec<&str> = w.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, [".trainyard-tmp-notes", "a", "sub"]);
        assert_eq!(w.temps, ["sub/.trainyard-tmp-1-2-3"]);
    }
}
