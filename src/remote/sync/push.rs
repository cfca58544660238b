//! Push: the versions a remote lacks, in the order that keeps the remote's
//! invariant (a version record exists only when everything it needs does):
//! packs, then their indexes; large objects; the manifests; the version
//! records; then the tags.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::conn::{Conn, IdxEntry, RemoteIndex};
use super::LOOSE;
use crate::progress::Progress;
use crate::remote::format::{self, TagRecord, VersionRecord};
use crate::remote::{Error, Remote, Result};
use crate::store::{DatasetRef, Export, ObjectId, ObjectReader, Store};

/// Small objects are packed up to this size before upload.
const REMOTE_PACK_TARGET: usize = 32 << 20;
/// Packs built and uploaded at once by a push (each is held in memory
/// whole): a few are enough to keep the connection busy.
const PACKS_IN_FLIGHT: usize = 3;
/// Large objects stream in parts of this size (multipart above it).
const PART: usize = 16 << 20;

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

/// What a push did to a tag on the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagMove {
    /// The remote's tag now names the local version.
    Set,
    /// It already did.
    Unchanged,
    /// It names another version that someone else set: left alone.
    Conflict,
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
    /// What happened to it.
    pub outcome: TagMove,
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

/// Push options.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Uploads in flight.
    pub jobs: usize,
    /// Move remote tags even if someone else moved them since our last sync.
    pub force_tags: bool,
}

/// What the uploads sent, counted by concurrent tasks.
#[derive(Default)]
struct Sent {
    bytes: AtomicU64,
    objects: AtomicU64,
    packs: AtomicU64,
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
    let exports = exports(store, refs)?;
    let mut report = PushReport {
        remote: remote.name.clone(),
        ..PushReport::default()
    };
    let todo = not_on_remote(&conn, &exports).await?;
    report.versions = exports
        .iter()
        .map(|e| PushedVersion {
            dataset: e.info.dataset.clone(),
            id: e.info.id.to_hex(),
            new: todo.iter().any(|t| same_version(t, e)),
        })
        .collect();
    if !todo.is_empty() {
        let index = conn.index(opts.jobs).await?;
        let (small, large) = objects_to_send(&todo, &index);
        let total: u64 = small.iter().chain(&large).map(|o| o.1).sum();
        progress.phase("uploading", Some(total));
        let reader = store.object_reader()?;
        let sent = Sent::default();
        let packs = plan_packs(&small);
        upload_packs(&conn, &reader, packs, opts.jobs, &sent, progress).await?;
        upload_large(store, &conn, &reader, large, opts.jobs, &sent, progress).await?;
        report.bytes_sent = sent.bytes.load(Ordering::Relaxed);
        report.objects_sent = sent.objects.load(Ordering::Relaxed);
        report.packs_sent = sent.packs.load(Ordering::Relaxed);
        write_versions(&conn, &todo).await?;
    }
    progress.finish();
    report.tags = push_tags(&conn, &exports, opts.force_tags).await?;
    report.requests = conn.requests();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn same_version(a: &Export, b: &Export) -> bool {
    a.info.id == b.info.id && a.info.dataset == b.info.dataset
}

/// The versions `refs` name, each once.
fn exports(store: &Store, refs: &[DatasetRef]) -> Result<Vec<Export>> {
    let mut exports: Vec<Export> = Vec::new();
    for r in refs {
        let e = store.export(r)?;
        if !exports.iter().any(|x| same_version(x, &e)) {
            exports.push(e);
        }
    }
    Ok(exports)
}

/// The versions the remote does not list yet (the ones it has need nothing
/// else): one listing per dataset.
async fn not_on_remote<'e>(conn: &Conn<'_>, exports: &'e [Export]) -> Result<Vec<&'e Export>> {
    let mut on_remote: HashMap<String, HashSet<ObjectId>> = HashMap::new();
    for e in exports {
        if !on_remote.contains_key(&e.info.dataset) {
            let ids = conn.version_ids(&e.info.dataset).await?;
            on_remote.insert(e.info.dataset.clone(), ids.into_iter().collect());
        }
    }
    Ok(exports
        .iter()
        .filter(|e| !on_remote[&e.info.dataset].contains(&e.info.id))
        .collect())
}

/// The objects of `todo` that the remote lacks, each once, as (small, large)
/// lists of (id, size): small ones go in packs, large ones loose.
#[allow(clippy::type_complexity)]
fn objects_to_send(
    todo: &[&Export],
    index: &RemoteIndex,
) -> (Vec<(ObjectId, u64)>, Vec<(ObjectId, u64)>) {
    let mut seen = HashSet::new();
    let mut small = Vec::new();
    let mut large = Vec::new();
    for e in todo {
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
    (small, large)
}

/// Small objects grouped into packs of about [`REMOTE_PACK_TARGET`] bytes.
fn plan_packs(small: &[(ObjectId, u64)]) -> Vec<Vec<ObjectId>> {
    let mut plans: Vec<Vec<ObjectId>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_size = 0usize;
    for (id, size) in small {
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
    plans
}

/// Build and upload each planned pack, then its index (an index names a
/// complete pack), a few at a time.
async fn upload_packs(
    conn: &Conn<'_>,
    reader: &ObjectReader<'_>,
    plans: Vec<Vec<ObjectId>>,
    jobs: usize,
    sent: &Sent,
    progress: &dyn Progress,
) -> Result<()> {
    stream::iter(plans)
        .map(|plan| async move {
            let (buf, entries, bytes) = build_pack(reader, &plan)?;
            let pack_id = ObjectId::of_bytes(&buf);
            conn.put(&format::pack_key(&pack_id), Bytes::from(buf), false)
                .await?;
            // The index only after its pack: an index names a complete pack.
            conn.put(
                &format::idx_key(&pack_id),
                Bytes::from(format::encode_idx(&entries)),
                false,
            )
            .await?;
            sent.bytes.fetch_add(bytes, Ordering::Relaxed);
            sent.objects.fetch_add(plan.len() as u64, Ordering::Relaxed);
            sent.packs.fetch_add(1, Ordering::Relaxed);
            progress.inc(bytes);
            Ok::<_, Error>(())
        })
        .buffer_unordered(jobs.clamp(1, PACKS_IN_FLIGHT))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// A pack of the objects `plan` names, in the remote format: the pack's
/// bytes, its index entries and the object bytes in it.
fn build_pack(
    reader: &ObjectReader<'_>,
    plan: &[ObjectId],
) -> Result<(Vec<u8>, Vec<IdxEntry>, u64)> {
    let mut buf = Vec::with_capacity(REMOTE_PACK_TARGET + (1 << 20));
    buf.extend_from_slice(b"TYPACK\0\0");
    buf.extend_from_slice(&1u32.to_le_bytes());
    let mut entries = Vec::with_capacity(plan.len());
    let mut bytes = 0u64;
    for id in plan {
        let data = reader.read(id)?;
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        entries.push((*id, buf.len() as u64, data.len() as u64));
        buf.extend_from_slice(&data);
        bytes += data.len() as u64;
    }
    Ok((buf, entries, bytes))
}

/// Upload the large objects loose, each rehashed first (a damaged object is
/// never spread) and streamed in parts.
async fn upload_large(
    store: &Store,
    conn: &Conn<'_>,
    reader: &ObjectReader<'_>,
    large: Vec<(ObjectId, u64)>,
    jobs: usize,
    sent: &Sent,
    progress: &dyn Progress,
) -> Result<()> {
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
            let n = upload_loose(conn, &id, &path).await?;
            if n != size {
                return Err(Error::Local(crate::store::Error::FileChanged(path)));
            }
            sent.bytes.fetch_add(n, Ordering::Relaxed);
            sent.objects.fetch_add(1, Ordering::Relaxed);
            progress.inc(n);
            Ok::<_, Error>(())
        })
        .buffer_unordered(jobs.clamp(1, 4))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
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
    conn.count_n(if parts > 1 { parts + 2 } else { 1 });
    Ok(n)
}

/// The manifests, then the version records that make the versions visible
/// (create-only: a record is never overwritten).
async fn write_versions(conn: &Conn<'_>, todo: &[&Export]) -> Result<()> {
    for e in todo {
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
    Ok(())
}

/// Set the remote tags that name the pushed versions, and record the steps
/// seen.
async fn push_tags(conn: &Conn<'_>, exports: &[Export], force: bool) -> Result<Vec<TagOutcome>> {
    let mut state = conn.tag_state();
    let mut out = Vec::new();
    for e in exports {
        for tag in &e.info.tags {
            out.push(push_tag(conn, &mut state, &e.info.dataset, tag, &e.info.id, force).await?);
        }
    }
    conn.save_tag_state(&state);
    Ok(out)
}

/// Point `dataset@tag` on the remote at `version`: a new step after the
/// current one, unless the remote already agrees, or someone else moved the
/// tag since this machine last saw it (a conflict, unless `force`).
/// `state` holds the steps seen, `dataset@tag` → seq.
async fn push_tag(
    conn: &Conn<'_>,
    state: &mut HashMap<String, u64>,
    dataset: &str,
    tag: &str,
    version: &ObjectId,
    force: bool,
) -> Result<TagOutcome> {
    let local = version.to_hex();
    let skey = format!("{dataset}@{tag}");
    let conflict = |theirs: String| {
        Error::TagConflict {
            remote: conn.remote.name.clone(),
            dataset: dataset.to_string(),
            tag: tag.to_string(),
            theirs,
            ours: local.clone(),
        }
        .to_string()
    };
    let mut out = TagOutcome {
        dataset: dataset.to_string(),
        tag: tag.to_string(),
        version: local.clone(),
        outcome: TagMove::Unchanged,
        detail: None,
    };
    let next = match conn.tag(dataset, tag).await? {
        Some((seq, r)) if r.version == local => {
            state.insert(skey.clone(), seq);
            None
        }
        Some((seq, r)) => {
            if force || state.get(&skey) == Some(&seq) {
                Some(seq + 1)
            } else {
                out.outcome = TagMove::Conflict;
                out.detail = Some(conflict(r.version));
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
            .put(&format::tag_key(dataset, tag, seq), body.into(), true)
            .await?
        {
            state.insert(skey, seq);
            out.outcome = TagMove::Set;
        } else {
            let theirs = conn
                .tag(dataset, tag)
                .await?
                .map(|(_, r)| r.version)
                .unwrap_or_default();
            out.outcome = TagMove::Conflict;
            out.detail = Some(conflict(theirs));
        }
    }
    Ok(out)
}
