//! The connection a push, pull or listing holds to a remote: requests
//! (counted), the checked reads of the format's records (marker, version
//! records, tag steps, pack indexes), listings (a directory remote's by
//! [`dir_list`]), the local cache of pack indexes and of the tag steps last
//! seen, and the warnings about keys skipped as damaged. It moves no
//! objects; `push` and `pull` do.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::remote::format::{self, TagRecord, VersionRecord};
use crate::remote::{Error, Remote, Result};
use crate::store::ObjectId;

/// One pack index entry: object, offset of its bytes, length.
pub(super) type IdxEntry = (ObjectId, u64, u64);

/// Where the remote keeps each object.
#[derive(Debug, Default)]
pub(super) struct RemoteIndex {
    /// Object → (pack, offset, length), from the first index naming it.
    pub(super) packed: HashMap<ObjectId, IdxEntry>,
    /// Loose objects.
    pub(super) loose: HashSet<ObjectId>,
}

impl RemoteIndex {
    /// Whether the remote holds `id`, packed or loose.
    pub(super) fn has(&self, id: &ObjectId) -> bool {
        self.loose.contains(id) || self.packed.contains_key(id)
    }
}

/// A remote plus the local cache directory, a request counter and the
/// warnings about keys skipped.
pub(super) struct Conn<'a> {
    pub(super) remote: &'a Remote,
    /// The directory of a `file://` remote, listed by [`dir_list`].
    dir: Option<PathBuf>,
    cache: PathBuf,
    requests: AtomicU64,
    warnings: Mutex<Vec<String>>,
}

/// `s` as an id, or the remote's `key` is corrupt.
pub(super) fn hex_id(remote: &Remote, key: &str, s: &str) -> Result<ObjectId> {
    s.parse().map_err(|_| Error::Corrupt {
        remote: remote.name.clone(),
        key: key.to_string(),
        reason: format!("{s:?} is not a version/object id"),
    })
}

impl<'a> Conn<'a> {
    pub(super) fn new(remote: &'a Remote, home: &crate::Home) -> Conn<'a> {
        let dir = match crate::remote::config::parse_url(&remote.config.url) {
            Ok(crate::remote::config::Location::Dir(p)) => Some(p),
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

    /// The remote's `key` is damaged (both escaped for printing).
    pub(super) fn corrupt(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            remote: self.remote.name.clone(),
            key: format::printable(key),
            reason: format::printable(&reason.into()),
        }
    }

    /// Report a key skipped as damaged or not in the format (once).
    pub(super) fn warn(&self, key: &str, reason: &str) {
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
    pub(super) fn unless_corrupt<T>(&self, r: Result<Option<T>>) -> Result<Option<T>> {
        match r {
            Err(Error::Corrupt { key, reason, .. }) => {
                self.warn(&key, &reason);
                Ok(None)
            }
            r => r,
        }
    }

    /// The warnings so far, emptied.
    pub(super) fn take_warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    /// Count one request.
    pub(super) fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Count `n` more requests.
    pub(super) fn count_n(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests made so far.
    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// How many keys were skipped so far.
    pub(super) fn skipped(&self) -> usize {
        self.warnings.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// Read a whole key, refusing (and reading no further than) `max` bytes.
    pub(super) async fn get(&self, rel: &str, max: u64) -> Result<Option<Bytes>> {
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

    /// Write a key; with `create`, only if it does not exist (then
    /// `false` says it did).
    pub(super) async fn put(&self, rel: &str, body: Bytes, create: bool) -> Result<bool> {
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
    pub(super) async fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
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
    pub(super) async fn check_marker(&self, create: bool) -> Result<()> {
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
    pub(super) async fn index(&self, jobs: usize) -> Result<RemoteIndex> {
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
    pub(super) async fn version_ids(&self, dataset: &str) -> Result<Vec<ObjectId>> {
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
    pub(super) async fn version_record(
        &self,
        dataset: &str,
        id: &ObjectId,
    ) -> Result<Option<VersionRecord>> {
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
    pub(super) async fn tag(&self, dataset: &str, tag: &str) -> Result<Option<(u64, TagRecord)>> {
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
    pub(super) async fn tags(&self, dataset: &str) -> Result<BTreeMap<String, (u64, String)>> {
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

    /// The tag steps this machine last saw on the remote
    /// (`dataset@tag` → seq), from the cache.
    pub(super) fn tag_state(&self) -> HashMap<String, u64> {
        std::fs::read(self.tag_state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Record the tag steps seen (a failure only warns: the cache is a hint).
    pub(super) fn save_tag_state(&self, s: &HashMap<String, u64>) {
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
