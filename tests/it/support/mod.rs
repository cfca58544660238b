//! An isolated environment per test: a temp Trainyard home, a work dir, and
//! helpers to run the real `trainyard` binary.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        Env { tmp, home }
    }

    /// A path under the test's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trainyard"));
        c.env("TRAINYARD_HOME", &self.home)
            .env("TRAINYARD_USER", "tester")
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run trainyard")
    }

    /// Run, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "trainyard {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).expect("utf-8 stdout")
    }

    /// Run with --json, expect success, parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    /// Run, expect failure, return stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "trainyard {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).expect("utf-8 stderr")
    }
}

/// Write a file, creating parents.
pub fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, content).expect("write");
}

/// Make every file below `root` look an hour old, so the stat cache trusts
/// it (entries hashed within 2 s of their mtime are re-read, by design).
pub fn age(root: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for e in walk(root) {
        let m = fs::symlink_metadata(&e).expect("stat");
        if m.is_file() {
            let f = fs::OpenOptions::new().write(true).open(&e).expect("open");
            f.set_modified(old).expect("set mtime");
        }
    }
}

/// Every path below `root` (not following symlinks), sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if fs::symlink_metadata(&p).expect("stat").is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A description of a tree (path, kind, exec bit, content or link target)
/// for bit-for-bit comparison.
pub fn snapshot_tree(root: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    walk(root)
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .to_string();
            let m = fs::symlink_metadata(&p).expect("stat");
            let d = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).expect("readlink").display())
            } else if m.is_dir() {
                "dir".to_string()
            } else {
                let exec = m.permissions().mode() & 0o100 != 0;
                let c = fs::read(&p).expect("read");
                format!("file exec={exec} {}", blake3::hash(&c).to_hex())
            };
            (rel, d)
        })
        .collect()
}

/// A small but varied dataset: nested dirs, an empty dir, an empty file, an
/// executable, a symlink inside and one pointing outside, a 3 MiB file.
pub fn sample_dataset(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for i in 0..40 {
        write(
            &root.join(format!("shard{}/f{i:03}.txt", i % 4)),
            format!("row {i}\n").as_bytes(),
        );
    }
    write(&root.join("empty.bin"), b"");
    write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir_all(root.join("empty_dir")).expect("mkdir");
    std::os::unix::fs::symlink("shard0/f000.txt", root.join("inside_link")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("outside_link")).expect("symlink");
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    write(&root.join("big/blob.bin"), &big);
}

/// The (change, path) pairs of a `status` or `diff` JSON report.
pub fn changes(report: &serde_json::Value) -> Vec<(String, String)> {
    report["changes"]
        .as_array()
        .expect("changes array")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().expect("change").to_string(),
                c["path"].as_str().expect("path").to_string(),
            )
        })
        .collect()
}
