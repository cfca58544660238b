//! A sparse index of a version's manifest, so that the entries of a few
//! paths can be read without reading (and verifying) the whole manifest:
//! the manifest's entries cut into runs of about [`CHUNK`] bytes, each
//! run's first path, byte range and BLAKE3. Built from verified manifest
//! bytes; a run read back later is checked against its BLAKE3 before any
//! entry of it is believed, so the index is as safe as reading the whole
//! object, and a million-entry (60 MB) manifest is answered by reading
//! 64 KiB per touched path.
//!
//! The watcher keeps one per snapshot rule, for the version its directory
//! last equalled (`watch.db`, `docs/watch.md`), and `data status` from the
//! watch record reads through it ([`super::Store::status_touched`]).
//!
//! Encoding (little-endian): magic `TYMIDX1\0`, the manifest's id (32),
//! its length (u64), entry count (u64), file count (u64), chunk count
//! (u32), then per chunk: offset (u64), length (u32), BLAKE3 (32), first
//! path length (u32) and bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::manifest::{Entry, Reader, HEADER_LEN};
use super::ObjectId;

/// Target size of one indexed run of entries.
pub const CHUNK: usize = 64 << 10;
const MAGIC: &[u8; 8] = b"TYMIDX1\0";

/// One run of whole entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its first entry's path.
    pub first: String,
    /// Byte offset in the manifest.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// BLAKE3 of those bytes.
    pub hash: ObjectId,
}

/// The index of one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIndex {
    /// The manifest (the version id).
    pub manifest: ObjectId,
    /// Its length in bytes.
    pub len: u64,
    /// Its entries.
    pub entries: u64,
    /// Its files.
    pub files: u64,
    /// The runs, in order, covering every entry.
    pub chunks: Vec<Chunk>,
}

impl ManifestIndex {
    /// Index manifest `id` from its bytes, already verified against `id`.
    pub fn build(id: ObjectId, bytes: &[u8]) -> Result<ManifestIndex, String> {
        let mut r = Reader::new(bytes);
        let count = r.header()?;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut files = 0u64;
        // (offset, first path) of the run being built
        let mut open: Option<(usize, String)> = None;
        let close = |chunks: &mut Vec<Chunk>, start: usize, first: String, end: usize| {
            chunks.push(Chunk {
                first,
                offset: start as u64,
                len: (end - start) as u32,
                hash: ObjectId::of_bytes(&bytes[start..end]),
            });
        };
        for i in 0..count {
            let at = r.at;
            let e = r.entry(i)?;
            if e.kind == super::Kind::File {
                files += 1;
            }
            match &open {
                Some((start, _)) if at - start >= CHUNK => {
                    if let Some((start, first)) = open.take() {
                        close(&mut chunks, start, first, at);
                    }
                    open = Some((at, e.path.to_string()));
                }
                Some(_) => {}
                None => open = Some((at, e.path.to_string())),
            }
        }
        if let Some((start, first)) = open.take() {
            close(&mut chunks, start, first, r.at);
        }
        if r.at != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - r.at));
        }
        Ok(ManifestIndex {
            manifest: id,
            len: bytes.len() as u64,
            entries: count,
            files,
            chunks,
        })
    }

    /// The encoding stored by the watcher.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(68 + self.chunks.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.manifest.0);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&self.files.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.offset.to_le_bytes());
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.hash.0);
            out.extend_from_slice(&(c.first.len() as u32).to_le_bytes());
            out.extend_from_slice(c.first.as_bytes());
        }
        out
    }

    /// Decode and check that the runs tile the manifest after its header,
    /// in path order. Never panics on any input.
    pub fn decode(b: &[u8]) -> Result<ManifestIndex, String> {
        let mut r = Reader::new(b);
        if r.take(8)? != MAGIC {
            return Err("not a manifest index (bad magic)".into());
        }
        let manifest = ObjectId(r.array()?);
        let len = u64::from_le_bytes(r.array()?);
        let entries = u64::from_le_bytes(r.array()?);
        let files = u64::from_le_bytes(r.array()?);
        let n = u32::from_le_bytes(r.array()?) as usize;
        if n > b.len() / 48 {
            return Err(format!("chunk count {n} exceeds what the index can hold"));
        }
        let mut chunks: Vec<Chunk> = Vec::with_capacity(n);
        let mut next = HEADER_LEN as u64;
        for i in 0..n {
            let offset = u64::from_le_bytes(r.array()?);
            let clen = u32::from_le_bytes(r.array()?);
            let hash = ObjectId(r.array()?);
            let plen = u32::from_le_bytes(r.array()?) as usize;
            let first = std::str::from_utf8(r.take(plen)?)
                .map_err(|_| format!("chunk {i}: path is not UTF-8"))?
                .to_string();
            if offset != next || clen == 0 {
                return Err(format!("chunk {i}: runs do not tile the manifest"));
            }
            if chunks.last().is_some_and(|c| c.first >= first) {
                return Err(format!("chunk {i}: {first:?} is out of order"));
            }
            next = offset + u64::from(clen);
            chunks.push(Chunk {
                first,
                offset,
                len: clen,
                hash,
            });
        }
        if r.at != b.len() {
            return Err(format!("{} trailing bytes", b.len() - r.at));
        }
        if (n > 0 || entries > 0) && next != len {
            return Err(format!("runs end at {next}, the manifest at {len}"));
        }
        Ok(ManifestIndex {
            manifest,
            len,
            entries,
            files,
            chunks,
        })
    }

    /// The runs that may hold an entry at or below one of `roots` (sorted
    /// or not), in order, each once.
    pub fn chunks_for<'a>(&self, roots: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        let mut want: Vec<usize> = Vec::new();
        for root in roots {
            // Everything at or below `root` sorts in [root, root + '0')
            // ('0' follows '/'), with other names between that the caller
            // filters out.
            let mut hi = root.as_bytes().to_vec();
            hi.push(b'0');
            let lo = self
                .chunks
                .partition_point(|c| c.first.as_bytes() <= root.as_bytes())
                .saturating_sub(1);
            let end = self
                .chunks
                .partition_point(|c| c.first.as_bytes() < hi.as_slice());
            want.extend(lo..end.max(lo));
        }
        want.sort_unstable();
        want.dedup();
        want
    }

    /// Read the entries of manifest file `path` at or below `roots` that
    /// `keep` accepts, reading only the runs that can hold them and
    /// checking each against its BLAKE3. Returns them (in path order) and
    /// the bytes read.
    pub fn read_selected<'a>(
        &self,
        path: &Path,
        roots: impl IntoIterator<Item = &'a str>,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<Entry>, u64), ReadError> {
        let want = self.chunks_for(roots);
        let mut out = Vec::new();
        if want.is_empty() {
            return Ok((out, 0));
        }
        let f = File::open(path).map_err(ReadError::Io)?;
        let mut buf = Vec::new();
        let mut read = 0u64;
        for i in want {
            let c = &self.chunks[i];
            buf.resize(c.len as usize, 0);
            f.read_exact_at(&mut buf, c.offset).map_err(ReadError::Io)?;
            read += u64::from(c.len);
            if ObjectId::of_bytes(&buf) != c.hash {
                return Err(ReadError::Corrupt(format!(
                    "bytes {}..{} do not match the index",
                    c.offset,
                    c.offset + u64::from(c.len)
                )));
            }
            let mut r = Reader::new(&buf);
            let mut n = 0u64;
            while r.at < buf.len() {
                let e = r.entry(n).map_err(ReadError::Corrupt)?;
                n += 1;
                if keep(e.path) {
                    out.push(e.to_entry());
                }
            }
        }
        Ok((out, read))
    }
}

/// Why [`ManifestIndex::read_selected`] failed.
#[derive(Debug)]
pub enum ReadError {
    /// The manifest file could not be read.
    Io(std::io::Error),
    /// A run's bytes are not what the index says.
    Corrupt(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Manifest};

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            exec: false,
            size: if kind == Kind::File { 3 } else { 0 },
            id: if kind == Kind::File {
                ObjectId::of_bytes(path.as_bytes())
            } else {
                ObjectId::ZERO
            },
        }
    }

    /// 20,000 entries in 100 folders (plus names that sort between a
    /// folder and its children: `d007.txt`, `d007-x`).
    fn sample() -> Vec<Entry> {
        let mut v = Vec::new();
        for d in 0..100 {
            v.push(entry(&format!("d{d:03}"), Kind::Dir));
            for f in 0..198 {
                v.push(entry(&format!("d{d:03}/f{f:04}"), Kind::File));
            }
            v.push(entry(&format!("d{d:03}-x"), Kind::File));
            v.push(entry(&format!("d{d:03}.txt"), Kind::File));
        }
        v.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        v
    }

    #[test]
    fn runs_tile_the_manifest_and_survive_encoding() {
        let entries = sample();
        let bytes = Manifest::encode(&entries);
        let id = ObjectId::of_bytes(&bytes);
        let ix = ManifestIndex::build(id, &bytes).unwrap();
        assert!(ix.chunks.len() > 10, "{}", ix.chunks.len());
        assert_eq!(ix.entries, entries.len() as u64);
        assert_eq!(ix.files, 19_800 + 200);
        assert_eq!(ManifestIndex::decode(&ix.encode()).unwrap(), ix);
        // Garbage never panics and is refused.
        let enc = ix.encode();
        for cut in [0, 7, 40, 80, enc.len() - 1] {
            assert!(ManifestIndex::decode(&enc[..cut]).is_err());
        }
        let mut bad = enc.clone();
        bad[70] ^= 1;
        assert!(ManifestIndex::decode(&bad).is_err());
        // An empty manifest has no runs.
        let empty = Manifest::encode(&[]);
        let e = ManifestIndex::build(ObjectId::of_bytes(&empty), &empty).unwrap();
        assert!(e.chunks.is_empty());
        assert_eq!(ManifestIndex::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn reading_selected_paths_reads_only_their_runs_and_checks_them() {
        let entries = sample();
        let bytes = Manifest::encode(&entries);
        let id = ObjectId::of_bytes(&bytes);
        let ix = ManifestIndex::build(id, &bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, &bytes).unwrap();
        let under = |roots: &[&str], p: &str| {
            roots
                .iter()
                .any(|r| p == *r || (p.starts_with(r) && p.as_bytes()[r.len()] == b'/'))
        };
        for roots in [
            vec!["d007"],
            vec!["d000/f0000"],
            vec!["d099/f0197", "d050", "d050/f0001"],
            vec!["d007.txt", "nothing/here", "a", "zzz"],
        ] {
            let (got, read) = ix
                .read_selected(&path, roots.iter().copied(), |p| under(&roots, p))
                .unwrap();
            let want: Vec<Entry> = entries
                .iter()
                .filter(|e| under(&roots, &e.path))
                .cloned()
                .collect();
            assert_eq!(got, want, "{roots:?}");
            assert!(read < bytes.len() as u64 / 4, "{roots:?}: read {read}");
        }
        // A byte flipped in a run that is not read changes nothing; in one
        // that is read, it is caught.
        let far = ix.chunks.len() - 1;
        let mut corrupt = bytes.clone();
        corrupt[ix.chunks[far].offset as usize + 3] ^= 0x40;
        std::fs::write(&path, &corrupt).unwrap();
        let roots = ["d000/f0001"];
        let (got, _) = ix
            .read_selected(&path, roots, |p| under(&roots, p))
            .unwrap();
        assert_eq!(got.len(), 1);
        let last = entries.last().unwrap().path.clone();
        let r = ix.read_selected(&path, [last.as_str()], |p| p == last);
        assert!(matches!(r, Err(ReadError::Corrupt(_))), "{r:?}");
    }
}
