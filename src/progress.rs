//! Progress reporting for long operations, without tying the library to a UI.
//!
//! The library calls a [`Progress`]; the CLI implements it with progress bars
//! (only when stderr is a terminal), tests and the daemon pass [`NoProgress`].

/// Receives progress of a long operation. Implementations must be cheap: `inc`
/// is called from worker threads once per file.
pub trait Progress: Sync {
    /// A new phase begins (`"hashing"`, `"verifying"` …) with an optional total
    /// (files or bytes, as the phase says).
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more units of the current phase are done.
    fn inc(&self, n: u64);
    /// The operation ended (successfully or not); clear any display.
    fn finish(&self);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}
