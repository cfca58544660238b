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

/// Decode a pack index, checking its checksum; `Err` says what is wrong.
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
    Ok(body[16..]
        .chunks_exact(IDX_ENTRY)
        .map(|c| {
            (
                ObjectId(c[..32].try_into().expect("32 bytes")),
                u64::from_le_bytes(c[32..40].try_into().expect("8 bytes")),
                u64::from(u32::from_le_bytes(c[40..44].try_into().expect("4 bytes"))),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_round_trip_and_damage() {
        let e = vec![
            (ObjectId::of_bytes(b"b"), 48, 1),
            (ObjectId::of_bytes(b"a"), 12, 1),
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
}
