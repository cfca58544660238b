//! The git data registry: a small pointer file in a git repository names an
//! exact dataset version and the remote that holds it, so a registry repo
//! plus a tag (`v1.0`) names a dataset, as DVC users do with `.dvc` files.
//!
//! ```toml
//! # Trainyard dataset pointer; fetch with:
//! #   trainyard data get <repo> imagenet.trainyard.toml --rev <tag>
//! dataset = "imagenet"
//! version = "c2a99e39…"          # the full version id (BLAKE3 of the manifest)
//! files = 1281167
//! bytes = 151234567890
//!
//! [remote]
//! url = "s3://datasets/team"
//! endpoint = "http://nas:9000"   # only for S3-compatible servers
//! allow_http = true
//! ```
//!
//! Writing uses `git2` to stage (and optionally commit and tag) the file in
//! the enclosing repository; reading fetches the registry with `git2` into a
//! bare cache (no git binary), reads the file at a rev, then pulls from the
//! remote it names.
//!
//! The two workflows, for every front end: [`pin_version`] (a local version
//! already on a remote → a pointer, staged, optionally committed and
//! tagged) and [`get`] (a pointer at a rev → the version fetched from its
//! remote and checked out). Both run their blocking steps (git, the store)
//! inline, as [`super::sync::fetch`] does.

use std::path::{Path, PathBuf};

use git2::{Repository, Signature};
use serde::{Deserialize, Serialize};

use super::sync::{self, PullReport};
use super::{Error, Remote, RemoteConfig, Result};
use crate::progress::Progress;
use crate::store::{
    CheckoutOptions, CheckoutReport, DatasetRef, LinkMode, ObjectId, Store, VersionInfo,
};
use crate::Home;

/// A pointer file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// Dataset name.
    pub dataset: String,
    /// Full version id.
    pub version: String,
    /// Files in the version.
    pub files: u64,
    /// Bytes in the version.
    pub bytes: u64,
    /// The remote holding it (no credentials).
    pub remote: RemoteConfig,
}

impl Pointer {
    /// The pointer as the file's text.
    pub fn to_text(&self, path_hint: &str) -> String {
        let body = toml::to_string_pretty(self).expect("pointer serializes");
        format!(
            "# Trainyard dataset pointer; fetch with:\n#   trainyard data get <repo> {path_hint} --rev <tag>\n{body}"
        )
    }

    /// Parse a pointer file's text; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<Pointer> {
        let p: Pointer = toml::from_str(text).map_err(|source| Error::BadPointer {
            what: what.to_string(),
            source,
        })?;
        p.version
            .parse::<ObjectId>()
            .map_err(|_| Error::PointerVersion {
                what: what.to_string(),
                version: p.version.clone(),
            })?;
        crate::store::validate_dataset_name(&p.dataset).map_err(|source| {
            Error::PointerDataset {
                what: what.to_string(),
                source,
            }
        })?;
        super::config::parse_url(&p.remote.url)?;
        Ok(p)
    }
}

/// What `pin` did.
#[derive(Debug, Clone, Serialize)]
pub struct Pinned {
    /// The pointer file.
    pub file: PathBuf,
    /// Its path in the repository.
    pub repo_path: String,
    /// The commit made, if any.
    pub commit: Option<String>,
    /// The git tag made, if any.
    pub git_tag: Option<String>,
}

fn git_err(what: &str) -> impl Fn(git2::Error) -> Error + '_ {
    move |source| Error::Git {
        what: what.to_string(),
        source,
    }
}

/// Write `pointer` to `file` inside the git repository enclosing it, stage
/// it, and optionally commit it (`message`) and tag that commit.
pub fn pin(
    pointer: &Pointer,
    file: &Path,
    message: Option<&str>,
    git_tag: Option<&str>,
) -> Result<Pinned> {
    let file = std::path::absolute(file).map_err(|source| Error::PointerPath {
        path: file.to_path_buf(),
        source,
    })?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    let repo = Repository::discover(dir).map_err(|_| Error::NotInRepo(dir.to_path_buf()))?;
    let workdir = repo.workdir().ok_or(Error::BareRepo)?.to_path_buf();
    let workdir = workdir.canonicalize().unwrap_or(workdir);
    let canon_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let rel = canon_dir
        .strip_prefix(&workdir)
        .map(|d| d.join(file.file_name().unwrap_or_default()))
        .map_err(|_| Error::OutsideRepo {
            file: file.clone(),
            workdir: workdir.clone(),
        })?;
    let rel_str = rel.to_string_lossy().replace('\\', "/");
    crate::store::write_file_atomic(&file, pointer.to_text(&rel_str).as_bytes())?;
    let mut index = repo.index().map_err(git_err("git index"))?;
    index.add_path(&rel).map_err(git_err("git add"))?;
    index.write().map_err(git_err("git index write"))?;
    let mut out = Pinned {
        file: file.clone(),
        repo_path: rel_str,
        commit: None,
        git_tag: None,
    };
    if let Some(msg) = message {
        let tree_id = index.write_tree().map_err(git_err("git write-tree"))?;
        let tree = repo.find_tree(tree_id).map_err(git_err("git tree"))?;
        let sig = repo
            .signature()
            .or_else(|_| Signature::now(&crate::store::current_user(), "trainyard@localhost"))
            .map_err(git_err("git signature"))?;
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = repo
            .commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents)
            .map_err(git_err("git commit"))?;
        out.commit = Some(oid.to_string());
        if let Some(tag) = git_tag {
            let obj = repo.find_object(oid, None).map_err(git_err("git tag"))?;
            repo.tag(tag, &obj, &sig, msg, false)
                .map_err(git_err(&format!("git tag {tag}")))?;
            out.git_tag = Some(tag.to_string());
        }
    } else if git_tag.is_some() {
        return Err(Error::TagNeedsCommit);
    }
    Ok(out)
}

/// Read the pointer `path` at `rev` of the registry `repo` (URL or path),
/// fetched into the bare cache under `cache`. Returns it and the commit.
pub fn read(cache: &Path, repo: &str, rev: &str, path: &str) -> Result<(Pointer, String)> {
    let (commit, bytes) = crate::agent::git::read_file(cache, repo, rev, path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::PointerNotText(format!("{repo}@{rev}:{path}")))?;
    let p = Pointer::parse(&text, &format!("{repo}@{rev}:{path}"))?;
    Ok((p, commit.to_string()))
}

/// The pointer file [`pin_version`] writes when none is named:
/// `./NAME.trainyard.toml`.
pub fn default_pointer_file(dataset: &str) -> PathBuf {
    PathBuf::from(format!("{dataset}.trainyard.toml"))
}

/// How [`pin_version`] pins.
#[derive(Debug, Clone, Copy, Default)]
pub struct PinOptions<'a> {
    /// The remote the pointer names (default: the home's default remote).
    pub remote: Option<&'a str>,
    /// The pointer file (default: [`default_pointer_file`]).
    pub file: Option<&'a Path>,
    /// Commit the pointer with this message.
    pub message: Option<&'a str>,
    /// Tag that commit (needs `message`).
    pub git_tag: Option<&'a str>,
}

/// Pin version `r` of the local store: it must already be on the remote
/// (its version record exists there, so everything it needs does), whose
/// settings the pointer records; then [`pin`] writes and stages the
/// pointer. Returns what `pin` did and the version pinned.
pub async fn pin_version(
    store: &Store,
    home: &Home,
    r: &DatasetRef,
    opts: PinOptions<'_>,
) -> Result<(Pinned, VersionInfo)> {
    let v = store.resolve(r)?;
    let remote = Remote::named(home, opts.remote)?;
    if !sync::has_version(&remote, home, &r.dataset, &v.id).await? {
        return Err(Error::NotPushed {
            dataset: r.dataset.clone(),
            version: v.id.short(),
            remote: remote.name.clone(),
        });
    }
    let pointer = Pointer {
        dataset: r.dataset.clone(),
        version: v.id.to_hex(),
        files: v.files,
        bytes: v.bytes,
        remote: remote.config.clone(),
    };
    let file = opts
        .file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_pointer_file(&r.dataset));
    let pinned = pin(&pointer, &file, opts.message, opts.git_tag)?;
    Ok((pinned, v))
}

/// What [`get`] reads and where it puts it.
#[derive(Debug, Clone, Copy)]
pub struct GetOptions<'a> {
    /// The registry: a git URL or a local path.
    pub repo: &'a str,
    /// Branch, tag or commit.
    pub rev: &'a str,
    /// The pointer file's path in the repository.
    pub pointer: &'a str,
    /// Where to check the version out (default: `./NAME`).
    pub out: Option<&'a Path>,
    /// Downloads in flight.
    pub jobs: usize,
    /// Record the registry, rev and pointer with the version as where it
    /// came from (`data import`); otherwise the remote is recorded.
    pub import: bool,
}

/// What [`get`] did.
#[derive(Debug, Clone)]
pub struct Got {
    /// The pointer read.
    pub pointer: Pointer,
    /// The registry commit it was read at.
    pub commit: String,
    /// `git REPO@REV (COMMIT):POINTER`, what an import records.
    pub provenance: String,
    /// The fetch from the pointer's remote.
    pub fetch: PullReport,
    /// The checkout.
    pub checkout: CheckoutReport,
}

/// Get the version a registry pointer names: read the pointer at the rev
/// (the registry fetched into the home's `git-cache`), fetch the version
/// from the remote the pointer names, and check it out.
pub async fn get(
    store: &Store,
    home: &Home,
    opts: GetOptions<'_>,
    progress: &dyn Progress,
) -> Result<Got> {
    let cache = home.root().join("git-cache");
    let (pointer, commit) = read(&cache, opts.repo, opts.rev, opts.pointer)?;
    let remote = Remote::open("registry", &pointer.remote)?;
    let r = DatasetRef {
        dataset: pointer.dataset.clone(),
        reference: Some(pointer.version.clone()),
    };
    let provenance = format!(
        "git {}@{} ({}):{}",
        opts.repo,
        opts.rev,
        &commit[..12],
        opts.pointer
    );
    let source = opts.import.then_some(provenance.as_str());
    let fetch = sync::fetch(store, home, &remote, &r, opts.jobs, source, progress).await?;
    let dir = opts
        .out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(&pointer.dataset));
    let checkout = store.checkout(
        &r,
        &dir,
        CheckoutOptions {
            link: LinkMode::Auto,
            force: false,
        },
        progress,
    )?;
    Ok(Got {
        pointer,
        commit,
        provenance,
        fetch,
        checkout,
    })
}
