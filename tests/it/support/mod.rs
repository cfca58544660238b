//! An isolated environment per test: a temp Trainyard home, a work dir, and
//! helpers to run the real `trainyard` binary.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

pub mod jobs;
pub mod s3;
pub mod slurm;
pub mod wandb;
pub mod wandb_run;

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    /// Variables every `trainyard` this env runs gets (a test SLURM
    /// cluster's `SLURM_CONF`).
    pub vars: std::cell::RefCell<Vec<(String, String)>>,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        Env {
            tmp,
            home,
            vars: Default::default(),
        }
    }

    /// A path under the test's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        self.cmd_via(&[])
    }

    /// The binary run through `wrapper` (`wrapper[0] wrapper[1..]
    /// trainyard …`, e.g. `unshare` and its arguments); none: directly.
    pub fn cmd_via(&self, wrapper: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_trainyard");
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.env("TRAINYARD_HOME", &self.home)
            .env("TRAINYARD_USER", "tester")
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path());
        for (k, v) in self.vars.borrow().iter() {
            c.env(k, v);
        }
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

/// Copy a directory tree (files, directories; symlinks as the files they
/// point to).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            fs::copy(e.path(), &t).unwrap();
        }
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

/// A child process killed (SIGKILL, with its process group when it leads
/// one) when dropped, so a failing test leaves nothing running.
pub struct Proc {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// SIGKILL now and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// SIGTERM and wait for a clean exit.
    pub fn term(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound then released).
/// A free port below the kernel's ephemeral range (32768–60999 by
/// default), for daemons that connect out before they listen: slurmctld
/// registers with slurmdbd first, and a port from `free_port` comes from
/// the range outgoing connections take theirs from, so one of them can
/// take it in between ("Address already in use"). Spread by pid, then
/// walked, so parallel tests and processes rarely try the same ports.
pub fn free_listen_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Env {
    /// Start a long-running `trainyard` process; stderr goes to a file.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_with(name, args, &[])
    }

    /// [`Env::spawn`] with more environment variables.
    pub fn spawn_with(&self, name: &str, args: &[&str], vars: &[(&str, &str)]) -> Proc {
        self.spawn_via(name, &[], args, vars)
    }

    /// [`Env::spawn_with`] through a wrapper ([`Env::cmd_via`]).
    pub fn spawn_via(
        &self,
        name: &str,
        wrapper: &[&str],
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> Proc {
        let log = self.path(&format!("{name}.stderr"));
        let mut c = self.cmd_via(wrapper);
        c.envs(vars.iter().copied());
        c.args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(fs::File::create(&log).expect("log file"));
        Proc {
            child: c.spawn().expect("spawn trainyard"),
            log,
        }
    }

    /// `trainyard up` on 127.0.0.1 with `args`; waits until it answers and
    /// returns it with its URL.
    pub fn up(&self, name: &str, args: &[&str]) -> (Proc, String) {
        self.up_with(name, args, &[])
    }

    /// [`Env::up`] with more environment variables for the daemon.
    pub fn up_with(&self, name: &str, args: &[&str], vars: &[(&str, &str)]) -> (Proc, String) {
        self.up_via(name, &[], args, vars)
    }

    /// [`Env::up_with`] through a wrapper ([`Env::cmd_via`]; e.g. in a
    /// user namespace with lower limits).
    pub fn up_via(
        &self,
        name: &str,
        wrapper: &[&str],
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> (Proc, String) {
        let mut a = vec!["--json", "up"];
        if !args.contains(&"--port") {
            a.extend(["--port", "0"]);
        }
        a.extend_from_slice(args);
        let mut p = self.spawn_via(name, wrapper, &a, vars);
        let mut line = String::new();
        let out = p.child.stdout.as_mut().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("read url");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("daemon did not start ({e}): {}", p.stderr()));
        let url = v["url"].as_str().expect("url").to_string();
        wait_for(Duration::from_secs(10), || {
            http(&url, "GET", "/api/v1/health", None, "").0 == 200
        });
        register_token(&url, &self.token());
        (p, url)
    }

    /// The daemon token of this env's home.
    pub fn token(&self) -> String {
        fs::read_to_string(self.home.join("daemon.token"))
            .expect("token")
            .trim()
            .to_string()
    }
}

/// Poll `f` until true, or panic after `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("condition not met within {limit:?}");
}

/// A minimal HTTP/1.1 request over loopback: (status, body).
pub fn http(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let auth = token
        .map(|t| format!("\r\nAuthorization: Bearer {t}"))
        .unwrap_or_default();
    raw(
        url,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}{auth}\r\nContent-Type: application/json"
        ),
        body,
    )
}

/// Send `head` (request line and headers, without the blank line) and
/// `body` exactly as given, with `Connection: close` and the length added:
/// (status, body); (0, "") when nothing answers. Chunked bodies are good
/// enough for JSON answers, which axum sends with a length.
pub fn raw(url: &str, head: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Daemon URL → its token, for the daemons `Env::up` started.
fn tokens() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static T: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    T.get_or_init(Default::default)
}

fn register_token(url: &str, token: &str) {
    tokens()
        .lock()
        .unwrap()
        .insert(url.to_string(), token.to_string());
}

/// The token of a daemon `Env::up` started.
pub fn token_of(url: &str) -> String {
    tokens()
        .lock()
        .unwrap()
        .get(url)
        .cloned()
        .unwrap_or_else(|| panic!("no daemon started at {url}"))
}

/// GET a JSON document from the daemon, with `token` or (None) the token of
/// the daemon `Env::up` started at `url`.
pub fn get_json(url: &str, path: &str, token: Option<&str>) -> serde_json::Value {
    let known = token
        .map(str::to_string)
        .or_else(|| tokens().lock().unwrap().get(url).cloned());
    let (status, body) = http(url, "GET", path, known.as_deref(), "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// An in-process daemon on `home` (any free loopback port: see
/// `daemon::Config::loopback`), with `agent` as its local agent.
pub fn inproc_daemon(
    home: &trainyard::Home,
    agent: Option<trainyard::agent::Setup>,
) -> trainyard::daemon::Config {
    trainyard::daemon::Config::loopback(home.clone(), 0, agent)
}
