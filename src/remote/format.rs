//! The remote layout (`docs/remote-format.md`): key names, the pack index
//! format, and the JSON records for versions and tags.
//!
//! ```text
//! trainyard-remote.json                      {"format": 1}
//! packs/<pack id>.pack                       small objects back to back (the store's pack format)
//! packs/<pack id>.idx                        its index (below); written after the pack
//! objects/<id[0..2]>/<id>                    a large object
//! manifests/<version id>                     a version's manifest
//! datasets/<name>/versions/<version id>.json a version record (written after all of the above)
//! datasets/<name>/tags/<tag>/<seq>.json      a tag's history; the highest seq is its value
//! ```
//!
//! Every key is written at most once (`PutMode::Create`); nothing is ever
//! overwritten, so concurrent pushers cannot lose each other's writes.

use serde::{Deserialize, Serialize};

use crate::store::ObjectId;

/// The remote format version.
pub const FORMAT: u32 = 1;
/// The marker key.
pub const MARKER: &str = "trainyard-remote.json";
/// Pack index magic.
pub const IDX_MAGIC: &[u8; 8] = b"TYIDX\0\0\0";
/// Bytes per index entry: id, u64 offset, u32 length.
const IDX_ENTRY: usize = 44;
/// Where the first object's bytes start in a pack: the 12-byte pack header
/// and the 36-byte object header. No index entry may point before it.
pub const PACK_FIRST_BYTES: u64 = 12 + 36;
/// The largest JSON record (marker, version record, tag step) a reader
/// accepts; it reads no further.
pub const MAX_RECORD: u64 = 1 << 20;
/// The largest pack index a reader accepts (a 32 MiB pack of empty objects
/// has an index of about 40 MiB).
pub const MAX_IDX: u64 = 256 << 20;
/// The largest manifest a reader accepts (about 20 million files).
pub const MAX_MANIFEST: u64 = 2 << 30;

/// The key of a pack.
pub fn pack_key(id: &ObjectId) -> String {
    format!("packs/{}.pack", id.to_hex())
}

/// The key of a pack's index.
pub fn idx_key(id: &ObjectId) -> String {
    format!("packs/{}.idx", id.to_hex())
}

/// The key of a loose object.
pub fn object_key(id: &ObjectId) -> String {
    let h = id.to_hex();
    format!("objects/{}/{}", &h[..2], h)
}

/// The key of a manifest.
pub fn manifest_key(id: &ObjectId) -> String {
    format!("manifests/{}", id.to_hex())
}

/// The key of a version record.
pub fn version_key(dataset: &str, id: &ObjectId) -> String {
    format!("datasets/{dataset}/versions/{}.json", id.to_hex())
}

/// The key of one step of a tag's history.
pub fn tag_key(dataset: &str, tag: &str, seq: u64) -> String {
    format!("datasets/{dataset}/tags/{tag}/{seq:020}.json")
}

/// A version record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Format version.
    pub format: u32,
    /// Dataset name.
    pub dataset: String,
    /// Version id (hex).
    pub id: String,
    /// Message.
    pub message: String,
    /// Author.
    pub author: String,
    /// Created, ns since the epoch.
    pub created_ns: i64,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One step of a tag's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// Format version.
    pub format: u32,
    /// The version it names (hex).
    pub version: String,
    /// Who moved it.
    pub author: String,
    /// When, ns since the epoch.
    pub set_ns: i64,
}

/// Encode a pack index: magic, u32 version, u32 count, entries sorted by id
/// (32-byte id, u64 offset of the object's bytes, u32 length; little
/// endian), then the BLAKE3 of everything before.
pub fn encode_idx(entries: &[(ObjectId, u64, u64)]) -> Vec<u8> {
    let mut e = entries.to_vec();
    e.sort_unstable_by_key(|x| x.0);
    let mut out = Vec::with_capacity(16 + e.len() * IDX_ENTRY + 32);
    out.extend_from_slice(IDX_MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
    for (id, off, len) in &e {
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&(*len as u32).to_le_bytes());
    }
    let h = blake3::hash(&out);
    out.extend_from_slice(h.as_bytes());
    out
}

/// Decode a pack index, checking its checksum, that its entries are sorted
/// by id without duplicates, and that each lies after the pack's first
/// object header without overflowing; `Err` says what is wrong. (Whether the
/// entries fit in the pack is checked against the pack's size by the reader.)
pub fn decode_idx(bytes: &[u8]) -> Result<Vec<(ObjectId, u64, u64)>, String> {
    if bytes.len() < 16 + 32 || &bytes[..8] != IDX_MAGIC {
        return Err("not a Trainyard pack index (bad magic or too short)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("pack index checksum mismatch".into());
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != 1 {
        return Err(format!("unsupported pack index version {version}"));
    }
    let n = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")) as usize;
    if body.len() != 16 + n * IDX_ENTRY {
        return Err(format!("pack index length does not match its {n} entries"));
    }
    let mut out: Vec<(ObjectId, u64, u64)> = Vec::with_capacity(n);
    for c in body[16..].chunks_exact(IDX_ENTRY) {
        let id = ObjectId(c[..32].try_into().expect("32 bytes"));
        let off = u64::from_le_bytes(c[32..40].try_into().expect("8 bytes"));
        let len = u64::from(u32::from_le_bytes(c[40..44].try_into().expect("4 bytes")));
        if out.last().is_some_and(|p| p.0 >= id) {
            return Err(format!(
                "pack index entries are not sorted by id, or object {id} is listed twice"
            ));
        }
        if off < PACK_FIRST_BYTES || off.checked_add(len).is_none() {
            return Err(format!(
                "pack index entry for object {id} has an impossible offset {off} (length {len})"
            ));
        }
        out.push((id, off, len));
    }
    Ok(out)
}

/// `s` with control characters (and the invisible Unicode format characters
/// that reorder or hide text) escaped as `\n`, `\r`, `\t` or `\u{1b}`, for
/// showing text that came from a remote in a terminal.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || hidden => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_round_trip_and_damage() {
        let e = vec![
            (ObjectId::of_bytes(b"b"), 48, 1),
            (ObjectId::of_bytes(b"a"), 85, 1),
        ];
        let enc = encode_idx(&e);
        let mut sorted = e.clone();
        sorted.sort_unstable_by_key(|x| x.0);
        assert_eq!(decode_idx(&enc).unwrap(), sorted);
        let mut bad = enc.clone();
        bad[20] ^= 1;
        assert!(decode_idx(&bad).unwrap_err().contains("checksum"));
        assert!(decode_idx(b"nope").is_err());
        assert!(decode_idx(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn idx_entries_must_be_sorted_and_inside_a_pack() {
        let (a, b) = (ObjectId::of_bytes(b"a"), ObjectId::of_bytes(b"b"));
        // encode_idx sorts; build unsorted and impossible ones by hand.
        let raw = |e: &[(ObjectId, u64, u32)]| {
            let mut out = IDX_MAGIC.to_vec();
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            for (id, off, len) in e {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&off.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            let h = blake3::hash(&out);
            out.extend_from_slice(h.as_bytes());
            out
        };
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        assert!(decode_idx(&raw(&[(lo, 48, 1), (hi, 85, 1)])).is_ok());
        let e = decode_idx(&raw(&[(hi, 48, 1), (lo, 85, 1)])).unwrap_err();
        assert!(e.contains("not sorted"), "{e}");
        assert!(decode_idx(&raw(&[(lo, 48, 1), (lo, 85, 1)])).is_err());
        let e = decode_idx(&raw(&[(lo, 12, 1)])).unwrap_err();
        assert!(e.contains("impossible offset"), "{e}");
        assert!(decode_idx(&raw(&[(lo, u64::MAX - 2, 9)])).is_err());
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_obey() {
        assert_eq!(printable("plain é ✓"), "plain é ✓");
        assert_eq!(
            printable("a\u{1b}[2J\r\n\t\u{7}\u{202e}\u{9b}z"),
            "a\\u{1b}[2J\\r\\n\\t\\u{7}\\u{202e}\\u{9b}z"
        );
    }
}
