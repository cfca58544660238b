//! Pull (fetch): one version from a remote into the store, trusting nothing
//! the remote says until it is checked against what was asked for. Steps:
//! resolve the reference to a checked version record → read the manifest
//! (it must hash to the version id) → plan what the store lacks (packed
//! objects by range, large ones loose) → fetch and verify every object →
//! read the remote's tags → commit the version → copy the tags that name
//! it. Nothing is recorded before the commit, so a refused pull leaves the
//! catalog as it was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use object_store::path::Path as ObjPath;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::conn::{hex_id, Conn, IdxEntry, RemoteIndex};
use super::LOOSE;
use crate::progress::Progress;
use crate::remote::format::{self, VersionRecord};
use crate::remote::{Error, Remote, Result};
use crate::store::{DatasetRef, Import, Incoming, Manifest, ObjectId, Store};

/// Ranges of one pack closer than this are fetched in one request.
const RANGE_GAP: u64 = 1 << 20;
/// A pull reads a pack in groups of objects spanning at most this much, so
/// its memory is bounded by `jobs` groups, not `jobs` packs.
const RANGE_MAX: u64 = 4 << 20;

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

/// Where the missing objects come from: packed ones by pack (id, offset,
/// length), large ones loose (id, size).
#[derive(Default)]
struct Plan {
    by_pack: HashMap<ObjectId, Vec<IdxEntry>>,
    loose: Vec<(ObjectId, u64)>,
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
    let vid = checked_id(&conn, r, &rec)?;
    let mut import = store.import()?;
    let manifest = read_manifest(&conn, &mut import, &vid).await?;
    let missing = store.missing(&objects_of(&manifest))?;
    let mut report = PullReport {
        remote: remote.name.clone(),
        dataset: r.dataset.clone(),
        version: rec.id.clone(),
        ..PullReport::default()
    };
    if !missing.is_empty() {
        let index = conn.index(jobs).await?;
        let plan = plan(
            &conn,
            &index,
            &missing,
            &format::version_key(&r.dataset, &vid),
        )?;
        let total: u64 = missing.iter().map(|m| m.1).sum();
        progress.phase("downloading", Some(total));
        let groups = range_groups(plan.by_pack);
        fetch_packed(&conn, &mut import, groups, jobs, &mut report, progress).await?;
        fetch_loose(&conn, &mut import, plan.loose, jobs, &mut report, progress).await?;
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
    copy_tags(store, &conn, &r.dataset, vid, remote_tags, &mut report)?;
    report.warnings = conn.take_warnings();
    report.requests = conn.requests();
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
    let id = match reference.filter(|r| *r != "latest") {
        None => {
            return latest(conn, dataset, &ids)
                .await?
                .ok_or_else(|| not_found(format!("versions of {dataset}")))
        }
        Some(r) => id_of_ref(conn, dataset, r, &ids).await?,
    };
    conn.version_record(dataset, &id)
        .await?
        .ok_or_else(|| not_found(format!("version {dataset}@{}", id.short())))
}

/// The newest of the version records `ids` names; a damaged record is
/// skipped (with a warning), not chosen.
async fn latest(conn: &Conn<'_>, dataset: &str, ids: &[ObjectId]) -> Result<Option<VersionRecord>> {
    let mut best: Option<VersionRecord> = None;
    for id in ids {
        if let Some(r) = conn.unless_corrupt(conn.version_record(dataset, id).await)? {
            if best.as_ref().is_none_or(|b| r.created_ns > b.created_ns) {
                best = Some(r);
            }
        }
    }
    Ok(best)
}

/// The version a tag or a unique id prefix `r` names among `ids`.
async fn id_of_ref(conn: &Conn<'_>, dataset: &str, r: &str, ids: &[ObjectId]) -> Result<ObjectId> {
    // Only a valid tag name is looked up as a tag: never a full
    // version id, so a remote tag cannot stand in for an id.
    let tag = match crate::store::validate_tag_name(r) {
        Ok(()) => conn.tag(dataset, r).await?,
        Err(_) => None,
    };
    if let Some((_, t)) = tag {
        return hex_id(
            conn.remote,
            &format!("datasets/{dataset}/tags/{r}"),
            &t.version,
        );
    }
    let is_hex = r.len() >= 4 && r.bytes().all(|b| b.is_ascii_hexdigit());
    let m: Vec<&ObjectId> = ids
        .iter()
        .filter(|id| is_hex && id.to_hex().starts_with(&r.to_ascii_lowercase()))
        .collect();
    match m.as_slice() {
        [one] => Ok(**one),
        [] => Err(Error::NotOnRemote {
            remote: conn.remote.name.clone(),
            what: format!("tag or version {dataset}@{r}"),
        }),
        _ => Err(Error::Ambiguous {
            remote: conn.remote.name.clone(),
            dataset: dataset.to_string(),
            reference: r.to_string(),
            matches: m.len(),
        }),
    }
}

/// The id of the resolved record; a full id asked for must be the id got.
fn checked_id(conn: &Conn<'_>, r: &DatasetRef, rec: &VersionRecord) -> Result<ObjectId> {
    // (version_record checked that the id is its key's.)
    let vid = hex_id(
        conn.remote,
        &format!("datasets/{}/versions", r.dataset),
        &rec.id,
    )?;
    // resolve_remote checks this already; a full id asked for is the id got.
    if let Some(want) = r
        .reference
        .as_deref()
        .and_then(|x| x.to_ascii_lowercase().parse::<ObjectId>().ok())
    {
        if want != vid {
            return Err(conn.corrupt(
                &format::version_key(&r.dataset, &vid),
                format!("asked for version {want}, the remote answered {vid}"),
            ));
        }
    }
    Ok(vid)
}

/// Read version `vid`'s manifest and hand it to the import, which checks
/// that it hashes to `vid` and is valid.
async fn read_manifest(
    conn: &Conn<'_>,
    import: &mut Import<'_>,
    vid: &ObjectId,
) -> Result<Manifest> {
    let mkey = format::manifest_key(vid);
    let mbytes = conn
        .get(&mkey, format::MAX_MANIFEST)
        .await?
        .ok_or_else(|| {
            conn.corrupt(&mkey, "the version record exists but its manifest does not")
        })?;
    import
        .put_manifest(vid, &mbytes)
        .map_err(|e| Error::Corrupt {
            remote: conn.remote.name.clone(),
            key: mkey.clone(),
            reason: e.to_string(),
        })
}

/// The objects a manifest needs, each once, as (id, size).
fn objects_of(manifest: &Manifest) -> Vec<(ObjectId, u64)> {
    let mut seen = HashSet::new();
    manifest
        .entries
        .iter()
        .filter(|e| e.kind != crate::store::Kind::Dir)
        .map(|e| (e.id, e.size))
        .filter(|(id, _)| seen.insert(*id))
        .collect()
}

/// Where each missing (id, size) is on the remote. An index entry must
/// agree with the manifest's size, and a large object is taken only loose;
/// an object found nowhere makes the version (`vkey`) corrupt.
fn plan(
    conn: &Conn<'_>,
    index: &RemoteIndex,
    missing: &[(ObjectId, u64)],
    vkey: &str,
) -> Result<Plan> {
    let mut plan = Plan::default();
    for (id, size) in missing {
        // Large objects are stored loose; a pack index claiming one
        // would make a pull hold it in memory whole, so it is not used.
        let packed = index.packed.get(id);
        if *size >= LOOSE && index.loose.contains(id) {
            plan.loose.push((*id, *size));
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
                    remote: conn.remote.name.clone(),
                    key: format::idx_key(pack),
                    reason: format!(
                        "object {} is {len} bytes in the index, {size} in the manifest",
                        id.short()
                    ),
                });
            }
            plan.by_pack
                .entry(*pack)
                .or_default()
                .push((*id, *off, *len));
        } else if index.loose.contains(id) {
            plan.loose.push((*id, *size));
        } else {
            let skipped = conn.skipped();
            return Err(conn.corrupt(
                vkey,
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
    Ok(plan)
}

/// Each pack's objects, by offset, in groups spanning at most
/// [`RANGE_MAX`], so that at most `jobs` groups (not whole packs) are in
/// memory at once.
fn range_groups(by_pack: HashMap<ObjectId, Vec<IdxEntry>>) -> Vec<(ObjectId, Vec<IdxEntry>)> {
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
    groups
}

/// Fetch the packed objects, group by group with coalesced range reads, and
/// hand each to the import (which verifies it).
async fn fetch_packed(
    conn: &Conn<'_>,
    import: &mut Import<'_>,
    groups: Vec<(ObjectId, Vec<IdxEntry>)>,
    jobs: usize,
    report: &mut PullReport,
    progress: &dyn Progress,
) -> Result<()> {
    let mut results = stream::iter(groups)
        .map(|(pack, objs)| read_group(conn, pack, objs))
        .buffer_unordered(jobs.max(1));
    while let Some(batch) = results.next().await {
        for (pack, id, bytes) in batch? {
            import.put(&id, &bytes).map_err(|e| Error::Corrupt {
                remote: conn.remote.name.clone(),
                key: format::pack_key(&pack),
                reason: format!("object {id}: {e}"),
            })?;
            report.objects_fetched += 1;
            report.bytes_fetched += bytes.len() as u64;
            progress.inc(bytes.len() as u64);
        }
    }
    Ok(())
}

/// The objects `objs` of `pack`, read with one request per run of ranges
/// closer than [`RANGE_GAP`]; a range answered short is refused.
async fn read_group(
    conn: &Conn<'_>,
    pack: ObjectId,
    objs: Vec<IdxEntry>,
) -> Result<Vec<(ObjectId, ObjectId, Bytes)>> {
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for (_, off, len) in &objs {
        match ranges.last_mut() {
            Some(r) if *off <= r.end + RANGE_GAP => r.end = r.end.max(off + len),
            _ => ranges.push(*off..off + len),
        }
    }
    let key = conn.remote.key(&format::pack_key(&pack));
    conn.count_n(ranges.len() as u64);
    let got = conn
        .remote
        .store
        .get_ranges(&key, &ranges)
        .await
        .map_err(|e| conn.remote.err("read", &key, e))?;
    // A server answering a range with fewer bytes is refused,
    // not sliced past.
    for (r, b) in ranges.iter().zip(&got) {
        if b.len() as u64 != r.end - r.start {
            return Err(conn.corrupt(
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
    Ok(out)
}

/// Fetch the large objects: each streams to a file in the import's temp
/// directory, then the import hashes it and renames it in.
async fn fetch_loose(
    conn: &Conn<'_>,
    import: &mut Import<'_>,
    loose: Vec<(ObjectId, u64)>,
    jobs: usize,
    report: &mut PullReport,
    progress: &dyn Progress,
) -> Result<()> {
    let tmp = import.tmp_dir();
    let tmp = &tmp;
    let mut results = stream::iter(loose)
        .map(|(id, size)| async move {
            let key = conn.remote.key(&format::object_key(&id));
            let file = tmp.join(format!(".pull-{}", id.to_hex()));
            match download(conn, &key, id, size, &file, progress).await {
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
            remote: conn.remote.name.clone(),
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        report.objects_fetched += 1;
        report.bytes_fetched += n;
    }
    Ok(())
}

/// Stream object `id` (`key`) into `file`. Reading stops at the `size` the
/// manifest declares: a remote cannot make a pull write more than the
/// version needs, and a shorter object is refused.
async fn download(
    conn: &Conn<'_>,
    key: &ObjPath,
    id: ObjectId,
    size: u64,
    file: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    conn.count();
    let got = conn
        .remote
        .store
        .get(key)
        .await
        .map_err(|e| conn.remote.err("read", key, e))?;
    let rel = format::object_key(&id);
    let local = |op, e| Error::Local(crate::store::Error::io(op, file, e));
    let mut f = tokio::fs::File::create(file)
        .await
        .map_err(|e| local("create", e))?;
    if got.meta.size > size {
        return Err(conn.corrupt(
            &rel,
            format!(
                "{} bytes, the manifest says {size}; not downloaded",
                got.meta.size
            ),
        ));
    }
    let mut s = got.into_stream();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| conn.remote.err("read", key, e))?;
        if n + chunk.len() as u64 > size {
            return Err(conn.corrupt(
                &rel,
                format!("more than the {size} bytes the manifest says; stopped reading at {n}"),
            ));
        }
        n += chunk.len() as u64;
        f.write_all(&chunk).await.map_err(|e| local("write", e))?;
        progress.inc(chunk.len() as u64);
    }
    f.flush().await.map_err(|e| local("write", e))?;
    if n != size {
        return Err(conn.corrupt(&rel, format!("{n} bytes, the manifest says {size}")));
    }
    Ok(n)
}

/// Copy the remote tags naming version `vid` where the local store has no
/// other opinion (a local tag naming another version is kept and
/// reported), and record the tag steps seen.
fn copy_tags(
    store: &Store,
    conn: &Conn<'_>,
    dataset: &str,
    vid: ObjectId,
    remote_tags: BTreeMap<String, (u64, String)>,
    report: &mut PullReport,
) -> Result<()> {
    let version = vid.to_hex();
    let local_tags: HashMap<String, ObjectId> = store
        .tags(dataset)?
        .into_iter()
        .map(|t| (t.name, t.version))
        .collect();
    let mut state = conn.tag_state();
    for (tag, (seq, v)) in remote_tags {
        if v != version {
            continue;
        }
        state.insert(format!("{dataset}@{tag}"), seq);
        match local_tags.get(&tag) {
            Some(v) if *v == vid => {}
            Some(_) => report.tags_kept.push(tag),
            None => {
                store.tag(
                    &DatasetRef {
                        dataset: dataset.to_string(),
                        reference: Some(version.clone()),
                    },
                    &tag,
                    false,
                )?;
                report.tags_set.push(tag);
            }
        }
    }
    conn.save_tag_state(&state);
    Ok(())
}
