//! Version manifests: the canonical, deterministic encoding of a directory
//! tree. A version's id is the BLAKE3 of its manifest's bytes, so the same
//! content gives the same id on any machine, in any walk order.
//!
//! Decoding validates everything a checkout relies on: sorted unique paths,
//! relative UTF-8 paths with no `.`/`..`/empty components, every parent
//! listed as a directory (so nothing can be written through a symlink).

use std::collections::HashSet;

use super::ObjectId;

/// The manifest magic, first 8 bytes.
pub const MAGIC: &[u8; 8] = b"TYMANIF\0";
/// The manifest encoding version.
pub const VERSION: u32 = 1;
/// Bytes before the first entry: magic, version, entry count.
pub(crate) const HEADER_LEN: usize = 20;

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file; its object holds the content.
    File,
    /// A symbolic link; its object holds the target path bytes. Never followed.
    Symlink,
    /// A directory; no object.
    Dir,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Symlink => 2,
            Kind::Dir => 3,
        }
    }
    fn from_code(c: u8) -> Option<Kind> {
        match c {
            1 => Some(Kind::File),
            2 => Some(Kind::Symlink),
            3 => Some(Kind::Dir),
            _ => None,
        }
    }
    /// A short name for display.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Dir => "dir",
        }
    }
}

/// One path in a version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Relative path, `/`-separated, UTF-8.
    pub path: String,
    /// File, symlink or directory.
    pub kind: Kind,
    /// The owner-execute bit (files only).
    pub exec: bool,
    /// Content length in bytes (the link target's length for symlinks, 0 for dirs).
    pub size: u64,
    /// The content's object id ([`ObjectId::ZERO`] for directories).
    pub id: ObjectId,
}

/// A decoded manifest: entries sorted by path bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, sorted by path (byte order), unique.
    pub entries: Vec<Entry>,
}

/// One line of a version's listing ([`Manifest::list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Relative path.
    pub path: String,
    /// File, symlink or directory.
    pub kind: Kind,
    /// The owner-execute bit (files only).
    pub exec: bool,
    /// Its size; a directory's is the sum of the files below it.
    pub size: u64,
    /// Its object (`None` for a directory).
    pub id: Option<ObjectId>,
}

/// Why a path may not appear in a manifest, or `None` if it may.
pub fn path_problem(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        return Some("empty path");
    }
    if p.starts_with('/') {
        return Some("absolute path");
    }
    if p.contains('\0') {
        return Some("NUL byte in path");
    }
    for c in p.split('/') {
        match c {
            "" => return Some("empty path component"),
            "." | ".." => return Some("'.' or '..' path component"),
            _ => {}
        }
    }
    None
}

impl Manifest {
    /// Total content bytes of files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum()
    }

    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.entries.iter().filter(|e| e.kind == Kind::File).count() as u64
    }

    /// Find an entry by path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The listing of `subpath` (surrounding `/` ignored; empty: the
    /// whole version): a directory's entries, one level down or, with
    /// `recursive`, everything below it; a file or symlink alone. `None`
    /// when the version has no such path.
    pub fn list(&self, subpath: &str, recursive: bool) -> Option<Vec<Listed>> {
        let sub = subpath.trim_matches('/');
        let at = if sub.is_empty() {
            None
        } else {
            Some(self.get(sub)?)
        };
        let prefix = if sub.is_empty() {
            String::new()
        } else {
            format!("{sub}/")
        };
        let depth = |p: &str| p.matches('/').count();
        let base_depth = if sub.is_empty() { 0 } else { depth(sub) + 1 };
        Some(
            self.entries
                .iter()
                .filter(|e| e.path == sub || e.path.starts_with(&prefix))
                .filter(|e| e.path != sub || at.is_some_and(|x| x.kind != Kind::Dir))
                .filter(|e| recursive || depth(&e.path) == base_depth || e.path == sub)
                .map(|e| Listed {
                    path: e.path.clone(),
                    kind: e.kind,
                    exec: e.exec,
                    size: if e.kind == Kind::Dir {
                        self.dir_bytes(&e.path)
                    } else {
                        e.size
                    },
                    id: (e.kind != Kind::Dir).then_some(e.id),
                })
                .collect(),
        )
    }

    /// The bytes of the files below directory `dir`.
    fn dir_bytes(&self, dir: &str) -> u64 {
        let p = format!("{dir}/");
        self.entries
            .iter()
            .filter(|x| x.kind == Kind::File && x.path.starts_with(&p))
            .map(|x| x.size)
            .sum()
    }

    /// The canonical encoding. `entries` must already be sorted and valid.
    pub fn encode(entries: &[Entry]) -> Vec<u8> {
        encode_parts(
            entries.len(),
            entries
                .iter()
                .map(|e| (e.path.as_str(), e.kind, e.exec, e.size, e.id)),
        )
    }

    /// Read a manifest the store itself wrote (its bytes already verified
    /// against its id) without building it: the entries whose path
    /// `keep` accepts, and the number of files in all. One pass, no
    /// allocation for the entries left out (a million-entry manifest in
    /// tens of milliseconds). Never panics on any input.
    pub fn select(
        bytes: &[u8],
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<Entry>, u64), String> {
        let mut r = Reader { b: bytes, at: 0 };
        let count = r.header()?;
        let (mut out, mut files) = (Vec::new(), 0u64);
        for i in 0..count {
            let e = r.entry(i)?;
            if e.kind == Kind::File {
                files += 1;
            }
            if keep(e.path) {
                out.push(e.to_entry());
            }
        }
        Ok((out, files))
    }

    /// Decode and validate. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let mut r = Reader { b: bytes, at: 0 };
        let count = r.header()?;
        // Each entry takes at least 46 bytes: refuse absurd counts before allocating.
        if count > (bytes.len() as u64) / 46 {
            return Err(format!(
                "entry count {count} exceeds what the manifest can hold"
            ));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
        let mut dirs: HashSet<String> = HashSet::new();
        for i in 0..count {
            let RawEntry {
                at,
                kind,
                flags,
                path,
                size,
                id,
            } = r.entry(i)?;
            if flags & !1 != 0 || (flags != 0 && kind != Kind::File) {
                return Err(format!(
                    "entry {i} at offset {at}: invalid flags {flags:#x}"
                ));
            }
            let path = path.to_string();
            if let Some(p) = path_problem(&path) {
                return Err(format!("entry {i}: {path:?}: {p}"));
            }
            if let Some(prev) = entries.last() {
                if prev.path.as_bytes() >= path.as_bytes() {
                    return Err(format!("entry {i}: {path:?} is out of order or repeated"));
                }
            }
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return Err(format!(
                        "entry {i}: {path:?}: its parent {parent:?} is not a directory of this manifest"
                    ));
                }
            }
            if kind == Kind::Dir {
                if size != 0 || id != ObjectId::ZERO {
                    return Err(format!("entry {i}: directory {path:?} has content"));
                }
                dirs.insert(path.clone());
            }
            entries.push(Entry {
                path,
                kind,
                exec: flags & 1 != 0,
                size,
                id,
            });
        }
        if r.at != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - r.at));
        }
        Ok(Manifest { entries })
    }
}

/// Encode `n` entries given as (path, kind, exec, size, id), already sorted
/// and valid, without materializing [`Entry`] values.
pub(crate) fn encode_parts<'a>(
    n: usize,
    entries: impl Iterator<Item = (&'a str, Kind, bool, u64, ObjectId)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + n * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    for (path, kind, exec, size, id) in entries {
        out.push(kind.code());
        out.push(u8::from(exec));
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&id.0);
    }
    out
}

/// Reads manifest bytes (and the index's, `mindex`) from the front.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    /// The offset of the next byte.
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, at: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("truncated at offset {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// The magic and version, checked; returns the entry count.
    pub(crate) fn header(&mut self) -> Result<u64, String> {
        if self.take(8)? != MAGIC {
            return Err("not a Trainyard manifest (bad magic)".into());
        }
        let version = u32::from_le_bytes(self.array()?);
        if version != VERSION {
            return Err(format!("unsupported manifest version {version}"));
        }
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Entry `i` as stored: its offset, kind, flags, path, size and id.
    pub(crate) fn entry(&mut self, i: u64) -> Result<RawEntry<'a>, String> {
        let at = self.at;
        let kind_code = self.array::<1>()?[0];
        let kind = Kind::from_code(kind_code)
            .ok_or_else(|| format!("entry {i} at offset {at}: unknown kind {kind_code}"))?;
        let flags = self.array::<1>()?[0];
        let len = u32::from_le_bytes(self.array()?) as usize;
        let path = std::str::from_utf8(self.take(len)?)
            .map_err(|_| format!("entry {i} at offset {at}: path is not UTF-8"))?;
        let size = u64::from_le_bytes(self.array()?);
        let id = ObjectId(self.array()?);
        Ok(RawEntry {
            at,
            kind,
            flags,
            path,
            size,
            id,
        })
    }
}

/// One entry as read, before the manifest's rules are checked.
pub(crate) struct RawEntry<'a> {
    at: usize,
    pub(crate) kind: Kind,
    flags: u8,
    pub(crate) path: &'a str,
    size: u64,
    id: ObjectId,
}

impl RawEntry<'_> {
    /// The entry, trusting the bytes (the store's own, verified).
    pub(crate) fn to_entry(&self) -> Entry {
        Entry {
            path: self.path.to_string(),
            kind: self.kind,
            exec: self.flags & 1 != 0,
            size: self.size,
            id: self.id,
        }
    }
}

/// How a path differs between two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the newer side.
    Added,
    /// Only in the older side.
    Deleted,
    /// In both, with different content, kind or exec bit.
    Modified,
}

/// One difference between two versions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// What happened.
    pub change: ChangeKind,
    /// The path.
    pub path: String,
    /// The entry on the old side.
    pub old: Option<Entry>,
    /// The entry on the new side.
    pub new: Option<Entry>,
}

/// Differences from `a` to `b`, in path order. Directories are reported only
/// where a path changes between directory and something else.
pub fn diff(a: &[Entry], b: &[Entry]) -> Vec<Change> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    let push = |out: &mut Vec<Change>, change, old: Option<&Entry>, new: Option<&Entry>| {
        let e = old.or(new).expect("one side present");
        if old.is_none_or(|o| o.kind == Kind::Dir) && new.is_none_or(|n| n.kind == Kind::Dir) {
            return;
        }
        out.push(Change {
            change,
            path: e.path.clone(),
            old: old.cloned(),
            new: new.cloned(),
        })
    };
    while i < a.len() || j < b.len() {
        let ord = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path.as_bytes().cmp(y.path.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                push(&mut out, ChangeKind::Deleted, Some(&a[i]), None);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                push(&mut out, ChangeKind::Added, None, Some(&b[j]));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&a[i], &b[j]);
                if x.kind != y.kind || x.id != y.id || x.exec != y.exec || x.size != y.size {
                    push(&mut out, ChangeKind::Modified, Some(x), Some(y));
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_one_level_or_all_with_directory_sizes() {
        let e = |path: &str, kind, size| Entry {
            path: path.into(),
            kind,
            exec: false,
            size,
            id: if kind == Kind::Dir {
                ObjectId::ZERO
            } else {
                ObjectId::of_bytes(path.as_bytes())
            },
        };
        let m = Manifest {
            entries: vec![
                e("a", Kind::Dir, 0),
                e("a/b", Kind::Dir, 0),
                e("a/b/y", Kind::File, 5),
                e("a/x", Kind::File, 3),
                e("z", Kind::File, 1),
            ],
        };
        let paths = |sub: &str, all: bool| -> Vec<(String, u64)> {
            m.list(sub, all)
                .unwrap()
                .into_iter()
                .map(|l| (l.path, l.size))
                .collect()
        };
        let own = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(p, n)| (p.to_string(), *n)).collect()
        };
        assert_eq!(paths("", false), own(&[("a", 8), ("z", 1)]));
        assert_eq!(paths("/a/", false), own(&[("a/b", 5), ("a/x", 3)]));
        assert_eq!(
            paths("a", true),
            own(&[("a/b", 5), ("a/b/y", 5), ("a/x", 3)])
        );
        assert_eq!(paths("a/x", false), own(&[("a/x", 3)]));
        let dir = m.list("", false).unwrap();
        assert_eq!(dir[0].id, None, "a directory has no object");
        assert_eq!(dir[1].id, Some(ObjectId::of_bytes(b"z")));
        assert!(m.list("nope", false).is_none());
    }

    fn file(p: &str, c: &[u8]) -> Entry {
        Entry {
            path: p.into(),
            kind: Kind::File,
            exec: false,
            size: c.len() as u64,
            id: ObjectId::of_bytes(c),
        }
    }
    fn dir(p: &str) -> Entry {
        Entry {
            path: p.into(),
            kind: Kind::Dir,
            exec: false,
            size: 0,
            id: ObjectId::ZERO,
        }
    }

    #[test]
    fn round_trip() {
        let es = vec![file("a.txt", b"x"), dir("a"), file("a/b", b"yy")];
        let mut sorted = es.clone();
        sorted.sort_by(|x, y| x.path.as_bytes().cmp(y.path.as_bytes()));
        let bytes = Manifest::encode(&sorted);
        let m = Manifest::decode(&bytes).unwrap();
        assert_eq!(m.entries, sorted);
        assert_eq!(m.file_count(), 2);
        assert_eq!(m.file_bytes(), 3);
    }

    #[test]
    fn rejects_unsafe_and_unordered() {
        for bad in [
            vec![file("../x", b"")],
            vec![file("/etc/passwd", b"")],
            vec![file("a//b", b"")],
            vec![file("b", b""), file("a", b"")],
            vec![file("a", b""), file("a/b", b"")], // parent is a file
            vec![file("x/y", b"")],                 // parent missing
        ] {
            let bytes = Manifest::encode(&bad);
            assert!(Manifest::decode(&bytes).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        let good = Manifest::encode(&[dir("d"), file("d/f", b"hello")]);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            let mut b = good.clone();
            let n = rng.usize(1..4);
            for _ in 0..n {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            let _ = Manifest::decode(&b);
        }
    }

    #[test]
    fn diff_reports_changes() {
        let a = vec![file("a", b"1"), file("b", b"2"), file("c", b"3")];
        let b = vec![file("a", b"1"), file("b", b"22"), file("d", b"4")];
        let d = diff(&a, &b);
        let kinds: Vec<_> = d.iter().map(|c| (c.change, c.path.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeKind::Modified, "b"),
                (ChangeKind::Deleted, "c"),
                (ChangeKind::Added, "d")
            ]
        );
    }
}
