//! Materializing a version into a directory (`data checkout`).
//!
//! Safety rules: every object is verified against its id before it is linked
//! or copied out; nothing outside the directory is written (manifests are
//! validated, and an existing symlink or file is never written through);
//! files the version does not own are never overwritten or deleted without
//! `force`. Files are written under a temporary name
//! (`.trainyard-tmp-<pid>-<ns>-<n>`) beside their destination and renamed
//! into place, so an interrupted checkout leaves no half-written file under a
//! real name. The temp files a killed checkout leaves behind are removed by
//! the next checkout of the same directory, but only those whose writer pid
//! is no longer running, so a concurrent checkout's files are left alone.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use rayon::prelude::*;

use super::manifest::{Entry, Kind, Manifest};
use super::objects::{hash_file, read_full};
use super::pack::Location;
use super::snapshot::canonical;
use super::walk::{temp_writer_pid, WalkEntry, TEMP_PREFIX};
use super::{DatasetRef, Error, ObjectId, Result, Store};
use crate::progress::Progress;

/// How files get from the store into the checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Reflink if the filesystem can, else hardlink, else copy. When running
    /// as root, hardlinks are skipped: file permissions do not stop root from
    /// writing through a hardlink into the store.
    #[default]
    Auto,
    /// Copy-on-write clone (btrfs, XFS): instant and independent.
    Reflink,
    /// Hard link to the read-only object: instant, shares the inode.
    Hardlink,
    /// A plain copy.
    Copy,
}

impl LinkMode {
    fn as_u8(self) -> u8 {
        self as u8
    }
    fn from_u8(v: u8) -> LinkMode {
        match v {
            1 => LinkMode::Reflink,
            2 => LinkMode::Hardlink,
            3 => LinkMode::Copy,
            _ => LinkMode::Auto,
        }
    }
    /// Name for display.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Auto => "auto",
            LinkMode::Reflink => "reflink",
            LinkMode::Hardlink => "hardlink",
            LinkMode::Copy => "copy",
        }
    }
}

/// Options for [`Store::checkout`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckoutOptions {
    /// How to materialize files.
    pub link: LinkMode,
    /// Replace or delete files the version does not own.
    pub force: bool,
}

/// What a checkout did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckoutReport {
    /// The dataset.
    pub dataset: String,
    /// The version checked out.
    pub version: ObjectId,
    /// The directory.
    pub dir: PathBuf,
    /// Files and symlinks written.
    pub written: u64,
    /// Bytes written (or linked).
    pub bytes: u64,
    /// Paths already identical, left alone.
    pub unchanged: u64,
    /// Paths of the previous checkout removed.
    pub removed: u64,
    /// Temp files of interrupted checkouts (writer no longer running) removed.
    pub cleaned: u64,
    /// The link mode used for files (the one `auto` settled on).
    pub link: LinkMode,
}

enum Action {
    Write,
    Replace,
    FixMode,
}

impl Store {
    /// Check out `r` into `dir` (created if missing).
    pub fn checkout(
        &self,
        r: &DatasetRef,
        dir: &Path,
        opts: CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<CheckoutReport> {
        let ds = self.catalog.dataset(&r.dataset)?;
        let version = self.catalog.resolve(&ds, r.reference.as_deref())?;
        let target = self.manifest(&version.id)?;
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let (abs, key) = canonical(dir)?;
        if !abs.is_dir() {
            return Err(Error::io(
                "check out into",
                &abs,
                std::io::Error::other("not a directory"),
            ));
        }
        let _lock = self.lock(false)?;

        // What Trainyard put here last time: those files it may replace or remove.
        let owned = match self.catalog.checkout_of(&key)? {
            Some(id) => match self.manifest(&id) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "previous checkout's manifest unreadable; treating its files as not owned");
                    Manifest::default()
                }
            },
            None => Manifest::default(),
        };

        progress.phase("scanning", None);
        let gen = self.catalog.gc_generation()?;
        let (mut current, gone, temps) = self.scan(&abs, &key, gen)?;
        let cleaned = remove_debris(&abs, &temps, &target)?;
        // Hash only what matters: paths the target or the previous checkout name.
        current
            .par_iter_mut()
            .filter(|e| e.id.is_none() && e.kind != Kind::Dir)
            .filter(|e| target.get(&e.rel).is_some() || owned.get(&e.rel).is_some())
            .try_for_each(|e| -> Result<()> {
                let p = abs.join(&e.rel);
                if e.kind == Kind::Symlink {
                    let t = fs::read_link(&p).map_err(|err| Error::io("read link", &p, err))?;
                    let b = t.as_os_str().as_encoded_bytes();
                    e.stamp.size = b.len() as u64;
                    e.id = Some(ObjectId::of_bytes(b));
                } else {
                    let (id, stamp, _) = hash_file(&p, false)?;
                    e.id = Some(id);
                    e.stamp = stamp;
                    e.fresh = true;
                }
                Ok(())
            })?;
        let cur: HashMap<&str, &WalkEntry> = current.iter().map(|e| (e.rel.as_str(), e)).collect();
        let same = |c: &WalkEntry, t: &Entry| {
            c.kind == t.kind && (t.kind == Kind::Dir || c.id == Some(t.id))
        };

        // Plan.
        let mut plan: Vec<(&Entry, Action)> = Vec::new();
        let mut conflicts = Vec::new();
        let mut unchanged = 0u64;
        for t in &target.entries {
            match cur.get(t.path.as_str()) {
                None => plan.push((t, Action::Write)),
                Some(c) if same(c, t) => {
                    if t.kind == Kind::File && c.exec != t.exec {
                        plan.push((t, Action::FixMode));
                    } else {
                        unchanged += 1;
                    }
                }
                Some(c) => {
                    let was_ours = owned
                        .get(&t.path)
                        .is_some_and(|o| c.kind != Kind::Dir && same(c, o));
                    if was_ours || opts.force {
                        plan.push((t, Action::Replace));
                    } else {
                        conflicts.push(t.path.clone());
                    }
                }
            }
        }
        let mut removals: Vec<&WalkEntry> = Vec::new();
        for o in &owned.entries {
            if target.get(&o.path).is_some() {
                continue;
            }
            if let Some(c) = cur.get(o.path.as_str()) {
                if same(c, o) || opts.force {
                    removals.push(c);
                } else {
                    conflicts.push(o.path.clone());
                }
            }
        }
        if !conflicts.is_empty() {
            conflicts.sort();
            return Err(Error::CheckoutConflict {
                dir: abs,
                paths: conflicts,
            });
        }

        // Directories first (sorted order puts parents before children).
        for (t, action) in plan.iter().filter(|(t, _)| t.kind == Kind::Dir) {
            let p = abs.join(&t.path);
            if matches!(action, Action::Replace) {
                remove_any(&p)?;
            }
            ensure_dir(&abs, &t.path)?;
        }

        // Files and symlinks, in parallel.
        let index = self.catalog.pack_index()?;
        let chosen = AtomicU8::new(opts.link.as_u8());
        let bytes = AtomicU64::new(0);
        let work: Vec<&(&Entry, Action)> =
            plan.iter().filter(|(t, _)| t.kind != Kind::Dir).collect();
        let total: u64 = work.iter().map(|(t, _)| t.size).sum();
        progress.phase("checking out", Some(total));
        // In chunks: one pack-index query per 256 files, not one per file.
        work.par_chunks(256).try_for_each(|chunk| -> Result<()> {
            let ids: Vec<ObjectId> = chunk.iter().map(|(t, _)| t.id).collect();
            let packed = index.lookup_many(&ids)?;
            for (t, action) in chunk {
                let dest = abs.join(&t.path);
                check_parents(&abs, &t.path)?;
                match action {
                    Action::FixMode => set_mode(&dest, t.exec)?,
                    Action::Replace | Action::Write => {
                        if matches!(action, Action::Replace) {
                            if let Ok(m) = fs::symlink_metadata(&dest) {
                                if m.is_dir() {
                                    remove_any(&dest)?;
                                }
                            }
                        }
                        let loc = packed.get(&t.id);
                        match t.kind {
                            Kind::Symlink => self.write_symlink(t, &dest, loc)?,
                            _ => self.write_file(t, &dest, &chosen, loc)?,
                        }
                        bytes.fetch_add(t.size, Ordering::Relaxed);
                    }
                }
                progress.inc(t.size);
            }
            Ok(())
        })?;

        // Remove what the previous checkout owned and this one does not.
        let mut removed = 0u64;
        let mut dirs: Vec<&WalkEntry> = Vec::new();
        for c in &removals {
            if c.kind == Kind::Dir {
                dirs.push(c);
                continue;
            }
            let p = abs.join(&c.rel);
            fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
            removed += 1;
        }
        dirs.sort_by(|a, b| b.rel.cmp(&a.rel));
        for d in dirs {
            // Only if empty: files we do not own stay, and so does their directory.
            if fs::remove_dir(abs.join(&d.rel)).is_ok() {
                removed += 1;
            }
        }

        self.catalog.record_checkout(&key, &ds, &version.id)?;
        // Teach the stat cache the files now present, so status here is instant.
        let written_paths: Vec<&str> = plan.iter().map(|(t, _)| t.path.as_str()).collect();
        let mut fresh = Vec::with_capacity(written_paths.len());
        for (t, _) in &plan {
            if t.kind != Kind::File {
                continue;
            }
            if let Ok(m) = fs::symlink_metadata(abs.join(&t.path)) {
                fresh.push(WalkEntry {
                    rel: t.path.clone(),
                    kind: Kind::File,
                    exec: t.exec,
                    stamp: super::objects::FileStamp::of(&m),
                    id: Some(t.id),
                    fresh: true,
                    present: false,
                });
            }
        }
        fresh.extend(current.iter().filter(|e| e.fresh).cloned());
        // Written from verified objects, so they were present at `gen`.
        if let Err(e) = self.statcache.update(&key, &fresh, &gone, Some(gen)) {
            tracing::warn!(error = %e, "could not update the stat cache");
        }
        progress.finish();
        let link = match LinkMode::from_u8(chosen.load(Ordering::Relaxed)) {
            LinkMode::Auto => LinkMode::Copy,
            m => m,
        };
        Ok(CheckoutReport {
            dataset: ds.name,
            version: version.id,
            dir: abs,
            written: work.len() as u64,
            bytes: bytes.into_inner(),
            unchanged,
            removed,
            cleaned,
            link,
        })
    }

    /// The bytes of a small object: loose if there is such a file, else at
    /// its pack location; verified either way.
    fn read_small(&self, t: &Entry, packed: Option<&Location>) -> Result<Vec<u8>> {
        match packed {
            Some(loc) if !self.objects.path(&t.id).is_file() => self.read_packed(&t.id, loc),
            _ => self.objects.read_verified(&t.id),
        }
    }

    fn write_symlink(&self, t: &Entry, dest: &Path, packed: Option<&Location>) -> Result<()> {
        let target = self.read_small(t, packed)?;
        let tmp = temp_name(dest);
        let os = std::ffi::OsStr::from_bytes(&target);
        std::os::unix::fs::symlink(os, &tmp).map_err(|e| Error::io("create symlink", &tmp, e))?;
        rename(&tmp, dest)
    }

    fn write_file(
        &self,
        t: &Entry,
        dest: &Path,
        chosen: &AtomicU8,
        packed: Option<&Location>,
    ) -> Result<()> {
        let tmp = temp_name(dest);
        let src = self.objects.path(&t.id);
        if !src.is_file() {
            // Packed objects are small: read (verified), write, rename.
            let bytes = self.read_small(t, packed)?;
            let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
            f.write_all(&bytes)
                .map_err(|e| Error::io("write", &tmp, e))?;
            drop(f);
            set_mode(&tmp, t.exec)?;
            return rename(&tmp, dest);
        }
        let mut mode = LinkMode::from_u8(chosen.load(Ordering::Relaxed));
        // An object is read-only and has no exec bit: executables are never hardlinked.
        if t.exec && mode == LinkMode::Hardlink {
            mode = LinkMode::Copy;
        }
        if mode != LinkMode::Copy {
            self.verify_object(&t.id, t.size)?;
        }
        loop {
            let r = match mode {
                LinkMode::Copy => return self.copy_verified(t, &src, &tmp, dest),
                LinkMode::Reflink | LinkMode::Auto => {
                    reflink(&src, &tmp).map_err(|e| ("reflink", e))
                }
                LinkMode::Hardlink => fs::hard_link(&src, &tmp).map_err(|e| ("hardlink", e)),
            };
            match r {
                Ok(()) => {
                    if mode != LinkMode::Hardlink {
                        set_mode(&tmp, t.exec)?;
                    }
                    if chosen.load(Ordering::Relaxed) == LinkMode::Auto.as_u8() {
                        chosen.store(mode.as_u8(), Ordering::Relaxed);
                    }
                    return rename(&tmp, dest);
                }
                Err((what, e)) => {
                    let _ = fs::remove_file(&tmp);
                    if chosen.load(Ordering::Relaxed) != LinkMode::Auto.as_u8()
                        && mode != LinkMode::Auto
                    {
                        return Err(Error::Link {
                            mode: what,
                            from: src,
                            to: dest.to_path_buf(),
                            source: e,
                        });
                    }
                    // auto: fall back reflink → hardlink → copy
                    mode = match mode {
                        LinkMode::Auto | LinkMode::Reflink if !t.exec && !is_root() => {
                            LinkMode::Hardlink
                        }
                        _ => LinkMode::Copy,
                    };
                }
            }
        }
    }

    fn verify_object(&self, id: &ObjectId, size: u64) -> Result<()> {
        let path = self.objects.path(id);
        if !self.objects.contains(id, size) && !path.exists() {
            return Err(Error::MissingObject(*id));
        }
        if !self.objects.verify(id)? {
            return Err(Error::CorruptObject { id: *id, path });
        }
        Ok(())
    }

    /// Copy an object out, hashing as it streams; rename into place only if
    /// the bytes match the id.
    fn copy_verified(&self, t: &Entry, src: &Path, tmp: &Path, dest: &Path) -> Result<()> {
        let mut f = match File::open(src) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingObject(t.id))
            }
            Err(e) => return Err(Error::io("open", src, e)),
        };
        let mut out = File::create(tmp).map_err(|e| Error::io("create", tmp, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; (t.size as usize).clamp(1, 4 << 20)];
        loop {
            let n = read_full(&mut f, &mut buf).map_err(|e| Error::io("read", src, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write", tmp, e))?;
        }
        drop(out);
        if ObjectId::from(hasher.finalize()) != t.id {
            let _ = fs::remove_file(tmp);
            return Err(Error::CorruptObject {
                id: t.id,
                path: src.to_path_buf(),
            });
        }
        set_mode(tmp, t.exec)?;
        rename(tmp, dest)
    }
}

/// A fresh name beside `dest` for writing before the rename.
fn temp_name(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{TEMP_PREFIX}{}-{}-{}",
        std::process::id(),
        super::catalog::now_ns(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    dest.with_file_name(name)
}

/// Remove the temp files (relative to `abs`) that interrupted checkouts
/// left: only those whose writer is no longer running. A pid that is
/// running (or is ours) may be a concurrent checkout still writing; the
/// worst a reused pid causes is debris left for a later checkout. A path the
/// target version itself names is never touched. Returns how many went.
fn remove_debris(abs: &Path, temps: &[String], target: &Manifest) -> Result<u64> {
    let me = std::process::id();
    let mut removed = 0u64;
    for rel in temps {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let Some(pid) = temp_writer_pid(name) else {
            continue;
        };
        if pid == me || target.get(rel).is_some() || writer_alive(pid) {
            continue;
        }
        let p = abs.join(rel);
        match fs::remove_file(&p) {
            Ok(()) => removed += 1,
            // Another checkout cleaned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove leftover temp file", &p, e)),
        }
    }
    if removed > 0 {
        tracing::info!(dir = %abs.display(), removed, "removed temp files left by an interrupted checkout");
    }
    Ok(removed)
}

/// Whether process `pid` exists (signal 0: EPERM means it does, as another user's).
fn writer_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| {
        let _ = fs::remove_file(from);
        Error::io("rename into place", to, e)
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn set_mode(p: &Path, exec: bool) -> Result<()> {
    let mode = if exec { 0o755 } else { 0o644 };
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", p, e))
}

fn reflink(src: &Path, dst: &Path) -> std::io::Result<()> {
    let s = File::open(src)?;
    let d = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    rustix::fs::ioctl_ficlone(&d, &s).map_err(std::io::Error::from)
}

fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(|e| Error::io("remove", p, e)),
        Ok(_) => fs::remove_file(p).map_err(|e| Error::io("remove", p, e)),
        Err(_) => Ok(()),
    }
}

/// Every existing ancestor of `rel` below `root` must be a real directory:
/// never write through a symlink.
fn check_parents(root: &Path, rel: &str) -> Result<()> {
    let mut p = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::UnsafePath {
                    path: rel.to_string(),
                    reason: "a parent on disk is a symlink or file, not a directory",
                })
            }
            Err(e) => return Err(Error::io("stat", &p, e)),
        }
    }
    Ok(())
}

fn ensure_dir(root: &Path, rel: &str) -> Result<()> {
    check_parents(root, rel)?;
    let p = root.join(rel);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::UnsafePath {
            path: rel.to_string(),
            reason: "a symlink or file is in the way of a directory",
        }),
        Err(_) => fs::create_dir(&p).map_err(|e| Error::io("create directory", &p, e)),
    }
}
