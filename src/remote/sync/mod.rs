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
//! text from the remote is escaped ([`super::format::printable`]) wherever it
//! names a key.
//!
//! - `conn`: the connection (counted requests, checked reads of records,
//!   tags and pack indexes, listings, the local caches, the warnings).
//! - `push`: [`push`] in named steps. `pull`: [`fetch`] in named steps.
//! - Here: the listing ([`list`]), [`dataset_state`] and [`has_version`].

mod conn;
mod pull;
mod push;

use std::collections::BTreeMap;

use serde::Serialize;

use self::conn::Conn;
use super::format::VersionRecord;
use super::{Remote, Result};
use crate::store::ObjectId;

pub use self::pull::{fetch, PullReport};
pub use self::push::{push, PushOptions, PushReport, PushedVersion, TagMove, TagOutcome};

/// Objects at least this large are stored loose (the store's pack threshold).
const LOOSE: u64 = 128 << 10;

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
