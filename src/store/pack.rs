//! Pack files: small objects stored back to back in one file, so that a
//! directory of 100,000 small files costs a few files in the store, not
//! 100,000 inodes (git and restic do the same).
//!
//! A pack is immutable and named by the BLAKE3 of its bytes. It is
//! self-describing (every object carries its id and length), so its index can
//! be rebuilt by scanning it; the index that readers use lives in the catalog
//! (`packs`, `packed` tables) and is committed in the same transaction as the
//! version that first needs the pack. A pack no catalog row names is garbage.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, ObjectId, Result};

/// Objects smaller than this go into packs; larger ones are loose files.
pub(crate) const PACK_THRESHOLD: u64 = 128 << 10;
/// A pack is closed once it reaches this size.
pub(crate) const PACK_TARGET: u64 = 64 << 20;
/// Pack magic, the first 8 bytes.
pub(crate) const MAGIC: &[u8; 8] = b"TYPACK\0\0";
/// Pack format version.
pub(crate) const VERSION: u32 = 1;
/// Header bytes: magic + version.
pub(crate) const HEADER: u64 = 12;
/// Per-object header: id + u32 length.
pub(crate) const OBJECT_HEADER: u64 = 36;

/// Where a packed object's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub pack: ObjectId,
    /// Offset of the object's bytes (after its 36-byte header).
    pub offset: u64,
    pub len: u64,
}

/// A finished pack and what it holds, for the catalog.
#[derive(Debug, Clone)]
pub(crate) struct PackRecord {
    pub id: ObjectId,
    pub size: u64,
    /// (object, offset of its bytes, length)
    pub entries: Vec<(ObjectId, u64, u64)>,
}

/// Path of pack `id` under `packs_dir`.
pub(crate) fn pack_path(packs_dir: &Path, id: &ObjectId) -> PathBuf {
    packs_dir.join(format!("{}.pack", id.to_hex()))
}

/// Read one packed object's bytes (not verified: callers hash them).
pub(crate) fn read_at(packs_dir: &Path, loc: &Location) -> Result<Vec<u8>> {
    let path = pack_path(packs_dir, &loc.pack);
    let f = File::open(&path).map_err(|e| Error::io("open pack", &path, e))?;
    let mut buf = vec![0u8; loc.len as usize];
    f.read_exact_at(&mut buf, loc.offset)
        .map_err(|e| Error::io("read pack", &path, e))?;
    Ok(buf)
}

/// Parse a whole pack: every object's (id, offset, length), with its bytes
/// checked against its id. `Err` describes the first damage found.
pub(crate) fn scan(bytes: &[u8]) -> std::result::Result<Vec<(ObjectId, u64, u64)>, String> {
    if bytes.len() < HEADER as usize || &bytes[..8] != MAGIC {
        return Err("not a Trainyard pack (bad magic)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("unsupported pack version {version}"));
    }
    let mut at = HEADER as usize;
    let mut out = Vec::new();
    while at < bytes.len() {
        if bytes.len() - at < OBJECT_HEADER as usize {
            return Err(format!("truncated object header at offset {at}"));
        }
        let id = ObjectId(bytes[at..at + 32].try_into().expect("32 bytes"));
        let len = u32::from_le_bytes(bytes[at + 32..at + 36].try_into().expect("4 bytes")) as usize;
        let start = at + OBJECT_HEADER as usize;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("object {} at offset {at} runs past the end", id.short()))?;
        if ObjectId::of_bytes(&bytes[start..end]) != id {
            return Err(format!(
                "object {id} at offset {start} does not match its id"
            ));
        }
        out.push((id, start as u64, len as u64));
        at = end;
    }
    Ok(out)
}

/// Writes new small objects into packs during one operation. Not shared
/// between processes: each `add` writes its own packs.
pub(crate) struct PackWriter {
    packs_dir: PathBuf,
    tmp_dir: PathBuf,
    current: Option<Open>,
    done: Vec<PackRecord>,
    ids: HashSet<ObjectId>,
}

struct Open {
    file: BufWriter<tempfile::NamedTempFile>,
    hasher: blake3::Hasher,
    size: u64,
    entries: Vec<(ObjectId, u64, u64)>,
}

impl PackWriter {
    pub fn new(packs_dir: &Path, tmp_dir: &Path) -> PackWriter {
        PackWriter {
            packs_dir: packs_dir.to_path_buf(),
            tmp_dir: tmp_dir.to_path_buf(),
            current: None,
            done: Vec::new(),
            ids: HashSet::new(),
        }
    }

    /// Append an object (no-op if this writer already has it). Returns
    /// whether it was new.
    pub fn add(&mut self, id: ObjectId, bytes: &[u8]) -> Result<bool> {
        if !self.ids.insert(id) {
            return Ok(false);
        }
        if self.current.is_none() {
            let t = tempfile::Builder::new()
                .prefix(".tmp-pack-")
                .tempfile_in(&self.tmp_dir)
                .map_err(|e| Error::io("create a temporary pack in", &self.tmp_dir, e))?;
            let mut o = Open {
                file: BufWriter::with_capacity(1 << 20, t),
                hasher: blake3::Hasher::new(),
                size: 0,
                entries: Vec::new(),
            };
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&VERSION.to_le_bytes());
            o.write(&header, &self.tmp_dir)?;
            self.current = Some(o);
        }
        let o = self.current.as_mut().expect("opened above");
        let mut h = [0u8; OBJECT_HEADER as usize];
        h[..32].copy_from_slice(&id.0);
        h[32..].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        o.write(&h, &self.tmp_dir)?;
        let offset = o.size;
        o.write(bytes, &self.tmp_dir)?;
        o.entries.push((id, offset, bytes.len() as u64));
        if o.size >= PACK_TARGET {
            self.close_current()?;
        }
        Ok(true)
    }

    fn close_current(&mut self) -> Result<()> {
        let Some(o) = self.current.take() else {
            return Ok(());
        };
        let id = ObjectId::from(o.hasher.finalize());
        let mut entries = o.entries;
        // Sorted by id, the catalog inserts them almost in key order.
        entries.sort_unstable_by_key(|e| e.0);
        let t = o
            .file
            .into_inner()
            .map_err(|e| Error::io("write pack", &self.tmp_dir, e.into_error()))?;
        super::objects::start_writeback(t.as_file());
        t.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io("chmod", t.path(), e))?;
        let dest = pack_path(&self.packs_dir, &id);
        t.persist(&dest)
            .map_err(|e| Error::io("rename pack into place", &dest, e.error))?;
        self.done.push(PackRecord {
            id,
            size: o.size,
            entries,
        });
        Ok(())
    }

    /// Close the open pack; return every pack written. The packs are in
    /// place but unreferenced until the caller commits their index.
    pub fn finish(mut self) -> Result<Vec<PackRecord>> {
        self.close_current()?;
        Ok(self.done)
    }
}

impl Open {
    fn write(&mut self, b: &[u8], dir: &Path) -> Result<()> {
        self.file
            .write_all(b)
            .map_err(|e| Error::io("write pack", dir, e))?;
        self.hasher.update(b);
        self.size += b.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_scan_read_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut w = PackWriter::new(d.path(), d.path());
        let objs: Vec<Vec<u8>> = (0..100u32)
            .map(|i| vec![i as u8; i as usize * 10])
            .collect();
        for o in &objs {
            w.add(ObjectId::of_bytes(o), o).unwrap();
        }
        assert!(!w.add(ObjectId::of_bytes(&objs[3]), &objs[3]).unwrap());
        let packs = w.finish().unwrap();
        assert_eq!(packs.len(), 1);
        let p = &packs[0];
        let bytes = fs::read(pack_path(d.path(), &p.id)).unwrap();
        assert_eq!(ObjectId::of_bytes(&bytes), p.id);
        let mut scanned = scan(&bytes).unwrap();
        scanned.sort_unstable_by_key(|e| e.0);
        assert_eq!(scanned, p.entries);
        for (id, off, len) in &p.entries {
            let b = read_at(
                d.path(),
                &Location {
                    pack: p.id,
                    offset: *off,
                    len: *len,
                },
            )
            .unwrap();
            assert_eq!(ObjectId::of_bytes(&b), *id);
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(scan(&bad).is_err());
        bad.truncate(50);
        assert!(scan(&bad).is_err());
    }
}
