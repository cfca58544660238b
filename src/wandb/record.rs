//! Framing of `.wandb` files: the 7-byte file header, 32 KiB blocks and
//! CRC-checked chunks (LevelDB log style) put back together into record
//! payloads.
//!
//! This module turns bytes into payload byte strings and diagnostics; it does
//! not decode protobuf and never panics, whatever the input. Byte layout:
//! `docs/wandb-format.md`.

use std::borrow::Cow;
use std::fmt;

/// Size of a block. Blocks are counted from file offset 0, so the file
/// header sits at the start of block 0.
pub const BLOCK_SIZE: u64 = 32 * 1024;
/// Length of the file header (`:W&B`, magic, version).
pub const FILE_HEADER_LEN: u64 = 7;
/// Length of a chunk header (CRC-32, length, type).
pub const CHUNK_HEADER_LEN: u64 = 7;
/// The first four bytes of every `.wandb` file.
pub const IDENT: [u8; 4] = *b":W&B";
/// Bytes 4–5 of the file, little-endian `0xBEE1`.
pub const MAGIC: u16 = 0xBEE1;
/// Byte 6 of the file: the only store version this reader knows.
pub const STORE_VERSION: u8 = 0;

/// Chunk type of a record that fits in one chunk.
pub const CHUNK_FULL: u8 = 1;
/// Chunk type of the first piece of a record.
pub const CHUNK_FIRST: u8 = 2;
/// Chunk type of an inner piece of a record.
pub const CHUNK_MIDDLE: u8 = 3;
/// Chunk type of the last piece of a record.
pub const CHUNK_LAST: u8 = 4;

/// Offsets and lengths above this are refused, so offset arithmetic cannot
/// overflow (2^62 bytes is far beyond any real file).
const MAX_OFFSET: u64 = 1 << 62;

/// The 7-byte file header this reader accepts.
pub fn file_header() -> [u8; 7] {
    let m = MAGIC.to_le_bytes();
    [
        IDENT[0],
        IDENT[1],
        IDENT[2],
        IDENT[3],
        m[0],
        m[1],
        STORE_VERSION,
    ]
}

/// The file does not start with a `.wandb` header this reader understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first bytes are not `:W&B` + magic `e1 be`.
    #[error("not a W&B transaction log: it starts with {found:02x?}, expected 3a 57 26 42 e1 be (`:W&B` + magic)")]
    NotWandb {
        /// Up to the first 7 bytes found.
        found: Vec<u8>,
    },
    /// The store version byte is not 0.
    #[error("W&B store version {version} is not supported (only version {STORE_VERSION}); a newer wandb client wrote this file")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// A resume offset inside the file header, or beyond any possible file.
    #[error("resume offset {offset} is unusable (inside the 7-byte file header, or absurdly large); resume from 0 or from an offset the reader returned")]
    BadOffset {
        /// The offset given.
        offset: u64,
    },
}

/// Something the reader noticed and stepped over. The data around it was
/// still read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// File offset the problem refers to (a chunk or record start).
    pub offset: u64,
    /// What happened.
    pub kind: DiagnosticKind,
}

/// The kinds of [`Diagnostic`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiagnosticKind {
    /// The file ends inside a record (a live writer, or a cut tail). The
    /// record starting at the offset was not returned; everything before was.
    IncompleteTail,
    /// A chunk's CRC-32 did not match; reading went on at `resumed_at`
    /// (the next block), and pieces of a record cut by the damage were dropped.
    ChecksumMismatch {
        /// Where reading went on.
        resumed_at: u64,
    },
    /// A chunk header claims a length that crosses its block's end.
    BadChunkLength {
        /// The length claimed.
        length: u16,
        /// Where reading went on.
        resumed_at: u64,
    },
    /// A chunk with a valid checksum has a type other than 1–4; it was skipped.
    UnknownChunkType {
        /// The type byte.
        chunk_type: u8,
    },
    /// A MIDDLE or LAST chunk without a FIRST before it; it was skipped.
    OrphanChunk {
        /// The type byte.
        chunk_type: u8,
    },
    /// A record's FIRST chunk was followed by the start of another record
    /// (or a zeroed block) before its LAST chunk; the partial record was dropped.
    UnterminatedRecord,
    /// A reassembled record is not a valid protobuf `Record`; it was skipped.
    UndecodableRecord {
        /// The decoder's message.
        error: String,
    },
    /// A `value_json` that is not (extended) JSON; the item was skipped.
    BadValue {
        /// Dotted key of the item.
        key: String,
        /// The parser's message.
        error: String,
    },
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.offset;
        match &self.kind {
            DiagnosticKind::IncompleteTail => write!(f, "incomplete tail at offset {o}"),
            DiagnosticKind::ChecksumMismatch { resumed_at } => write!(
                f,
                "checksum mismatch in chunk at offset {o}; skipped to offset {resumed_at}"
            ),
            DiagnosticKind::BadChunkLength { length, resumed_at } => write!(
                f,
                "chunk at offset {o} claims {length} bytes, past its block's end; skipped to offset {resumed_at}"
            ),
            DiagnosticKind::UnknownChunkType { chunk_type } => {
                write!(f, "unknown chunk type {chunk_type} at offset {o}; skipped")
            }
            DiagnosticKind::OrphanChunk { chunk_type } => write!(
                f,
                "chunk of type {chunk_type} at offset {o} continues no record; skipped"
            ),
            DiagnosticKind::UnterminatedRecord => {
                write!(f, "record at offset {o} was never finished; dropped")
            }
            DiagnosticKind::UndecodableRecord { error } => {
                write!(f, "record at offset {o} is not a valid protobuf Record ({error}); skipped")
            }
            DiagnosticKind::BadValue { key, error } => write!(
                f,
                "value of `{key}` in record at offset {o} is not JSON ({error}); skipped"
            ),
        }
    }
}

/// One reassembled record payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// File offset of the record's first chunk header.
    pub offset: u64,
    /// The payload (a serialized protobuf `Record`).
    pub payload: Cow<'a, [u8]>,
}

/// How many chunks of each type were read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChunkCounts {
    /// FULL chunks.
    pub full: u64,
    /// FIRST chunks.
    pub first: u64,
    /// MIDDLE chunks.
    pub middle: u64,
    /// LAST chunks.
    pub last: u64,
}

/// The result of de-framing a byte range.
#[derive(Debug, Clone, Default)]
pub struct Framed<'a> {
    /// Complete records, in file order.
    pub records: Vec<RawRecord<'a>>,
    /// Problems stepped over, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Where a later read should start to see only new records: just past the
    /// last complete record, or the start of an incomplete tail record.
    pub resume_offset: u64,
    /// Chunk statistics (chunks with a valid checksum only).
    pub chunks: ChunkCounts,
}

fn block_end(pos: u64) -> u64 {
    (pos / BLOCK_SIZE + 1) * BLOCK_SIZE
}

/// Checks the 7-byte file header at the start of `bytes`. `Ok(false)` means
/// the bytes are a strict prefix of a valid header (a file being created).
pub fn check_file_header(bytes: &[u8]) -> Result<bool, HeaderError> {
    let want = file_header();
    let n = bytes.len().min(7);
    if bytes[..n] != want[..n] {
        if n == 7 && bytes[..6] == want[..6] {
            return Err(HeaderError::UnsupportedVersion { version: bytes[6] });
        }
        return Err(HeaderError::NotWandb {
            found: bytes[..n].to_vec(),
        });
    }
    Ok(n == 7)
}

/// De-frames `bytes`, which hold the file's content starting at absolute
/// offset `base` (0 for a whole file, or a `resume_offset` from an earlier
/// call). With `base == 0` the file header is checked first.
///
/// Never panics. Data that cannot be read is reported in
/// [`Framed::diagnostics`] and skipped; only an unusable file header is an error.
pub fn deframe(bytes: &[u8], base: u64) -> Result<Framed<'_>, HeaderError> {
    let mut out = Framed {
        resume_offset: base,
        ..Framed::default()
    };
    let mut start = 0usize;
    if base == 0 {
        if !check_file_header(bytes)? {
            // an empty or half-written header: nothing to read yet
            if !bytes.is_empty() {
                out.diagnostics.push(Diagnostic {
                    offset: 0,
                    kind: DiagnosticKind::IncompleteTail,
                });
            }
            return Ok(out);
        }
        start = FILE_HEADER_LEN as usize;
    } else if !(FILE_HEADER_LEN..=MAX_OFFSET).contains(&base) {
        return Err(HeaderError::BadOffset { offset: base });
    }
    if bytes.len() as u64 > MAX_OFFSET {
        return Err(HeaderError::BadOffset {
            offset: bytes.len() as u64,
        });
    }
    Deframer {
        bytes,
        base,
        out: &mut out,
        pending: None,
        resyncing: false,
    }
    .run(start);
    Ok(out)
}

struct Pending {
    offset: u64,
    data: Vec<u8>,
}

struct Deframer<'a, 'o> {
    bytes: &'a [u8],
    base: u64,
    out: &'o mut Framed<'a>,
    pending: Option<Pending>,
    /// After damage: MIDDLE/LAST chunks are dropped silently until the next
    /// FULL or FIRST, since they belong to the damaged record.
    resyncing: bool,
}

impl<'a> Deframer<'a, '_> {
    fn diag(&mut self, offset: u64, kind: DiagnosticKind) {
        self.out.diagnostics.push(Diagnostic { offset, kind });
    }

    fn drop_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            self.diag(p.offset, DiagnosticKind::UnterminatedRecord);
        }
    }

    /// Skips from a damaged chunk at `abs` to the next block.
    fn skip_block(&mut self, abs: u64) -> u64 {
        // a record cut by the damage is dropped without a second diagnostic
        self.pending = None;
        self.resyncing = true;
        block_end(abs)
    }

    fn run(mut self, start: usize) {
        let len = self.bytes.len() as u64;
        let end = self.base + len;
        let mut abs = self.base + start as u64;
        loop {
            if abs >= end {
                // clean end, or the end of a zero-filled block trailer
                // (past `end` after skipping a damaged or zeroed block)
                self.finish(abs, None);
                return;
            }
            let block_left = block_end(abs) - abs;
            if block_left < CHUNK_HEADER_LEN {
                // block trailer: too short for a chunk header, zero-filled by the writer
                let next = abs + block_left;
                if next > end {
                    self.finish(abs, None);
                    return;
                }
                abs = next;
                continue;
            }
            if end - abs < CHUNK_HEADER_LEN {
                self.finish(abs, Some(abs));
                return;
            }
            let at = (abs - self.base) as usize;
            let h = &self.bytes[at..at + CHUNK_HEADER_LEN as usize];
            let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let length = u16::from_le_bytes([h[4], h[5]]);
            let chunk_type = h[6];
            if crc == 0 && length == 0 && chunk_type == 0 {
                // a zeroed region: the Go reader skips the rest of the block
                self.drop_pending();
                abs = block_end(abs);
                continue;
            }
            let data_start = abs + CHUNK_HEADER_LEN;
            let data_end = data_start + u64::from(length);
            if data_end > block_end(abs) {
                let resumed_at = block_end(abs);
                let pending_start = self.pending.as_ref().map(|p| p.offset);
                self.diag(abs, DiagnosticKind::BadChunkLength { length, resumed_at });
                if let Some(p) = pending_start {
                    self.diag(p, DiagnosticKind::UnterminatedRecord);
                }
                abs = self.skip_block(abs);
                continue;
            }
            if data_end > end {
                // the writer has not written (or the file lost) the rest
                self.finish(abs, Some(abs));
                return;
            }
            let data =
                &self.bytes[(data_start - self.base) as usize..(data_end - self.base) as usize];
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&[chunk_type]);
            hasher.update(data);
            if hasher.finalize() != crc {
                let resumed_at = block_end(abs);
                let pending_start = self.pending.as_ref().map(|p| p.offset);
                self.diag(abs, DiagnosticKind::ChecksumMismatch { resumed_at });
                if let Some(p) = pending_start {
                    self.diag(p, DiagnosticKind::UnterminatedRecord);
                }
                abs = self.skip_block(abs);
                continue;
            }
            self.chunk(abs, chunk_type, data, data_end);
            abs = data_end;
        }
    }

    fn chunk(&mut self, abs: u64, chunk_type: u8, data: &'a [u8], data_end: u64) {
        match chunk_type {
            CHUNK_FULL => {
                self.out.chunks.full += 1;
                self.drop_pending();
                self.resyncing = false;
                self.out.records.push(RawRecord {
                    offset: abs,
                    payload: Cow::Borrowed(data),
                });
                self.out.resume_offset = data_end;
            }
            CHUNK_FIRST => {
                self.out.chunks.first += 1;
                self.drop_pending();
                self.resyncing = false;
                self.pending = Some(Pending {
                    offset: abs,
                    data: data.to_vec(),
                });
            }
            CHUNK_MIDDLE | CHUNK_LAST => {
                if chunk_type == CHUNK_MIDDLE {
                    self.out.chunks.middle += 1;
                } else {
                    self.out.chunks.last += 1;
                }
                let Some(mut p) = self.pending.take() else {
                    // part of a damaged record (dropped quietly) or an orphan
                    if !self.resyncing {
                        self.diag(abs, DiagnosticKind::OrphanChunk { chunk_type });
                    }
                    self.out.resume_offset = data_end;
                    return;
                };
                p.data.extend_from_slice(data);
                if chunk_type == CHUNK_LAST {
                    self.out.records.push(RawRecord {
                        offset: p.offset,
                        payload: Cow::Owned(p.data),
                    });
                    self.out.resume_offset = data_end;
                } else {
                    self.pending = Some(p);
                }
            }
            _ => {
                self.drop_pending();
                self.diag(abs, DiagnosticKind::UnknownChunkType { chunk_type });
                self.out.resume_offset = data_end;
            }
        }
    }

    /// Ends the scan at `stop`; `partial_chunk_at` is set when the data ends
    /// inside a chunk.
    fn finish(&mut self, stop: u64, partial_chunk_at: Option<u64>) {
        let tail = match (&self.pending, partial_chunk_at) {
            (Some(p), _) => Some(p.offset),
            // a chunk cut short; even after damage it may be a new record,
            // so a later read starts there again
            (None, Some(at)) => Some(at),
            (None, None) => {
                self.out.resume_offset = self.out.resume_offset.max(stop);
                None
            }
        };
        if let Some(t) = tail {
            self.diag(t, DiagnosticKind::IncompleteTail);
            self.out.resume_offset = t;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal writer of the framing, for tests only: splits each payload
    /// into chunks the way the LevelDB log writer does.
    pub(crate) fn write_log(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = file_header().to_vec();
        for p in payloads {
            let mut rest: &[u8] = p;
            let mut first = true;
            loop {
                let left = (BLOCK_SIZE - out.len() as u64 % BLOCK_SIZE) as usize;
                if left < CHUNK_HEADER_LEN as usize {
                    out.resize(out.len() + left, 0);
                    continue;
                }
                let room = left - CHUNK_HEADER_LEN as usize;
                let n = rest.len().min(room);
                let last = n == rest.len();
                let t = match (first, last) {
                    (true, true) => CHUNK_FULL,
                    (true, false) => CHUNK_FIRST,
                    (false, false) => CHUNK_MIDDLE,
                    (false, true) => CHUNK_LAST,
                };
                let mut h = crc32fast::Hasher::new();
                h.update(&[t]);
                h.update(&rest[..n]);
                out.extend_from_slice(&h.finalize().to_le_bytes());
                out.extend_from_slice(&(n as u16).to_le_bytes());
                out.push(t);
                out.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                first = false;
                if last {
                    break;
                }
            }
        }
        out
    }

    fn payloads(f: &Framed<'_>) -> Vec<Vec<u8>> {
        f.records.iter().map(|r| r.payload.to_vec()).collect()
    }

    #[test]
    fn header_checks() {
        assert!(check_file_header(&file_header()).unwrap());
        assert!(!check_file_header(b":W&").unwrap());
        assert!(matches!(
            check_file_header(b":W&B\xe1\xbe\x01"),
            Err(HeaderError::UnsupportedVersion { version: 1 })
        ));
        assert!(matches!(
            check_file_header(b"PK\x03\x04"),
            Err(HeaderError::NotWandb { .. })
        ));
        let f = deframe(b":W&B\xe1", 0).unwrap();
        assert_eq!(f.diagnostics[0].to_string(), "incomplete tail at offset 0");
        assert_eq!(f.resume_offset, 0);
        assert!(deframe(b"", 0).unwrap().diagnostics.is_empty());
        assert!(matches!(
            deframe(b"xx", 3),
            Err(HeaderError::BadOffset { offset: 3 })
        ));
        assert!(deframe(b"xx", u64::MAX - 1).is_err());
    }

    #[test]
    fn trailer_padding_and_empty_first_chunk() {
        // record a fills block 0 up to 3 bytes before its end: a zero trailer
        let a = vec![b'a'; 32768 - 7 - 7 - 3];
        // record b then fills block 1 up to exactly 7 bytes before its end,
        // so record c starts with an empty FIRST chunk
        let b = vec![b'b'; 32768 - 7 - 7];
        let c = vec![b'c'; 100];
        let d = b"d".to_vec();
        let log = write_log(&[&a, &b, &c, &d]);
        assert_eq!(&log[32765..32768], &[0, 0, 0]);
        assert_eq!(log[65536 - 7 + 6], CHUNK_FIRST);
        assert_eq!(&log[65536 - 7 + 4..65536 - 7 + 6], &[0, 0]);
        let f = deframe(&log, 0).unwrap();
        assert!(f.diagnostics.is_empty(), "{:?}", f.diagnostics);
        assert_eq!(payloads(&f), vec![a, b, c, d]);
        assert_eq!(f.resume_offset, log.len() as u64);
        assert_eq!(f.records[2].offset, 65536 - 7);
        assert_eq!(
            f.chunks,
            ChunkCounts {
                full: 3,
                first: 1,
                middle: 0,
                last: 1
            }
        );
    }

    #[test]
    fn every_truncation_is_a_clean_prefix_or_an_incomplete_tail() {
        let big = vec![7u8; 80_000];
        let recs: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; 1 + usize::from(i) * 37])
            .chain([big])
            .chain((0..5u8).map(|i| vec![i; 3]))
            .collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let log = write_log(&refs);
        let full = deframe(&log, 0).unwrap();
        assert_eq!(payloads(&full), recs);
        // offsets where the next record starts: cutting there loses nothing
        let ends: Vec<u64> = std::iter::once(7)
            .chain(full.records.iter().map(|r| r.offset))
            .collect();
        let mut cut = 0usize;
        while cut <= log.len() {
            let f = deframe(&log[..cut], 0).unwrap();
            let got = payloads(&f);
            assert_eq!(got[..], recs[..got.len()], "cut {cut}");
            let tail: Vec<_> = f
                .diagnostics
                .iter()
                .filter(|d| d.kind == DiagnosticKind::IncompleteTail)
                .collect();
            assert_eq!(
                f.diagnostics.len(),
                tail.len(),
                "cut {cut}: {:?}",
                f.diagnostics
            );
            if cut >= 7 && (ends.contains(&(cut as u64)) || cut == log.len()) {
                assert!(tail.is_empty(), "cut {cut}");
            }
            if let Some(t) = tail.first() {
                assert_eq!(t.offset, f.resume_offset);
                // resuming from there with the whole file gives the rest
                let rest = deframe(&log[f.resume_offset as usize..], f.resume_offset).unwrap();
                assert!(rest.diagnostics.is_empty() || f.resume_offset == 0);
                if f.resume_offset > 0 {
                    assert_eq!(got.len() + rest.records.len(), recs.len(), "cut {cut}");
                }
            }
            cut += if cut < 2000 || cut > log.len() - 2000 {
                1
            } else {
                97
            };
        }
    }

    #[test]
    fn checksum_error_skips_to_next_block_and_resyncs() {
        let recs: Vec<Vec<u8>> = (0..2000u32).map(|i| i.to_le_bytes().repeat(10)).collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let mut log = write_log(&refs);
        let clean_log = log.clone();
        let clean = deframe(&clean_log, 0).unwrap();
        // damage the payload of the 10th record
        let victim = clean.records[10].offset as usize;
        log[victim + 7 + 3] ^= 0x40;
        let f = deframe(&log, 0).unwrap();
        assert_eq!(
            f.diagnostics,
            vec![Diagnostic {
                offset: victim as u64,
                kind: DiagnosticKind::ChecksumMismatch { resumed_at: 32768 }
            }]
        );
        assert_eq!(
            f.diagnostics[0].to_string(),
            format!("checksum mismatch in chunk at offset {victim}; skipped to offset 32768")
        );
        // records 0..10 survive, then everything from block 1 on
        let got = payloads(&f);
        assert_eq!(got[..10], recs[..10]);
        let first_after = clean
            .records
            .iter()
            .position(|r| r.offset >= 32768)
            .unwrap();
        // the record straddling the block boundary lost its FIRST chunk
        assert_eq!(got[10..], recs[first_after..]);
        assert_eq!(f.resume_offset, log.len() as u64);
    }

    #[test]
    fn zeroed_block_and_bad_lengths_do_not_stop_reading() {
        let recs: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().repeat(5)).collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let mut log = write_log(&refs);
        for b in &mut log[40_000..50_000] {
            *b = 0;
        }
        let f = deframe(&log, 0).unwrap();
        assert!(f.records.len() > 2000);
        assert!(f.records.iter().any(|r| r.offset >= 65536));
        // a length pointing past the block end
        let mut log2 = write_log(&refs);
        log2[7 + 4] = 0xff;
        log2[7 + 5] = 0xff;
        let f = deframe(&log2, 0).unwrap();
        assert!(matches!(
            f.diagnostics[0].kind,
            DiagnosticKind::BadChunkLength {
                length: 0xffff,
                resumed_at: 32768
            }
        ));
        assert!(f.records.iter().all(|r| r.offset >= 32768));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            let len = (next() % 200_000) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && bytes.len() >= 7 {
                bytes[..7].copy_from_slice(&file_header());
            }
            if round % 3 == 0 {
                // plausible chunk headers with small lengths and real types
                let mut i = 7;
                while i + 7 < bytes.len() {
                    bytes[i + 4] = (next() % 64) as u8;
                    bytes[i + 5] = 0;
                    bytes[i + 6] = (next() % 6) as u8;
                    i += 7 + usize::from(bytes[i + 4]);
                }
            }
            let _ = deframe(&bytes, 0);
            let base = 7 + next() % 100_000;
            let _ = deframe(&bytes, base);
        }
    }
}
