//! A native reader for the `.wandb` transaction logs that the `wandb` Python
//! client (0.31, Go `wandb-core`) writes for each run, offline runs included.
//!
//! Layers, bottom up:
//! - `record`: framing (file header, 32 KiB blocks, CRC-checked chunks) into
//!   record payloads, with diagnostics instead of failures;
//! - `proto`: hand-written prost messages for `wandb_internal.Record`;
//! - `wire`: history, summary and stats records read in place (borrowed
//!   slices of the payload), with `proto` as the fallback;
//! - `value`: the extended JSON (`NaN`, `Infinity`) inside `value_json`;
//! - `run`: folding records into a [`Run`] (identity, config, summary,
//!   history, system metrics, console, files), incrementally if wanted.
//!
//! The reader only reads: it never writes into a run directory, never talks
//! to a W&B server and does not depend on other Trainyard modules. It must not
//! panic on any input; damaged data becomes a [`Diagnostic`]. Format notes and
//! the checks made against real files: `docs/wandb-format.md`.

pub mod index;
pub mod meta;
pub mod proto;
pub mod record;
mod run;
pub mod sync;
pub mod usage;
pub mod value;
mod wire;

#[cfg(test)]
mod tests;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use prost::Message;

pub use record::{ChunkCounts, Diagnostic, DiagnosticKind, HeaderError};
pub use run::{
    read_run, read_run_dir, ArtifactRef, ConsoleLine, DirFile, Environment, FileKind, FilePolicy,
    HistoryRow, Run, RunDir, RunFile, RunReader, RunState, Stream, SystemSample, Update, Values,
};
pub use value::Value;

/// Errors of the `.wandb` reader. Damage inside a file is not an error (see
/// [`Diagnostic`]); these are the cases where nothing sensible can be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file's header is not a `.wandb` header this reader understands.
    #[error("{path}: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: HeaderError,
    },
    /// A run directory holds no `run-*.wandb` file.
    #[error(
        "no run-*.wandb file in {dir}; is this a wandb run directory (offline-run-… or run-…)?"
    )]
    NoRunFile {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A run directory holds several `.wandb` files and it is unclear which to read.
    #[error("several .wandb files in {dir} ({names}); open the one you mean with RunReader::new")]
    SeveralRunFiles {
        /// The directory searched.
        dir: PathBuf,
        /// Their names, comma separated.
        names: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One decoded record and where it starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// File offset of the record's first chunk.
    pub offset: u64,
    /// The decoded record.
    pub record: proto::Record,
}

/// Records read from a byte range of a `.wandb` file.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Records of the types this reader knows, in file order.
    pub records: Vec<LogRecord>,
    /// Well-formed records of types this reader does not interpret
    /// (artifacts, metrics, alerts, …); skipped.
    pub unknown_records: u64,
    /// Problems stepped over (framing damage, undecodable records, an
    /// incomplete tail), in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Where the next read should start (see [`record::Framed::resume_offset`]).
    pub resume_offset: u64,
    /// Chunk statistics.
    pub chunks: ChunkCounts,
}

/// Decodes the records in `bytes`, the content of a `.wandb` file from
/// absolute offset `base` on (0 for the whole file, or a `resume_offset`
/// returned earlier). Never panics.
pub fn read_bytes(bytes: &[u8], base: u64) -> Result<Batch, HeaderError> {
    let framed = record::deframe(bytes, base)?;
    let mut batch = Batch {
        records: Vec::with_capacity(framed.records.len()),
        unknown_records: 0,
        diagnostics: Vec::new(),
        resume_offset: framed.resume_offset,
        chunks: framed.chunks,
    };
    let mut diagnostics = framed.diagnostics.into_iter().peekable();
    for raw in framed.records {
        // keep diagnostics in file order
        while let Some(d) = diagnostics.next_if(|d| d.offset < raw.offset) {
            batch.diagnostics.push(d);
        }
        match proto::Record::decode(raw.payload.as_ref()) {
            Ok(record) if record.record_type.is_some() => batch.records.push(LogRecord {
                offset: raw.offset,
                record,
            }),
            Ok(_) => batch.unknown_records += 1,
            Err(e) => batch.diagnostics.push(Diagnostic {
                offset: raw.offset,
                kind: DiagnosticKind::UndecodableRecord {
                    error: e.to_string(),
                },
            }),
        }
    }
    batch.diagnostics.extend(diagnostics);
    Ok(batch)
}

/// Reads the records of the `.wandb` file at `path` from byte offset `from`
/// (0, or a [`Batch::resume_offset`] of an earlier call on the same file) to
/// its current end. Only the bytes after `from` are read from disk.
pub fn read_file(path: &Path, from: u64) -> Result<Batch> {
    read_file_range(path, from, None).map(|(batch, _)| batch)
}

/// Like [`read_file`], but reads at most about `max_len` bytes (rounded down
/// to a 32 KiB block boundary, at least one block), so a long file can be
/// read in windows with flat memory. Returns the batch and whether the read
/// reached the end of the file. When it did not, a record cut by the window's
/// end is not a diagnostic: [`Batch::resume_offset`] points at its start.
pub fn read_file_range(path: &Path, from: u64, max_len: Option<u64>) -> Result<(Batch, bool)> {
    let mut bytes = Vec::new();
    let at_eof = read_range_bytes(path, from, max_len, &mut bytes)?;
    let mut batch = read_bytes(&bytes, from).map_err(|source| Error::Header {
        path: path.to_path_buf(),
        source,
    })?;
    if !at_eof {
        batch
            .diagnostics
            .retain(|d| d.kind != DiagnosticKind::IncompleteTail);
    }
    Ok((batch, at_eof))
}

/// Reads the bytes [`read_file_range`] decodes into `bytes` (replacing what
/// it held, reusing its buffer); returns whether they reach the end of the file.
fn read_range_bytes(
    path: &Path,
    from: u64,
    max_len: Option<u64>,
    bytes: &mut Vec<u8>,
) -> Result<bool> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let end = match max_len {
        Some(max) => {
            let block = record::BLOCK_SIZE;
            let limit = ((from + max.max(block)) / block * block).max(from + 1);
            limit.min(len)
        }
        None => len,
    };
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    bytes.clear();
    bytes.reserve(end.saturating_sub(from) as usize);
    file.take(end.saturating_sub(from))
        .read_to_end(bytes)
        .map_err(io)?;
    Ok(from + bytes.len() as u64 >= len)
}
