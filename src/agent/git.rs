//! Job sources from git (`git2`, no git binary): one bare cache repository
//! per remote URL, shared by every job on the host and locked while it
//! fetches; each attempt gets its own checkout of the exact commit.

use std::fs::File;
use std::path::{Path, PathBuf};

use git2::{build::CheckoutBuilder, Cred, FetchOptions, Oid, RemoteCallbacks, Repository};
use rustix::fs::{flock, FlockOperation};

use crate::queue::GitSource;

/// Why a git source could not be checked out; each names the repo and rev.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// Fetching from the repository failed.
    #[error("cannot fetch {repo}: {message}")]
    Fetch {
        /// The repository.
        repo: String,
        /// libgit2's message.
        message: String,
    },
    /// The rev names nothing in the repository.
    #[error("unknown git rev {rev:?} in {repo} (not a branch, tag or commit there)")]
    UnknownRev {
        /// The repository.
        repo: String,
        /// The rev.
        rev: String,
    },
    /// The commit has no such file (or it is not a file).
    #[error("{repo} at {rev} (commit {commit}) has no file {path}{detail}")]
    MissingFile {
        /// The repository.
        repo: String,
        /// The rev asked for.
        rev: String,
        /// The commit it resolved to.
        commit: String,
        /// The path in the repository.
        path: String,
        /// What is there instead, if anything.
        detail: String,
    },
    /// Checking out or the cache failed.
    #[error("git checkout of {repo}@{rev} into {dir}: {message}")]
    Checkout {
        /// The repository.
        repo: String,
        /// The rev.
        rev: String,
        /// The target.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
}

fn cache_path(cache: &Path, repo: &str) -> PathBuf {
    let h = blake3::hash(repo.as_bytes()).to_hex();
    cache.join(format!("{}.git", &h[..16]))
}

fn callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut tried_agent = false;
    cb.credentials(move |url, user, allowed| {
        if allowed.is_ssh_key() && !tried_agent {
            tried_agent = true;
            return Cred::ssh_key_from_agent(user.unwrap_or("git"));
        }
        if allowed.is_user_pass_plaintext() {
            if let Ok(cfg) = git2::Config::open_default() {
                return Cred::credential_helper(&cfg, url, user);
            }
        }
        Cred::default()
    });
    cb
}

/// The commit `rev` names in `repo` (a URL or a local path), fetching into
/// the bare cache repository under `cache` when it is not known yet.
/// Returns the cache repository (unlocked) and the commit.
pub fn fetch_commit(
    cache: &Path,
    repo_url: &str,
    rev: &str,
) -> Result<(Repository, Oid), GitError> {
    let co_err = |message: String| GitError::Checkout {
        repo: repo_url.to_string(),
        rev: rev.to_string(),
        dir: cache.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(cache)
        .map_err(|e| co_err(format!("cache {}: {e}", cache.display())))?;
    let path = cache_path(cache, repo_url);
    // One fetch per cache repository at a time, across agents and jobs.
    let lock_path = path.with_extension("lock");
    let lock = File::create(&lock_path)
        .map_err(|e| co_err(format!("lock {}: {e}", lock_path.display())))?;
    flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| co_err(format!("lock {}: {e}", lock_path.display())))?;

    let repo = match Repository::open_bare(&path) {
        Ok(r) => r,
        Err(_) => Repository::init_bare(&path).map_err(|e| co_err(e.message().to_string()))?,
    };
    // A local path is used as given; relative paths are resolved now.
    let url = if Path::new(repo_url).exists() {
        std::fs::canonicalize(repo_url)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| repo_url.to_string())
    } else {
        repo_url.to_string()
    };
    let commit = match resolve(&repo, rev) {
        // A full commit id we already have needs no fetch.
        Some(c) if c.to_string() == rev => c,
        _ => {
            let mut remote = repo
                .remote_anonymous(&url)
                .map_err(|e| co_err(e.message().to_string()))?;
            let mut fo = FetchOptions::new();
            fo.remote_callbacks(callbacks());
            fo.download_tags(git2::AutotagOption::All);
            // Branches, tags, the remote's HEAD (its default branch, the
            // documented default rev), and a full ref name if one was asked
            // for (`refs/pull/7/head`): anything the remote advertises.
            let mut specs = vec![
                "+refs/heads/*:refs/remotes/origin/*".to_string(),
                "+refs/tags/*:refs/tags/*".to_string(),
                "+HEAD:refs/remotes/origin/HEAD".to_string(),
            ];
            if let Some(rest) = rev.strip_prefix("refs/") {
                if !rest.starts_with("heads/") && !rest.starts_with("tags/") {
                    specs.push(format!("+{rev}:refs/trainyard/{rest}"));
                }
            }
            remote
                .fetch(&specs, Some(&mut fo), None)
                .map_err(|e| GitError::Fetch {
                    repo: repo_url.to_string(),
                    message: e.message().to_string(),
                })?;
            resolve(&repo, rev).ok_or_else(|| GitError::UnknownRev {
                repo: repo_url.to_string(),
                rev: rev.to_string(),
            })?
        }
    };
    drop(lock);
    Ok((repo, commit))
}

/// The content of `path` in the commit `rev` names in `repo` (fetched into
/// the cache under `cache`), and the commit. For pointer files in data
/// registries.
pub fn read_file(
    cache: &Path,
    repo_url: &str,
    rev: &str,
    path: &str,
) -> Result<(Oid, Vec<u8>), GitError> {
    let (repo, commit) = fetch_commit(cache, repo_url, rev)?;
    let missing = |message: String| GitError::Checkout {
        repo: repo_url.to_string(),
        rev: rev.to_string(),
        dir: PathBuf::from(path),
        message,
    };
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| missing(e.message().to_string()))?;
    let absent = |detail: &str| GitError::MissingFile {
        repo: repo_url.to_string(),
        rev: rev.to_string(),
        commit: commit.to_string()[..12].to_string(),
        path: path.to_string(),
        detail: detail.to_string(),
    };
    let entry = tree.get_path(Path::new(path)).map_err(|_| absent(""))?;
    let blob = repo
        .find_blob(entry.id())
        .map_err(|_| absent(" (a directory or link is there)"))?;
    Ok((commit, blob.content().to_vec()))
}

/// Check out `src` into `dest` (created). Returns the commit.
pub fn checkout(cache: &Path, src: &GitSource, dest: &Path) -> Result<Oid, GitError> {
    let co_err = |message: String| GitError::Checkout {
        repo: src.repo.clone(),
        rev: src.rev.clone(),
        dir: dest.to_path_buf(),
        message,
    };
    let (repo, commit) = fetch_commit(cache, &src.repo, &src.rev)?;

    std::fs::create_dir_all(dest).map_err(|e| co_err(e.to_string()))?;
    let obj = repo
        .find_commit(commit)
        .map_err(|e| co_err(e.message().to_string()))?;
    let mut co = CheckoutBuilder::new();
    co.target_dir(dest).force().update_index(false);
    repo.checkout_tree(obj.as_object(), Some(&mut co))
        .map_err(|e| co_err(e.message().to_string()))?;
    tracing::info!(repo = %src.repo, rev = %src.rev, commit = %commit, dir = %dest.display(), "checked out");
    Ok(commit)
}

/// `HEAD` (the remote's), a branch, a tag, a full ref name the remote
/// advertises, or a (possibly abbreviated) commit id, as a commit. Never
/// the cache repository's own HEAD or branches.
fn resolve(repo: &Repository, rev: &str) -> Option<Oid> {
    let full = rev.strip_prefix("refs/").map(|rest| {
        match (rest.strip_prefix("heads/"), rest.strip_prefix("tags/")) {
            (Some(b), _) => format!("refs/remotes/origin/{b}"),
            (_, Some(_)) => rev.to_string(),
            _ => format!("refs/trainyard/{rest}"),
        }
    });
    let candidates = match full {
        Some(f) => vec![f],
        None if rev == "HEAD" => vec!["refs/remotes/origin/HEAD".to_string()],
        None => vec![
            format!("refs/remotes/origin/{rev}"),
            format!("refs/tags/{rev}"),
            rev.to_string(),
        ],
    };
    candidates.iter().find_map(|name| {
        repo.revparse_single(name)
            .ok()
            .and_then(|o| o.peel_to_commit().ok())
            .map(|c| c.id())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(repo: &Repository, file: &str, text: &str, msg: &str) -> Oid {
        let wd = repo.workdir().unwrap();
        std::fs::write(wd.join(file), text).unwrap();
        let mut idx = repo.index().unwrap();
        idx.add_path(Path::new(file)).unwrap();
        idx.write().unwrap();
        let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let refs: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, msg, &tree, &refs)
            .unwrap()
    }

    #[test]
    fn branches_tags_and_commits_check_out_exactly() {
        let d = tempfile::tempdir().unwrap();
        let origin = d.path().join("origin");
        let repo = Repository::init(&origin).unwrap();
        let c1 = commit(&repo, "train.py", "v1", "one");
        repo.tag_lightweight("v1.0", &repo.find_object(c1, None).unwrap(), false)
            .unwrap();
        let c2 = commit(&repo, "train.py", "v2", "two");
        let branch = repo.head().unwrap().shorthand().unwrap().to_string();
        let src = |rev: &str| GitSource {
            repo: origin.to_string_lossy().into_owned(),
            rev: rev.into(),
        };
        let cache = d.path().join("cache");
        for (rev, want, text) in [
            (branch.as_str(), c2, "v2"),
            ("v1.0", c1, "v1"),
            (&c1.to_string()[..10], c1, "v1"),
            (&c2.to_string(), c2, "v2"),
        ] {
            let dest = d.path().join(format!("co-{rev}"));
            assert_eq!(checkout(&cache, &src(rev), &dest).unwrap(), want, "{rev}");
            assert_eq!(
                std::fs::read_to_string(dest.join("train.py")).unwrap(),
                text
            );
        }
        // The remote's HEAD (the documented default rev), full ref names,
        // and a ref outside heads and tags that the remote advertises.
        repo.reference("refs/custom/exp", c1, false, "test")
            .unwrap();
        for (rev, want) in [
            ("HEAD", c2),
            (format!("refs/heads/{branch}").as_str(), c2),
            ("refs/tags/v1.0", c1),
            ("refs/custom/exp", c1),
        ] {
            let dest = d.path().join(format!("co-{}", rev.replace('/', "-")));
            assert_eq!(checkout(&cache, &src(rev), &dest).unwrap(), want, "{rev}");
        }
        let e = checkout(&cache, &src("no-such-branch"), &d.path().join("x")).unwrap_err();
        assert!(
            e.to_string().contains("unknown git rev \"no-such-branch\""),
            "{e}"
        );
        let e = checkout(
            &cache,
            &GitSource {
                repo: d.path().join("missing").to_string_lossy().into_owned(),
                rev: "main".into(),
            },
            &d.path().join("y"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("cannot fetch"), "{e}");
    }
}
