//! What a watched directory sits on, and whether it is there at all.
//!
//! `statfs` names the filesystem type: inotify sees only changes made
//! through this kernel, so NFS, SMB/CIFS, FUSE (sshfs, bindfs, rclone,
//! virtiofs), 9p, Ceph, Lustre, AFS and cluster filesystems are polled
//! (other machines write there). [`probe`] also tells whether the
//! directory is still the one that was watched: gone, no longer a mount
//! point after it was one (unmounted, leaving the empty mount point), or
//! on another filesystem type.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A filesystem type as `statfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsKind {
    /// The magic number (`f_type`).
    pub magic: u64,
}

const REMOTE: &[(u64, &str)] = &[
    (0x6969, "nfs"),
    (0x517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x0102_1997, "9p"),
    (0x00C3_6400, "ceph"),
    (0x0BD0_0BD0, "lustre"),
    (0x5346_414F, "afs"),
    (0x6B41_4653, "kafs"),
    (0x7375_7245, "coda"),
    (0x7461_636F, "ocfs2"),
    (0x0116_1970, "gfs2"),
    (0x1373, "devfs"),
];

const LOCAL: &[(u64, &str)] = &[
    (0xEF53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0x794C_7630, "overlayfs"),
    (0x2FC1_2FC1, "zfs"),
    (0xF2F5_2010, "f2fs"),
    (0x4D44, "vfat"),
    (0x2011_BAB0, "exfat"),
    (0x5346_544E, "ntfs"),
    (0x6165_6673, "aufs"),
];

impl FsKind {
    /// The type's name (`nfs`, `ext4`, or `0x…` when unknown).
    pub fn name(self) -> String {
        REMOTE
            .iter()
            .chain(LOCAL)
            .find(|(m, _)| *m == self.magic)
            .map_or_else(|| format!("{:#x}", self.magic), |(_, n)| n.to_string())
    }

    /// Whether inotify cannot be trusted here (other machines or a FUSE
    /// daemon change files behind this kernel's back): poll instead.
    pub fn needs_polling(self) -> bool {
        REMOTE.iter().any(|(m, _)| *m == self.magic)
    }
}

/// What the directory looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It is there.
    Present {
        /// Its filesystem.
        fs: FsKind,
        /// Whether it is a mount point (its device differs from its parent's).
        mount_point: bool,
        /// Whether it has no entries.
        empty: bool,
    },
    /// It is not (the reason, for the log).
    Missing(String),
}

/// Look at `dir`.
pub fn probe(dir: &Path) -> Probe {
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return Probe::Missing(format!("{} is no longer a directory", dir.display())),
        Err(e) => return Probe::Missing(format!("{}: {e}", dir.display())),
    };
    let fs = match rustix::fs::statfs(dir) {
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => FsKind {
            magic: (s.f_type as i64 as u64) & 0xFFFF_FFFF,
        },
        Err(e) => return Probe::Missing(format!("statfs {}: {e}", dir.display())),
    };
    let mount_point = dir
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|p| p.dev() != meta.dev());
    let empty = match std::fs::read_dir(dir) {
        Ok(mut rd) => rd.next().is_none(),
        Err(e) => return Probe::Missing(format!("{}: {e}", dir.display())),
    };
    Probe::Present {
        fs,
        mount_point,
        empty,
    }
}
