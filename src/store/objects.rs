//! The object directory: immutable files named by the BLAKE3 of their bytes.
//!
//! An object appears under its final name only complete: it is written to
//! `store/tmp/`, made read-only, then renamed into `objects/ab/cdef…`.
//! Durability is batched: callers write many objects and then call
//! [`Objects::flush`] once (one `syncfs`) before committing anything that
//! refers to them.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use super::{Error, ObjectId, Result};

/// Files at least this large are hashed with several threads and copied
/// with `copy_file_range` (or a reflink); smaller ones are read in one go.
pub(crate) const LARGE_FILE: u64 = 1 << 20;
/// Read size for streaming large files.
const CHUNK: usize = 8 << 20;

/// An object being written, not yet visible under its name.
enum Pending {
    Anonymous(File),
    Named(tempfile::NamedTempFile),
}

impl Pending {
    fn file(&mut self) -> &mut File {
        match self {
            Pending::Anonymous(f) => f,
            Pending::Named(t) => t.as_file_mut(),
        }
    }
}

/// The object directory of a store.
#[derive(Debug)]
pub(crate) struct Objects {
    root: PathBuf,
    tmp: PathBuf,
}

/// The identity of a file's state, as `fstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    pub fn of(m: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// What storing one file did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stored {
    pub id: ObjectId,
    pub stamp: FileStamp,
    /// Bytes written to the store (0 when the object was already there).
    pub new_bytes: u64,
}

/// Write `body` to `dest` atomically (temp file in `tmp_dir`, then rename).
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, body: &[u8]) -> Result<()> {
    fs::create_dir_all(tmp_dir).map_err(|e| Error::io("create", tmp_dir, e))?;
    let mut t = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)
        .map_err(|e| Error::io("create a temporary file in", tmp_dir, e))?;
    t.write_all(body)
        .and_then(|_| t.as_file().sync_all())
        .map_err(|e| Error::io("write", t.path(), e))?;
    t.persist(dest)
        .map_err(|e| Error::io("rename into place", dest, e.error))?;
    Ok(())
}

impl Objects {
    /// Open (and on first use create) the object directory under `store_dir`.
    pub fn open(store_dir: &Path) -> Result<Objects> {
        let root = store_dir.join("objects");
        let tmp = store_dir.join("tmp");
        if !root.join("ff").is_dir() {
            for i in 0..=255u8 {
                let d = root.join(format!("{i:02x}"));
                fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
            }
        }
        fs::create_dir_all(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        Ok(Objects { root, tmp })
    }

    /// The objects directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The temporary directory (same filesystem as the objects).
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Where object `id` lives.
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the object is present with the expected size. A size check is
    /// cheap and catches objects truncated by a power loss before the flush.
    pub fn contains(&self, id: &ObjectId, size: u64) -> bool {
        fs::symlink_metadata(self.path(id)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// A new, still invisible object file in the object's own fan-out
    /// directory: an anonymous `O_TMPFILE` inode where the filesystem has them
    /// (one directory operation per object: the final link), else a named
    /// temp file (two: create and rename). Spreading over 256 directories
    /// avoids contending on one directory lock.
    fn create(&self, id: &ObjectId) -> Result<Pending> {
        let dir = self.root.join(&id.to_hex()[..2]);
        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
        if let Ok(fd) = rustix::fs::openat(CWD, &dir, flags, Mode::from_raw_mode(0o444)) {
            return Ok(Pending::Anonymous(File::from(fd)));
        }
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map(Pending::Named)
            .map_err(|e| Error::io("create a temporary file in", &dir, e))
    }

    /// Give a complete object its name. Until this returns, no reader can see it.
    fn publish(&self, mut p: Pending, id: &ObjectId, size: u64) -> Result<()> {
        let dest = self.path(id);
        if size >= LARGE_FILE {
            // Per small file this costs more than it saves; the final syncfs batches those.
            start_writeback(p.file());
        }
        match p {
            Pending::Named(t) => {
                t.as_file()
                    .set_permissions(fs::Permissions::from_mode(0o444))
                    .map_err(|e| Error::io("chmod", t.path(), e))?;
                t.persist(&dest)
                    .map_err(|e| Error::io("rename into place", &dest, e.error))?;
                Ok(())
            }
            Pending::Anonymous(f) => {
                for attempt in 0..2 {
                    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd works for anyone.
                    let r =
                        rustix::fs::linkat(&f, "", CWD, &dest, AtFlags::EMPTY_PATH).or_else(|_| {
                            let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
                            rustix::fs::linkat(
                                CWD,
                                proc.as_str(),
                                CWD,
                                &dest,
                                AtFlags::SYMLINK_FOLLOW,
                            )
                        });
                    match r {
                        Ok(()) => return Ok(()),
                        // Another writer stored the same content first: fine, if it is whole.
                        Err(rustix::io::Errno::EXIST) if self.contains(id, size) => return Ok(()),
                        Err(rustix::io::Errno::EXIST) if attempt == 0 => {
                            // A damaged object of the wrong size: replace it.
                            let _ = fs::remove_file(&dest);
                        }
                        Err(e) => return Err(Error::io("link into place", &dest, e.into())),
                    }
                }
                Err(Error::io(
                    "link into place",
                    &dest,
                    std::io::Error::other("it keeps reappearing with the wrong size"),
                ))
            }
        }
    }

    /// Store `bytes` as an object; returns its id and whether it was new.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(ObjectId, bool)> {
        let id = ObjectId::of_bytes(bytes);
        if self.contains(&id, bytes.len() as u64) {
            return Ok((id, false));
        }
        let mut p = self.create(&id)?;
        p.file()
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.path(&id), e))?;
        self.publish(p, &id, bytes.len() as u64)?;
        Ok((id, true))
    }

    /// Hash the file at `path` and store it unless the store already has it.
    /// Fails with [`Error::FileChanged`] if the file changes meanwhile.
    pub fn put_file(&self, path: &Path) -> Result<Stored> {
        let (id, stamp, small) = hash_file(path, true)?;
        if self.contains(&id, stamp.size) {
            return Ok(Stored {
                id,
                stamp,
                new_bytes: 0,
            });
        }
        let mut p = self.create(&id)?;
        match small {
            Some(bytes) => p
                .file()
                .write_all(&bytes)
                .map_err(|e| Error::io("write", &self.path(&id), e))?,
            None => {
                let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
                copy_or_reflink(&mut src, p.file())
                    .map_err(|e| Error::io("copy into the store", path, e))?;
                // The copy must be of the bytes we hashed.
                let after = src.metadata().map_err(|e| Error::io("stat", path, e))?;
                if FileStamp::of(&after) != stamp {
                    return Err(Error::FileChanged(path.to_path_buf()));
                }
            }
        }
        self.publish(p, &id, stamp.size)?;
        Ok(Stored {
            id,
            stamp,
            new_bytes: stamp.size,
        })
    }

    /// Move `file` (in this store's filesystem, e.g. under [`Objects::tmp`])
    /// into place as object `id`, after hashing it: an object received from
    /// elsewhere is never visible unverified. Returns the bytes added (0 when
    /// the store already had it; the file is then removed).
    pub fn adopt(&self, file: &Path, id: &ObjectId) -> Result<u64> {
        let (got, stamp, _) = hash_file(file, false)?;
        if got != *id {
            return Err(Error::CorruptObject {
                id: *id,
                path: file.to_path_buf(),
            });
        }
        if self.contains(id, stamp.size) {
            let _ = fs::remove_file(file);
            return Ok(0);
        }
        fs::set_permissions(file, fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io("chmod", file, e))?;
        let dest = self.path(id);
        fs::rename(file, &dest).map_err(|e| Error::io("rename into place", &dest, e))?;
        Ok(stamp.size)
    }

    /// Read a whole object and check it against its id.
    pub fn read_verified(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingObject(*id))
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        if ObjectId::of_bytes(&bytes) != *id {
            return Err(Error::CorruptObject { id: *id, path });
        }
        Ok(bytes)
    }

    /// Rehash an object file; `Ok(false)` if its content does not match `id`.
    pub fn verify(&self, id: &ObjectId) -> Result<bool> {
        let path = self.path(id);
        match hash_file(&path, false) {
            Ok((got, _, _)) => Ok(got == *id),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::MissingObject(*id))
            }
            Err(e) => Err(e),
        }
    }

    /// Make every object written so far durable: one `syncfs` for the whole
    /// filesystem instead of one `fsync` per object (git's batch mode idea).
    pub fn flush(&self) -> Result<()> {
        let f = File::open(&self.root).map_err(|e| Error::io("open", &self.root, e))?;
        rustix::fs::syncfs(&f)
            .map_err(|e| Error::io("sync the filesystem of", &self.root, e.into()))?;
        Ok(())
    }
}

/// Ask the kernel to start writing this file's data to disk now, without
/// waiting (git's "batch" fsync mode): the one `syncfs` before the catalog
/// commit then finds most data already written. Purely a hint.
pub(crate) fn start_writeback(f: &File) {
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // valid for the duration of the call because `f` is borrowed.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Hash a file. Returns the id, the `fstat` stamp taken before reading (the
/// file is checked again afterwards and [`Error::FileChanged`] returned if it
/// moved), and the bytes themselves for small files when `keep_small`.
pub(crate) fn hash_file(
    path: &Path,
    keep_small: bool,
) -> Result<(ObjectId, FileStamp, Option<Vec<u8>>)> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let before = FileStamp::of(&f.metadata().map_err(|e| Error::io("stat", path, e))?);
    let (id, small) = if before.size < LARGE_FILE {
        let mut buf = Vec::with_capacity(before.size as usize + 1);
        f.read_to_end(&mut buf)
            .map_err(|e| Error::io("read", path, e))?;
        if buf.len() as u64 != before.size {
            return Err(Error::FileChanged(path.to_path_buf()));
        }
        let id = ObjectId::of_bytes(&buf);
        (id, keep_small.then_some(buf))
    } else {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                break;
            }
            hasher.update_rayon(&buf[..n]);
            total += n as u64;
        }
        if total != before.size {
            return Err(Error::FileChanged(path.to_path_buf()));
        }
        (ObjectId::from(hasher.finalize()), None)
    };
    let after = FileStamp::of(&f.metadata().map_err(|e| Error::io("stat", path, e))?);
    if after != before {
        return Err(Error::FileChanged(path.to_path_buf()));
    }
    Ok((id, before, small))
}

/// Fill `buf` as far as the file allows; returns the bytes read (0 at EOF).
pub(crate) fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copy `src` into `dst`: a reflink where the filesystem shares extents
/// (btrfs, XFS), else an in-kernel copy (`copy_file_range`).
pub(crate) fn copy_or_reflink(src: &mut File, dst: &mut File) -> std::io::Result<u64> {
    if rustix::fs::ioctl_ficlone(&*dst, &*src).is_ok() {
        return Ok(src.metadata()?.len());
    }
    std::io::copy(src, dst)
}
