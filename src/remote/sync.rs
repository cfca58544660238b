//! Push, pull and list: moving dataset versions between the local store and
//! a remote in the layout of [`super::format`].
//!
//! Push order (the remote's invariant: a version record exists only when
//! everything it needs does): packs, then their indexes; large objects;
//! the manifest; the version record; tags. An interrupted push leaves at
//! worst packs without an index (ignored, and re-sent) and objects no
//! version names yet; a re-run sends only what is still missing.
//!
//! Pull trusts nothing the remote says until it is checked against what was
//! asked for: a version record must name the version its key names, the
//! manifest must hash to that id, every object must hash to its id and may
//! not be longer than the manifest says (reading stops there), and pack
//! index entries must lie inside their pack. Everything is checked before
//! the version is recorded, so a refused pull leaves the catalog as it was.
//! Garbage keys that a pull does not need (a tag step that is not a tag, an
//! index that is not an index, a name that is not an id) are skipped and
//! reported by key in [`PullReport::warnings`] and as `tracing` warnings;
//! text from the remote is escaped ([`format::printable`]) wherever it
//! names a key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::format::{self, TagRecord, VersionRecord};
use super::{Error, Remote, Result};
use crate::progress::Progress;
use crate::store::{DatasetRef, Export, Incoming, ObjectId, Store};

/// Small objects are packed up to this size before upload.
const REMOTE_PACK_TARGET: usize = 32 << 20;
/// Packs built and uploaded at once by a push (each is held in memory
/// whole): a few are enough to keep the connection busy.
const PACKS_IN_FLIGHT: usize = 3;
/// Objects at least this large are stored loose (the store's pack threshold).
const LOOSE: u64 = 128 << 10;
/// Ranges of one pack closer than this are fetched in one request.
const RANGE_GAP: u64 = 1 << 20;
/// A pull reads a pack in groups of objects spanning at most this much, so
/// its memory is bounded by `jobs` groups, not `jobs` packs.
const RANGE_MAX: u64 = 4 << 20;
/// Large objects stream in parts of this size (multipart above it).
const PART: usize = 16 << 20;

/// A version on the remote, with its tags.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteDataset {
    /// Dataset name.
    pub name: String,
    /// Versions, newest first.
    pub versions: Vec<VersionRecord>,
    /// Tags: name → version id.
    pub tags: BTreeMap<String, String>,
}

/// One version pushed.
#[derive(Debug, Clone, Serialize)]
pub struct PushedVersion {
    /// Dataset.
    pub dataset: String,
    /// Version id.
    pub id: String,
    /// Whether the remote lacked it.
    pub new: bool,
}

/// A tag's fate in a push.
#[derive(Debug, Clone, Serialize)]
pub struct TagOutcome {
    /// Dataset.
    pub dataset: String,
    /// Tag.
    pub tag: String,
    /// The version it names locally.
    pub version: String,
    /// `set`, `unchanged` or `conflict`.
    pub outcome: String,
    /// For conflicts, the reason.
    pub detail: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PushReport {
    /// The remote.
    pub remote: String,
    /// Versions considered.
    pub versions: Vec<PushedVersion>,
    /// Objects uploaded.
    pub objects_sent: u64,
    /// Packs uploaded.
    pub packs_sent: u64,
    /// Bytes uploaded (object bytes, pack headers excluded).
    pub bytes_sent: u64,
    /// Requests made.
    pub requests: u64,
    /// Tags.
    pub tags: Vec<TagOutcome>,
    /// Seconds.
    pub seconds: f64,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PullReport {
    /// The remote.
    pub remote: String,
    /// Dataset.
    pub dataset: String,
    /// Version id.
    pub version: String,
    /// Whether the version was new to the local store.
    pub new_version: bool,
    /// Objects fetched.
    pub objects_fetched: u64,
    /// Object bytes fetched.
    pub bytes_fetched: u64,
    /// Requests made.
    pub requests: u64,
    /// Tags set locally.
    pub tags_set: Vec<String>,
    /// Remote tags not copied because the local tag names another version.
    pub tags_kept: Vec<String>,
    /// Keys on the remote that were skipped as damaged or not in the
    /// format (each names the remote and the key, escaped).
    pub warnings: Vec<String>,
    /// Seconds.
    pub seconds: f64,
}

/// Push options.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Uploads in flight.
    pub jobs: usize,
    /// Move remote tags even if someone else moved them since our last sync.
    pub force_tags: bool,
}

/// One pack index entry: object, offset of its bytes, length.
type IdxEntry = (ObjectId, u64, u64);

/// Where the remote keeps each object.
#[derive(Debug, Default)]
struct RemoteIndex {
    packed: HashMap<ObjectId, (ObjectId, u64, u64)>,
    loose: HashSet<ObjectId>,
}

impl RemoteIndex {
    fn has(&self, id: &ObjectId) -> bool {
        self.loose.contains(id) || self.packed.contains_key(id)
    }
}

/// A remote plus the local cache directory, a request counter and the
/// warnings about keys skipped.
struct Conn<'a> {
    remote: &'a Remote,
    /// The directory of a `file://` remote, listed by [`dir_list`].
    dir: Option<PathBuf>,
    cache: PathBuf,
    requests: AtomicU64,
    warnings: Mutex<Vec<String>>,
}

fn hex_id(remote: &Remote, key: &str, s: &str) -> Result<ObjectId> {
    s.parse().map_err(|_| Error::Corrupt {
        remote: remote.name.clone(),
        key: key.to_string(),
        reason: format!("{s:?} is not a version/object id"),
    })
}

impl<'a> Conn<'a> {
    fn new(remote: &'a Remote, home: &crate::Home) -> Conn<'a> {
        let dir = match super::config::parse_url(&remote.config.url) {
            Ok(super::config::Location::Dir(p)) => Some(p),
            _ => None,
        };
        Conn {
            remote,
            dir,
            cache: home.root().join("remotes").join(&remote.name),
            requests: AtomicU64::new(0),
            warnings: Mutex::new(Vec::new()),
        }
    }

    fn corrupt(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            remote: self.remote.name.clone(),
            key: format::printable(key),
            reason: format::printable(&reason.into()),
        }
    }

    /// Report a key skipped as damaged or not in the format (once).
    fn warn(&self, key: &str, reason: &str) {
        let msg = format!(
            "remote {}: {}: {}; skipped",
            self.remote.name,
            format::printable(key),
            format::printable(reason)
        );
        tracing::warn!("{msg}");
        if let Ok(mut w) = self.warnings.lock() {
            if !w.contains(&msg) {
                w.push(msg);
            }
        }
    }

    /// For reads over many keys (listing versions or tags, choosing the
    /// latest): a key [`Error::Corrupt`] names is left out with a warning
    /// that names the remote and key, so one bad key cannot fail every pull.
    /// Other errors pass. A key asked for by name never goes through this:
    /// its damage is an error.
    fn unless_corrupt<T>(&self, r: Result<Option<T>>) -> Result<Option<T>> {
        match r {
            Err(Error::Corrupt { key, reason, .. }) => {
                self.warn(&key, &reason);
                Ok(None)
            }
            r => r,
        }
    }

    fn take_warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Read a whole key, refusing (and reading no further than) `max` bytes.
    async fn get(&self, rel: &str, max: u64) -> Result<Option<Bytes>> {
        let key = self.remote.key(rel);
        self.count();
        let got = match self.remote.store.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.remote.err("read", &key, e)),
        };
        let too_big = || {
            self.corrupt(
                rel,
                format!("larger than {max} bytes, the most a reader accepts here"),
            )
        };
        if got.meta.size > max {
            return Err(too_big());
        }
        let mut buf = Vec::with_capacity(got.meta.size as usize);
        let mut s = got.into_stream();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| self.remote.err("read", &key, e))?;
            if (buf.len() + chunk.len()) as u64 > max {
                return Err(too_big());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(buf)))
    }

    async fn put(&self, rel: &str, body: Bytes, create: bool) -> Result<bool> {
        let key = self.remote.key(rel);
        self.count();
        let mode = if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        match self
            .remote
            .store
            .put_opts(&key, PutPayload::from(body), PutOptions::from(mode))
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) if create => Ok(false),
            Err(e) => Err(self.remote.err("write", &key, e)),
        }
    }

    /// Keys under `rel` (recursively), relative to the remote root. A key
    /// that is not a valid path (control characters in a directory remote's
    /// file name, say) is skipped with a warning.
    async fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let prefix = self.remote.key(rel);
        self.count();
        if let Some(dir) = &self.dir {
            // object_store's directory listing ends at the first file name
            // it cannot represent, losing every key after it: walk it here.
            let (dir, rel_owned) = (dir.clone(), rel.to_string());
            let (items, bad) = tokio::task::spawn_blocking(move || dir_list(&dir, &rel_owned))
                .await
                .map_err(|e| {
                    self.remote.err(
                        "list",
                        &prefix,
                        object_store::Error::JoinError { source: e },
                    )
                })?
                .map_err(|e| self.remote.err("list", &prefix, e))?;
            for (k, reason) in bad {
                self.warn(&k, &reason);
            }
            return Ok(items);
        }
        let root_parts = self.remote.root.parts().count();
        let mut items: Vec<object_store::ObjectMeta> = Vec::new();
        let mut listing = self.remote.store.list(Some(&prefix));
        while let Some(item) = listing.next().await {
            match item {
                Ok(m) => items.push(m),
                Err(e @ object_store::Error::InvalidPath { .. }) => self.warn(rel, &e.to_string()),
                Err(e) => return Err(self.remote.err("list", &prefix, e)),
            }
        }
        // One request per 1000 keys, as S3 pages them.
        self.requests
            .fetch_add((items.len() / 1000) as u64, Ordering::Relaxed);
        Ok(items
            .into_iter()
            .map(|m| {
                let rel: Vec<String> = m
                    .location
                    .parts()
                    .skip(root_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (rel.join("/"), m.size)
            })
            .collect())
    }

    /// Check (or on push, write) the format marker.
    async fn check_marker(&self, create: bool) -> Result<()> {
        match self.get(format::MARKER, format::MAX_RECORD).await? {
            Some(b) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                        remote: self.remote.name.clone(),
                        key: format::MARKER.into(),
                        reason: e.to_string(),
                    })?;
                if v["format"].as_u64() != Some(u64::from(format::FORMAT)) {
                    return Err(Error::Corrupt {
                        remote: self.remote.name.clone(),
                        key: format::MARKER.into(),
                        reason: format!("remote format {} is not one this Trainyard knows ({}); upgrade Trainyard", v["format"], format::FORMAT),
                    });
                }
                Ok(())
            }
            None if create => {
                let body = serde_json::to_vec(&serde_json::json!({"format": format::FORMAT}))
                    .expect("json");
                self.put(format::MARKER, body.into(), true).await?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Which objects the remote has: every pack index (cached locally, they
    /// never change) and the loose objects. An index that is damaged, names
    /// a pack that is not there, or has an entry outside its pack is skipped
    /// with a warning (its objects count as absent).
    async fn index(&self, jobs: usize) -> Result<RemoteIndex> {
        let idx_dir = self.cache.join("idx");
        std::fs::create_dir_all(&idx_dir).map_err(|source| Error::Io {
            op: "create",
            path: idx_dir.clone(),
            source,
        })?;
        let listed = self.list("packs").await?;
        let mut idx = RemoteIndex::default();
        let mut pack_sizes: HashMap<ObjectId, u64> = HashMap::new();
        let mut ids: Vec<ObjectId> = Vec::new();
        for (k, size) in &listed {
            let name = k.strip_prefix("packs/").unwrap_or(k);
            if let Some(h) = name.strip_suffix(".idx") {
                match h.parse::<ObjectId>() {
                    Ok(id) => ids.push(id),
                    Err(_) => self.warn(k, "not a pack index key (packs/<64 hex digits>.idx)"),
                }
            } else if let Some(id) = name
                .strip_suffix(".pack")
                .and_then(|h| h.parse::<ObjectId>().ok())
            {
                pack_sizes.insert(id, *size);
            } else {
                self.warn(k, "not a pack or pack index key");
            }
        }
        let pack_sizes = &pack_sizes;
        let loaded: Vec<Option<(ObjectId, Vec<IdxEntry>)>> = stream::iter(ids)
            .map(|pack| {
                let idx_dir = &idx_dir;
                async move {
                    let key = format::idx_key(&pack);
                    let cached = idx_dir.join(format!("{}.idx", pack.to_hex()));
                    // A cached index was checked when cached; one damaged
                    // since is read again from the remote.
                    let from_cache = std::fs::read(&cached)
                        .ok()
                        .and_then(|b| format::decode_idx(&b).ok());
                    let (entries, fresh) = match from_cache {
                        Some(e) => (e, None),
                        None => {
                            let Some(b) = self.get(&key, format::MAX_IDX).await? else {
                                self.warn(&key, "listed but gone");
                                return Ok(None);
                            };
                            match format::decode_idx(&b) {
                                Ok(e) => (e, Some(b)),
                                Err(reason) => {
                                    self.warn(&key, &reason);
                                    return Ok(None);
                                }
                            }
                        }
                    };
                    let Some(&size) = pack_sizes.get(&pack) else {
                        self.warn(
                            &key,
                            &format!("its pack {} is not on the remote", format::pack_key(&pack)),
                        );
                        return Ok(None);
                    };
                    if let Some((id, off, len)) =
                        entries.iter().find(|(_, off, len)| off + len > size)
                    {
                        self.warn(
                            &key,
                            &format!(
                                "object {id} at bytes {off}..{} lies outside its {size}-byte pack",
                                off + len
                            ),
                        );
                        return Ok(None);
                    }
                    if let Some(b) = fresh {
                        let _ = crate::store::write_file_atomic(&cached, &b);
                    }
                    Ok::<_, Error>(Some((pack, entries)))
                }
            })
            .buffer_unordered(jobs.max(1) * 2)
            .try_collect()
            .await?;
        for (pack, entries) in loaded.into_iter().flatten() {
            for (id, off, len) in entries {
                idx.packed.entry(id).or_insert((pack, off, len));
            }
        }
        for (k, _) in self.list("objects").await? {
            if let Some(h) = k.rsplit('/').next() {
                if let Ok(id) = h.parse::<ObjectId>() {
                    if k == format::object_key(&id) {
                        idx.loose.insert(id);
                        continue;
                    }
                }
            }
            self.warn(&k, "not an object key (objects/<xx>/<64 hex digits>)");
        }
        Ok(idx)
    }

    /// The versions of `dataset` the remote lists; keys that are not
    /// `versions/<id>.json` are skipped with a warning.
    async fn version_ids(&self, dataset: &str) -> Result<Vec<ObjectId>> {
        let prefix = format!("datasets/{dataset}/versions");
        let mut out = Vec::new();
        for (k, _) in self.list(&prefix).await? {
            match k
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|h| h.parse::<ObjectId>().ok())
            {
                Some(id) if k == format::version_key(dataset, &id) => out.push(id),
                _ => self.warn(
                    &k,
                    "not a version record key (versions/<64 hex digits>.json)",
                ),
            }
        }
        Ok(out)
    }

    /// The version record of `id`, checked: it must be version `id` of
    /// `dataset` (a record naming another version under this key would make
    /// a pull of `id` fetch that one instead).
    async fn version_record(&self, dataset: &str, id: &ObjectId) -> Result<Option<VersionRecord>> {
        let key = format::version_key(dataset, id);
        let Some(b) = self.get(&key, format::MAX_RECORD).await? else {
            return Ok(None);
        };
        let r: VersionRecord =
            serde_json::from_slice(&b).map_err(|e| self.corrupt(&key, e.to_string()))?;
        if r.format != format::FORMAT {
            return Err(self.corrupt(
                &key,
                format!("record format {} is not {}", r.format, format::FORMAT),
            ));
        }
        if r.id != id.to_hex() {
            return Err(self.corrupt(
                &key,
                format!(
                    "the record names version {}, not {id} as its key does; refusing the substituted version",
                    format::printable(&r.id)
                ),
            ));
        }
        if r.dataset != dataset {
            return Err(self.corrupt(
                &key,
                format!(
                    "the record is of dataset {}, not {dataset}",
                    format::printable(&r.dataset)
                ),
            ));
        }
        Ok(Some(r))
    }

    /// A tag's current (seq, record) on the remote, checked: the step must
    /// be a tag record of this format naming a version id.
    async fn tag(&self, dataset: &str, tag: &str) -> Result<Option<(u64, TagRecord)>> {
        let prefix = format!("datasets/{dataset}/tags/{tag}");
        let mut best: Option<(u64, String)> = None;
        for (k, _) in self.list(&prefix).await? {
            let Some(seq) = k
                .strip_prefix(&format!("{prefix}/"))
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                self.warn(&k, "not a tag step key (tags/<tag>/<20 digits>.json)");
                continue;
            };
            if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                best = Some((seq, k));
            }
        }
        let Some((seq, key)) = best else {
            return Ok(None);
        };
        let b = self
            .get(&key, format::MAX_RECORD)
            .await?
            .ok_or_else(|| self.corrupt(&key, "listed but gone"))?;
        let r: TagRecord =
            serde_json::from_slice(&b).map_err(|e| self.corrupt(&key, e.to_string()))?;
        if r.format != format::FORMAT {
            return Err(self.corrupt(
                &key,
                format!("tag step format {} is not {}", r.format, format::FORMAT),
            ));
        }
        if r.version.parse::<ObjectId>().is_err() {
            return Err(self.corrupt(
                &key,
                format!("{} is not a version id", format::printable(&r.version)),
            ));
        }
        Ok(Some((seq, r)))
    }

    /// Tags on the remote for a dataset: name → (seq, version hex). A tag
    /// whose name is not a valid local tag name (in particular one that
    /// looks like a full version id, which would shadow that id) or whose
    /// current step is damaged is skipped with a warning: one bad tag must
    /// not stop every pull of the dataset.
    async fn tags(&self, dataset: &str) -> Result<BTreeMap<String, (u64, String)>> {
        let prefix = format!("datasets/{dataset}/tags");
        let mut names = BTreeMap::new();
        for (k, _) in self.list(&prefix).await? {
            let parts: Vec<&str> = k.split('/').collect();
            if parts.len() == 5 {
                names.entry(parts[3].to_string()).or_insert(k);
            } else {
                self.warn(&k, "not a tag step key (tags/<tag>/<20 digits>.json)");
            }
        }
        let mut out = BTreeMap::new();
        for (n, key) in names {
            if let Err(e) = crate::store::validate_tag_name(&n) {
                self.warn(&key, &e.to_string());
                continue;
            }
            if let Some((seq, r)) = self.unless_corrupt(self.tag(dataset, &n).await)? {
                out.insert(n, (seq, r.version));
            }
        }
        Ok(out)
    }

    fn tag_state_path(&self) -> PathBuf {
        self.cache.join("tags.json")
    }

    fn tag_state(&self) -> HashMap<String, u64> {
        std::fs::read(self.tag_state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_tag_state(&self, s: &HashMap<String, u64>) {
        let body = serde_json::to_vec_pretty(s).expect("json");
        if let Err(e) = crate::store::write_file_atomic(&self.tag_state_path(), &body) {
            tracing::warn!(error = %e, "could not record the remote tags seen");
        }
    }
}

/// The files below `rel` of a directory remote `dir`, as (key relative to
/// the remote, size), like `LocalFileSystem::list` (symlinks followed, its
/// `NAME#123` staging files left out), plus the names skipped because they
/// are not valid keys (not UTF-8, control characters, …) with the reason.
#[allow(clippy::type_complexity)]
fn dir_list(
    dir: &Path,
    rel: &str,
) -> object_store::Result<(Vec<(String, u64)>, Vec<(String, String)>)> {
    let io = |path: &Path, e: std::io::Error| object_store::Error::Generic {
        store: "directory",
        source: format!("{}: {e}", path.display()).into(),
    };
    let mut items = Vec::new();
    let mut bad = Vec::new();
    let rel = rel.trim_matches('/').to_string();
    let mut stack = vec![(dir.join(&rel), rel, 0usize)];
    while let Some((path, key, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path, e)),
        };
        for e in entries {
            let e = e.map_err(|e| io(&path, e))?;
            let name = e.file_name();
            let shown = name.to_string_lossy().to_string();
            let k = if key.is_empty() {
                shown.clone()
            } else {
                format!("{key}/{shown}")
            };
            let valid = name
                .to_str()
                .is_some_and(|n| object_store::path::PathPart::parse(n).is_ok() && !n.is_empty());
            if !valid {
                bad.push((
                    k,
                    "not a valid key (control or reserved characters, or not UTF-8)".to_string(),
                ));
                continue;
            }
            let p = e.path();
            // Follows symlinks, as object_store does; a dangling one is skipped.
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                // Keys are at most 5 levels deep; deeper is a loop or junk.
                if depth < 8 {
                    stack.push((p, k, depth + 1));
                }
            } else if m.is_file()
                && !shown
                    .split_once('#')
                    .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                items.push((k, m.len()));
            }
        }
    }
    items.sort();
    Ok((items, bad))
}

/// Upload one large object from its loose file, in parts.
async fn upload_loose(conn: &Conn<'_>, id: &ObjectId, path: &Path) -> Result<u64> {
    let key = conn.remote.key(&format::object_key(id));
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::Local(crate::store::Error::io("open", path, e)))?;
    let mut w = object_store::buffered::BufWriter::with_capacity(
        conn.remote.store.clone(),
        key.clone(),
        PART,
    );
    let failed = |source| Error::Upload {
        remote: conn.remote.name.clone(),
        url: conn.remote.config.url.clone(),
        key: key.to_string(),
        source,
    };
    let n = tokio::io::copy(&mut f, &mut w).await.map_err(failed)?;
    w.shutdown().await.map_err(failed)?;
    // A multipart upload is create + parts + complete.
    let parts = n.div_ceil(PART as u64).max(1);
    conn.requests
        .fetch_add(if parts > 1 { parts + 2 } else { 1 }, Ordering::Relaxed);
    Ok(n)
}

/// Push versions (`refs`) to `remote`: only what it lacks.
pub async fn push(
    store: &Store,
    home: &crate::Home,
    remote: &Remote,
    refs: &[DatasetRef],
    opts: PushOptions,
    progress: &dyn Progress,
) -> Result<PushReport> {
    let t0 = Instant::now();
    let conn = Conn::new(remote, home);
    conn.check_marker(true).await?;
    let mut exports: Vec<Export> = Vec::new();
    for r in refs {
        let e = store.export(r)?;
        if !exports
            .iter()
            .any(|x| x.info.id == e.info.id && x.info.dataset == e.info.dataset)
        {
            exports.push(e);
        }
    }
    let mut report = PushReport {
        remote: remote.name.clone(),
        ..PushReport::default()
    };
    // Versions the remote already has need nothing else.
    let mut on_remote: HashMap<String, HashSet<ObjectId>> = HashMap::new();
    for e in &exports {
        if !on_remote.contains_key(&e.info.dataset) {
            let ids = conn.version_ids(&e.info.dataset).await?;
            on_remote.insert(e.info.dataset.clone(), ids.into_iter().collect());
        }
    }
    let todo: Vec<&Export> = exports
        .iter()
        .filter(|e| !on_remote[&e.info.dataset].contains(&e.info.id))
        .collect();
    for e in &exports {
        report.versions.push(PushedVersion {
            dataset: e.info.dataset.clone(),
            id: e.info.id.to_hex(),
            new: todo
                .iter()
                .any(|t| t.info.id == e.info.id && t.info.dataset == e.info.dataset),
        });
    }
    if !todo.is_empty() {
        let index = conn.index(opts.jobs).await?;
        let mut seen = HashSet::new();
        let mut small: Vec<(ObjectId, u64)> = Vec::new();
        let mut large: Vec<(ObjectId, u64)> = Vec::new();
        for e in &todo {
            for (id, size) in e.objects() {
                if index.has(&id) || !seen.insert(id) {
                    continue;
                }
                if size < LOOSE {
                    small.push((id, size));
                } else {
                    large.push((id, size));
                }
            }
        }
        let total: u64 = small.iter().chain(&large).map(|o| o.1).sum();
        progress.phase("uploading", Some(total));
        // Plan packs of ~32 MiB.
        let mut plans: Vec<Vec<ObjectId>> = Vec::new();
        let mut cur = Vec::new();
        let mut cur_size = 0usize;
        for (id, size) in &small {
            cur.push(*id);
            cur_size += *size as usize + 36;
            if cur_size >= REMOTE_PACK_TARGET {
                plans.push(std::mem::take(&mut cur));
                cur_size = 0;
            }
        }
        if !cur.is_empty() {
            plans.push(cur);
        }
        let reader = store.object_reader()?;
        let reader = &reader;
        let conn_ref = &conn;
        let sent_bytes = AtomicU64::new(0);
        let sent_objects = AtomicU64::new(0);
        let packs_sent = AtomicU64::new(0);
        let (sb, so, ps) = (&sent_bytes, &sent_objects, &packs_sent);
        stream::iter(plans)
            .map(|plan| async move {
                let mut buf = Vec::with_capacity(REMOTE_PACK_TARGET + (1 << 20));
                buf.extend_from_slice(b"TYPACK\0\0");
                buf.extend_from_slice(&1u32.to_le_bytes());
                let mut entries = Vec::with_capacity(plan.len());
                let mut bytes = 0u64;
                for id in &plan {
                    let data = reader.read(id)?;
                    buf.extend_from_slice(&id.0);
                    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
                    entries.push((*id, buf.len() as u64, data.len() as u64));
                    buf.extend_from_slice(&data);
                    bytes += data.len() as u64;
                }
                let pack_id = ObjectId::of_bytes(&buf);
                conn_ref
                    .put(&format::pack_key(&pack_id), Bytes::from(buf), false)
                    .await?;
                // The index only after its pack: an index names a complete pack.
                conn_ref
                    .put(
                        &format::idx_key(&pack_id),
                        Bytes::from(format::encode_idx(&entries)),
                        false,
                    )
                    .await?;
                sb.fetch_add(bytes, Ordering::Relaxed);
                so.fetch_add(plan.len() as u64, Ordering::Relaxed);
                ps.fetch_add(1, Ordering::Relaxed);
                progress.inc(bytes);
                Ok::<_, Error>(())
            })
            .buffer_unordered(opts.jobs.clamp(1, PACKS_IN_FLIGHT))
            .try_collect::<Vec<()>>()
            .await?;
        stream::iter(large)
            .map(|(id, size)| async move {
                let path = reader
                    .loose_path(&id)
                    .ok_or(Error::Local(crate::store::Error::MissingObject(id)))?;
                // Rehash before sending: never spread a damaged object.
                if !store.verify_loose(&id)? {
                    return Err(Error::Local(crate::store::Error::CorruptObject {
                        id,
                        path,
                    }));
                }
                let n = upload_loose(conn_ref, &id, &path).await?;
                if n != size {
                    return Err(Error::Local(crate::store::Error::FileChanged(path)));
                }
                sb.fetch_add(n, Ordering::Relaxed);
                so.fetch_add(1, Ordering::Relaxed);
                progress.inc(n);
                Ok::<_, Error>(())
            })
            .buffer_unordered(opts.jobs.clamp(1, 4))
            .try_collect::<Vec<()>>()
            .await?;
        report.bytes_sent = sent_bytes.load(Ordering::Relaxed);
        report.objects_sent = sent_objects.load(Ordering::Relaxed);
        report.packs_sent = packs_sent.load(Ordering::Relaxed);
        // Manifests, then the version records that make versions visible.
        for e in &todo {
            conn.put(
                &format::manifest_key(&e.info.id),
                Bytes::from(e.manifest_bytes.clone()),
                false,
            )
            .await?;
            let rec = VersionRecord {
                format: format::FORMAT,
                dataset: e.info.dataset.clone(),
                id: e.info.id.to_hex(),
                message: e.info.message.clone(),
                author: e.info.author.clone(),
                created_ns: e.info.created_ns,
                files: e.info.files,
                bytes: e.info.bytes,
            };
            let body = serde_json::to_vec_pretty(&rec).expect("json");
            conn.put(
                &format::version_key(&e.info.dataset, &e.info.id),
                body.into(),
                true,
            )
            .await?;
        }
    }
    progress.finish();
    // Tags naming the pushed versions.
    let mut state = conn.tag_state();
    for e in &exports {
        for tag in &e.info.tags {
            let local = e.info.id.to_hex();
            let skey = format!("{}@{tag}", e.info.dataset);
            let current = conn.tag(&e.info.dataset, tag).await?;
            let mut out = TagOutcome {
                dataset: e.info.dataset.clone(),
                tag: tag.clone(),
                version: local.clone(),
                outcome: "unchanged".into(),
                detail: None,
            };
            let next = match &current {
                Some((seq, r)) if r.version == local => {
                    state.insert(skey.clone(), *seq);
                    None
                }
                Some((seq, r)) => {
                    if opts.force_tags || state.get(&skey) == Some(seq) {
                        Some(seq + 1)
                    } else {
                        out.outcome = "conflict".into();
                        out.detail = Some(
                            Error::TagConflict {
                                remote: remote.name.clone(),
                                dataset: e.info.dataset.clone(),
                                tag: tag.clone(),
                                theirs: r.version.clone(),
                                ours: local.clone(),
                            }
                            .to_string(),
                        );
                        None
                    }
                }
                None => Some(1),
            };
            if let Some(seq) = next {
                let rec = TagRecord {
                    format: format::FORMAT,
                    version: local.clone(),
                    author: crate::store::current_user(),
                    set_ns: crate::db::now_ns(),
                };
                let body = serde_json::to_vec_pretty(&rec).expect("json");
                // Create-only: of two pushers moving a tag at once, one wins.
                if conn
                    .put(
                        &format::tag_key(&e.info.dataset, tag, seq),
                        body.into(),
                        true,
                    )
                    .await?
                {
                    state.insert(skey.clone(), seq);
                    out.outcome = "set".into();
                } else {
                    let theirs = conn
                        .tag(&e.info.dataset, tag)
                        .await?
                        .map(|(_, r)| r.version)
                        .unwrap_or_default();
                    out.outcome = "conflict".into();
                    out.detail = Some(
                        Error::TagConflict {
                            remote: remote.name.clone(),
                            dataset: e.info.dataset.clone(),
                            tag: tag.clone(),
                            theirs,
                            ours: local.clone(),
                        }
                        .to_string(),
                    );
                }
            }
            report.tags.push(out);
        }
    }
    conn.save_tag_state(&state);
    report.requests = conn.requests.load(Ordering::Relaxed);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Resolve `reference` (a tag, a version id prefix of ≥ 4 hex digits, or
/// `latest`/none) on the remote.
async fn resolve_remote(
    conn: &Conn<'_>,
    dataset: &str,
    reference: Option<&str>,
) -> Result<VersionRecord> {
    let not_found = |what: String| Error::NotOnRemote {
        remote: conn.remote.name.clone(),
        what,
    };
    let ids = conn.version_ids(dataset).await?;
    if ids.is_empty() {
        return Err(not_found(format!("dataset {dataset}")));
    }
    let reference = reference.filter(|r| *r != "latest");
    let id = match reference {
        None => {
            // A damaged record is skipped (with a warning), not chosen.
            let mut best: Option<VersionRecord> = None;
            for id in &ids {
                if let Some(r) = conn.unless_corrupt(conn.version_record(dataset, id).await)? {
                    if best.as_ref().is_none_or(|b| r.created_ns > b.created_ns) {
                        best = Some(r);
                    }
                }
            }
            return best.ok_or_else(|| not_found(format!("versions of {dataset}")));
        }
        Some(r) => {
            // Only a valid tag name is looked up as a tag: never a full
            // version id, so a remote tag cannot stand in for an id.
            let tag = match crate::store::validate_tag_name(r) {
                Ok(()) => conn.tag(dataset, r).await?,
                Err(_) => None,
            };
            if let Some((_, t)) = tag {
                hex_id(
                    conn.remote,
                    &format!("datasets/{dataset}/tags/{r}"),
                    &t.version,
                )?
            } else {
                let is_hex = r.len() >= 4 && r.bytes().all(|b| b.is_ascii_hexdigit());
                let m: Vec<&ObjectId> = ids
                    .iter()
                    .filter(|id| is_hex && id.to_hex().starts_with(&r.to_ascii_lowercase()))
                    .collect();
                match m.as_slice() {
                    [one] => **one,
                    [] => return Err(not_found(format!("tag or version {dataset}@{r}"))),
                    _ => {
                        return Err(Error::Ambiguous {
                            remote: conn.remote.name.clone(),
                            dataset: dataset.to_string(),
                            reference: r.to_string(),
                            matches: m.len(),
                        })
                    }
                }
            }
        }
    };
    conn.version_record(dataset, &id)
        .await?
        .ok_or_else(|| not_found(format!("version {dataset}@{}", id.short())))
}

/// The versions (ids) and tags (name → version id) of `dataset` on `remote`.
pub async fn dataset_state(
    remote: &Remote,
    home: &crate::Home,
    dataset: &str,
) -> Result<(Vec<ObjectId>, BTreeMap<String, String>)> {
    let conn = Conn::new(remote, home);
    let ids = conn.version_ids(dataset).await?;
    let tags = conn
        .tags(dataset)
        .await?
        .into_iter()
        .map(|(t, (_, v))| (t, v))
        .collect();
    Ok((ids, tags))
}

/// Whether `remote` has version `id` of `dataset` (its record exists, so
/// everything it needs does).
pub async fn has_version(
    remote: &Remote,
    home: &crate::Home,
    dataset: &str,
    id: &ObjectId,
) -> Result<bool> {
    let conn = Conn::new(remote, home);
    Ok(conn.version_record(dataset, id).await?.is_some())
}

/// Fetch a version from `remote` into the store (nothing is checked out).
/// `source` is the provenance recorded with the version (default: the remote).
pub async fn fetch(
    store: &Store,
    home: &crate::Home,
    remote: &Remote,
    r: &DatasetRef,
    jobs: usize,
    source: Option<&str>,
    progress: &dyn Progress,
) -> Result<PullReport> {
    let t0 = Instant::now();
    let conn = Conn::new(remote, home);
    conn.check_marker(false).await?;
    let rec = resolve_remote(&conn, &r.dataset, r.reference.as_deref()).await?;
    // (version_record checked that the id is its key's.)
    let vid = hex_id(remote, &format!("datasets/{}/versions", r.dataset), &rec.id)?;
    let vkey = format::version_key(&r.dataset, &vid);
    // resolve_remote checks this already; a full id asked for is the id got.
    if let Some(want) = r
        .reference
        .as_deref()
        .and_then(|x| x.to_ascii_lowercase().parse::<ObjectId>().ok())
    {
        if want != vid {
            return Err(conn.corrupt(
                &vkey,
                format!("asked for version {want}, the remote answered {vid}"),
            ));
        }
    }
    let mkey = format::manifest_key(&vid);
    let mbytes = conn
        .get(&mkey, format::MAX_MANIFEST)
        .await?
        .ok_or_else(|| {
            conn.corrupt(&mkey, "the version record exists but its manifest does not")
        })?;
    let mut import = store.import()?;
    let manifest = import
        .put_manifest(&vid, &mbytes)
        .map_err(|e| Error::Corrupt {
            remote: remote.name.clone(),
            key: mkey.clone(),
            reason: e.to_string(),
        })?;
    let wanted: Vec<(ObjectId, u64)> = {
        let mut seen = HashSet::new();
        manifest
            .entries
            .iter()
            .filter(|e| e.kind != crate::store::Kind::Dir)
            .map(|e| (e.id, e.size))
            .filter(|(id, _)| seen.insert(*id))
            .collect()
    };
    let missing = store.missing(&wanted)?;
    let mut report = PullReport {
        remote: remote.name.clone(),
        dataset: r.dataset.clone(),
        version: rec.id.clone(),
        ..PullReport::default()
    };
    if !missing.is_empty() {
        let index = conn.index(jobs).await?;
        let mut by_pack: HashMap<ObjectId, Vec<(ObjectId, u64, u64)>> = HashMap::new();
        let mut loose = Vec::new();
        for (id, size) in &missing {
            // Large objects are stored loose; a pack index claiming one
            // would make a pull hold it in memory whole, so it is not used.
            let packed = index.packed.get(id);
            if *size >= LOOSE && index.loose.contains(id) {
                loose.push((*id, *size));
            } else if let Some((pack, off, len)) = packed {
                if *size >= LOOSE {
                    return Err(conn.corrupt(
                        &format::idx_key(pack),
                        format!(
                            "object {id} is {size} bytes and so stored loose, but only this index lists it (packed)"
                        ),
                    ));
                }
                if len != size {
                    return Err(Error::Corrupt {
                        remote: remote.name.clone(),
                        key: format::idx_key(pack),
                        reason: format!(
                            "object {} is {len} bytes in the index, {size} in the manifest",
                            id.short()
                        ),
                    });
                }
                by_pack.entry(*pack).or_default().push((*id, *off, *len));
            } else if index.loose.contains(id) {
                loose.push((*id, *size));
            } else {
                let skipped = conn.warnings.lock().map(|w| w.len()).unwrap_or(0);
                return Err(conn.corrupt(
                    &format::version_key(&r.dataset, &vid),
                    format!(
                        "object {id} of this version is on the remote neither packed nor loose{}",
                        if skipped > 0 {
                            " (keys were skipped as damaged: see the warnings above)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        let total: u64 = missing.iter().map(|m| m.1).sum();
        progress.phase("downloading", Some(total));
        let conn_ref = &conn;
        // Each pack: coalesced range reads of only the objects needed, in
        // groups spanning at most RANGE_MAX, so that at most `jobs` groups
        // (not whole packs) are in memory at once.
        let mut groups = Vec::new();
        for (pack, mut objs) in by_pack {
            objs.sort_unstable_by_key(|o| o.1);
            let mut start = 0;
            for i in 1..=objs.len() {
                let span = |j: usize| objs[j].1 + objs[j].2 - objs[start].1;
                if i == objs.len() || span(i) > RANGE_MAX {
                    groups.push((pack, objs[start..i].to_vec()));
                    start = i;
                }
            }
        }
        let mut results = stream::iter(groups)
            .map(|(pack, objs)| async move {
                let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
                for (_, off, len) in &objs {
                    match ranges.last_mut() {
                        Some(r) if *off <= r.end + RANGE_GAP => r.end = r.end.max(off + len),
                        _ => ranges.push(*off..off + len),
                    }
                }
                let key = conn_ref.remote.key(&format::pack_key(&pack));
                conn_ref
                    .requests
                    .fetch_add(ranges.len() as u64, Ordering::Relaxed);
                let got = conn_ref
                    .remote
                    .store
                    .get_ranges(&key, &ranges)
                    .await
                    .map_err(|e| conn_ref.remote.err("read", &key, e))?;
                // A server answering a range with fewer bytes is refused,
                // not sliced past.
                for (r, b) in ranges.iter().zip(&got) {
                    if b.len() as u64 != r.end - r.start {
                        return Err(conn_ref.corrupt(
                            &format::pack_key(&pack),
                            format!(
                                "asked for bytes {}..{}, got {} bytes",
                                r.start,
                                r.end,
                                b.len()
                            ),
                        ));
                    }
                }
                let mut out = Vec::with_capacity(objs.len());
                for (id, off, len) in objs {
                    let i = ranges.partition_point(|r| r.end <= off);
                    let (r, b) = (&ranges[i], &got[i]);
                    let start = (off - r.start) as usize;
                    let bytes = b.slice(start..start + len as usize);
                    out.push((pack, id, bytes));
                }
                Ok::<_, Error>(out)
            })
            .buffer_unordered(jobs.max(1));
        while let Some(batch) = results.next().await {
            for (pack, id, bytes) in batch? {
                import.put(&id, &bytes).map_err(|e| Error::Corrupt {
                    remote: remote.name.clone(),
                    key: format::pack_key(&pack),
                    reason: format!("object {id}: {e}"),
                })?;
                report.objects_fetched += 1;
                report.bytes_fetched += bytes.len() as u64;
                progress.inc(bytes.len() as u64);
            }
        }
        drop(results);
        // Large objects stream to a file, are hashed, then renamed in.
        let tmp = import.tmp_dir();
        let tmp = &tmp;
        let mut results = stream::iter(loose)
            .map(|(id, size)| async move {
                let key = conn_ref.remote.key(&format::object_key(&id));
                conn_ref.count();
                let got = conn_ref
                    .remote
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| conn_ref.remote.err("read", &key, e))?;
                let file = tmp.join(format!(".pull-{}", id.to_hex()));
                let rel = format::object_key(&id);
                // Reading stops at the size the manifest declares: a remote
                // cannot make a pull write more than the version needs.
                let written = async {
                    let mut f = tokio::fs::File::create(&file)
                        .await
                        .map_err(|e| Error::Local(crate::store::Error::io("create", &file, e)))?;
                    if got.meta.size > size {
                        return Err(conn_ref.corrupt(
                            &rel,
                            format!("{} bytes, the manifest says {size}; not downloaded", got.meta.size),
                        ));
                    }
                    let mut s = got.into_stream();
                    let mut n = 0u64;
                    while let Some(chunk) = s.next().await {
                        let chunk = chunk.map_err(|e| conn_ref.remote.err("read", &key, e))?;
                        if n + chunk.len() as u64 > size {
                            return Err(conn_ref.corrupt(
                                &rel,
                                format!("more than the {size} bytes the manifest says; stopped reading at {n}"),
                            ));
                        }
                        n += chunk.len() as u64;
                        f.write_all(&chunk)
                            .await
                            .map_err(|e| Error::Local(crate::store::Error::io("write", &file, e)))?;
                        progress.inc(chunk.len() as u64);
                    }
                    f.flush()
                        .await
                        .map_err(|e| Error::Local(crate::store::Error::io("write", &file, e)))?;
                    if n != size {
                        return Err(conn_ref.corrupt(&rel, format!("{n} bytes, the manifest says {size}")));
                    }
                    Ok(n)
                }
                .await;
                match written {
                    Ok(n) => Ok::<_, Error>((id, file, key, n)),
                    Err(e) => {
                        let _ = std::fs::remove_file(&file);
                        Err(e)
                    }
                }
            })
            .buffer_unordered(jobs.clamp(1, 4));
        while let Some(r) = results.next().await {
            let (id, file, key, n) = r?;
            import.put_file(&id, &file).map_err(|e| Error::Corrupt {
                remote: remote.name.clone(),
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            report.objects_fetched += 1;
            report.bytes_fetched += n;
        }
    }
    progress.finish();
    // The remote's tags are read (and bad ones skipped) before anything is
    // recorded, so a remote failing here leaves the catalog untouched.
    let remote_tags = conn.tags(&r.dataset).await?;
    report.new_version = import.commit(
        &Incoming {
            dataset: &r.dataset,
            id: vid,
            message: &rec.message,
            author: &rec.author,
            created_ns: rec.created_ns,
            source: &source
                .map(str::to_string)
                .unwrap_or_else(|| format!("remote {} ({})", remote.name, remote.config.url)),
        },
        &manifest,
    )?;
    // Remote tags naming this version, where the local store has no other opinion.
    let local_tags: HashMap<String, ObjectId> = store
        .tags(&r.dataset)?
        .into_iter()
        .map(|t| (t.name, t.version))
        .collect();
    let mut state = conn.tag_state();
    for (tag, (seq, version)) in remote_tags {
        if version != rec.id {
            continue;
        }
        state.insert(format!("{}@{tag}", r.dataset), seq);
        match local_tags.get(&tag) {
            Some(v) if *v == vid => {}
            Some(_) => report.tags_kept.push(tag),
            None => {
                store.tag(
                    &DatasetRef {
                        dataset: r.dataset.clone(),
                        reference: Some(rec.id.clone()),
                    },
                    &tag,
                    false,
                )?;
                report.tags_set.push(tag);
            }
        }
    }
    conn.save_tag_state(&state);
    report.warnings = conn.take_warnings();
    report.requests = conn.requests.load(Ordering::Relaxed);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// What the remote holds: datasets with their versions and tags.
pub async fn list(remote: &Remote, home: &crate::Home) -> Result<Vec<RemoteDataset>> {
    let conn = Conn::new(remote, home);
    conn.check_marker(false).await?;
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (k, _) in conn.list("datasets").await? {
        if let Some(n) = k.split('/').nth(1) {
            names.entry(n.to_string()).or_insert(k);
        }
    }
    let mut out = Vec::new();
    for (name, key) in names {
        if let Err(e) = crate::store::validate_dataset_name(&name) {
            conn.warn(&key, &e.to_string());
            continue;
        }
        let mut versions = Vec::new();
        for id in conn.version_ids(&name).await? {
            if let Some(r) = conn.unless_corrupt(conn.version_record(&name, &id).await)? {
                versions.push(r);
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.created_ns));
        let tags = conn
            .tags(&name)
            .await?
            .into_iter()
            .map(|(t, (_, v))| (t, v))
            .collect();
        out.push(RemoteDataset {
            name,
            versions,
            tags,
        });
    }
    Ok(out)
}
