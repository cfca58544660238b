//! A hostile or damaged remote: crafted keys in a real S3 bucket (the in-test
//! s3s server on 127.0.0.1) or a directory remote, and the real `trainyard`
//! binary pulling from it. Whatever the remote says, a pull gets exactly the
//! version asked for or fails naming the remote and the key at fault, and a
//! failed pull leaves the local catalog as it was.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::support::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::support::*;

/// A command with the S3 test credentials.
fn s3_cmd(env: &Env) -> Command {
    let mut c = env.cmd();
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_PROFILE")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            env.path("no-aws-credentials"),
        )
        .env("AWS_CONFIG_FILE", env.path("no-aws-config"));
    c
}

/// Run; expect success; (stdout, stderr).
fn ok(env: &Env, args: &[&str]) -> (String, String) {
    let o = s3_cmd(env).args(args).output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(
        o.status.success(),
        "trainyard {args:?} failed: {err}\n{out}"
    );
    (out, err)
}

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(env, &a).0).unwrap()
}

/// Run; expect a clean failure (exit 1, not a panic); stderr.
fn fail(env: &Env, args: &[&str]) -> String {
    let o = s3_cmd(env).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "{args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    err
}

fn add_remote(env: &Env, endpoint: &str) {
    ok(
        env,
        &[
            "remote",
            "add",
            "lab",
            &format!("s3://{BUCKET}/team"),
            "--endpoint",
            endpoint,
            "--allow-http",
            "--default",
        ],
    );
}

/// A bucket holding two versions of `ds`: X (tag `v1`) and Y (newer, with
/// `evil.txt`); each has a 200 KiB file stored loose and small files packed.
struct Lab {
    /// Holds the temp dir (and the pushing machine's home).
    _env: Env,
    s3: S3Server,
    data_x: PathBuf,
    x: String,
    y: String,
    big_id: String,
}

const BIG: usize = 200 * 1024;

fn lab() -> Lab {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"), 0);
    let data_x = env.path("x");
    for i in 0..20 {
        write(
            &data_x.join(format!("d/f{i}.txt")),
            format!("x {i}\n").as_bytes(),
        );
    }
    let big: Vec<u8> = (0..BIG as u32).map(|i| (i % 249) as u8).collect();
    write(&data_x.join("big.bin"), &big);
    let data_y = env.path("y");
    write(&data_y.join("evil.txt"), b"not what you asked for\n");
    write(&data_y.join("big.bin"), &big[..BIG - 1]);
    ok(
        &env,
        &[
            "data",
            "add",
            data_x.to_str().unwrap(),
            "--name",
            "ds",
            "--tag",
            "v1",
        ],
    );
    ok(
        &env,
        &["data", "add", data_y.to_str().unwrap(), "--name", "ds"],
    );
    let log = json(&env, &["data", "log", "ds"]);
    let (y, x) = (
        log[0]["id"].as_str().unwrap().to_string(),
        log[1]["id"].as_str().unwrap().to_string(),
    );
    add_remote(&env, &s3.url);
    ok(&env, &["data", "push", "--all"]);
    Lab {
        _env: env,
        s3,
        data_x,
        x,
        y,
        big_id: blake3::hash(&big).to_hex().to_string(),
    }
}

impl Lab {
    /// The bucket file of a key below the remote's prefix.
    fn key(&self, rel: &str) -> PathBuf {
        self.s3.file(&format!("team/{rel}"))
    }

    /// A fresh machine with the remote configured.
    fn other(&self) -> Env {
        let o = Env::new();
        add_remote(&o, &self.s3.url);
        o
    }
}

/// What the local catalog holds: datasets, and every version and tag of `ds`.
fn catalog(env: &Env) -> String {
    let list = json(env, &["data", "list"]);
    let log = s3_cmd(env)
        .args(["--json", "data", "log", "ds"])
        .output()
        .unwrap();
    format!("{list} {}", String::from_utf8_lossy(&log.stdout))
}

fn tree_without_outside(root: &Path) -> Vec<(String, String)> {
    snapshot_tree(root)
}

/// A version record stored under X that claims to be Y: `pull ds@X` (and
/// `@v1`, a prefix, `get` of a pointer to X) must refuse, name the remote and
/// the key, and record nothing.
#[test]
fn a_version_record_claiming_another_id_is_refused() {
    let lab = lab();
    let key = format!("datasets/ds/versions/{}.json", lab.x);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.key(&key)).unwrap()).unwrap();
    rec["id"] = lab.y.clone().into();
    std::fs::write(lab.key(&key), serde_json::to_vec(&rec).unwrap()).unwrap();

    let b = lab.other();
    let before = catalog(&b);
    let co = b.path("co");
    for target in [
        format!("ds@{}", lab.x),
        "ds@v1".to_string(),
        format!("ds@{}", &lab.x[..10]),
    ] {
        let e = fail(&b, &["data", "pull", &target, "-o", co.to_str().unwrap()]);
        assert!(e.contains("remote lab"), "{target}: {e}");
        assert!(e.contains(&key), "{target} names the key: {e}");
        assert!(!co.exists(), "{target}: nothing checked out");
        assert_eq!(catalog(&b), before, "{target}: catalog unchanged");
    }

    // `data get` of a registry pointer naming X.
    let reg = b.path("registry");
    let repo = git2::Repository::init(&reg).unwrap();
    write(
        &reg.join("ds.trainyard.toml"),
        format!(
            "dataset = \"ds\"\nversion = \"{}\"\nfiles = 21\nbytes = 1\n\n[remote]\nurl = \"s3://{BUCKET}/team\"\nendpoint = \"{}\"\nallow_http = true\n",
            lab.x, lab.s3.url
        )
        .as_bytes(),
    );
    let mut idx = repo.index().unwrap();
    idx.add_path(Path::new("ds.trainyard.toml")).unwrap();
    let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("Ada", "ada@lab").unwrap();
    let c = repo
        .commit(Some("HEAD"), &sig, &sig, "pin", &tree, &[])
        .unwrap();
    repo.tag_lightweight("t1", &repo.find_object(c, None).unwrap(), false)
        .unwrap();
    let e = fail(
        &b,
        &[
            "data",
            "get",
            reg.to_str().unwrap(),
            "ds.trainyard.toml",
            "--rev",
            "t1",
            "-o",
            co.to_str().unwrap(),
        ],
    );
    assert!(e.contains(&key), "get names the key: {e}");
    assert!(!co.exists());
    assert_eq!(catalog(&b), before, "get: catalog unchanged");

    // `latest` skips the bad record (with a warning) and takes Y, which is
    // genuine and the newest anyway.
    let (out, err) = ok(&b, &["data", "fetch", "ds"]);
    assert!(out.contains(&lab.y[..12]), "{out}");
    assert!(err.contains(&key), "warns naming the key: {err}");
}

/// The record under X is genuine but `manifests/X` holds another manifest.
#[test]
fn a_manifest_that_does_not_hash_to_its_key_is_refused() {
    let lab = lab();
    std::fs::copy(
        lab.key(&format!("manifests/{}", lab.y)),
        lab.key(&format!("manifests/{}", lab.x)),
    )
    .unwrap();
    let b = lab.other();
    let before = catalog(&b);
    let co = b.path("co");
    let e = fail(
        &b,
        &[
            "data",
            "pull",
            &format!("ds@{}", lab.x),
            "-o",
            co.to_str().unwrap(),
        ],
    );
    assert!(e.contains("remote lab"), "{e}");
    assert!(e.contains(&format!("manifests/{}", lab.x)), "{e}");
    assert!(!co.exists());
    assert_eq!(catalog(&b), before);
}

/// A remote tag named like X's full id, pointing at Y: asking for X by id
/// still gets X, and the tag is never copied into the local catalog (where
/// it would shadow the id).
#[test]
fn a_tag_named_like_a_version_id_cannot_redirect_it() {
    let lab = lab();
    let step = serde_json::json!({"format": 1, "version": lab.y, "author": "mallory", "set_ns": 1});
    let tag_key = format!("datasets/ds/tags/{}/00000000000000000001.json", lab.x);
    write(&lab.key(&tag_key), step.to_string().as_bytes());

    let b = lab.other();
    // Pulling Y would copy remote tags naming Y.
    let (_, err) = ok(&b, &["data", "fetch", &format!("ds@{}", lab.y)]);
    let co = b.path("co");
    ok(
        &b,
        &[
            "data",
            "pull",
            &format!("ds@{}", lab.x),
            "-o",
            co.to_str().unwrap(),
        ],
    );
    assert_eq!(tree_without_outside(&co), tree_without_outside(&lab.data_x));
    let log = json(&b, &["data", "log", "ds"]);
    for v in log.as_array().unwrap() {
        assert!(
            !v["tags"].as_array().unwrap().iter().any(|t| t == &lab.x),
            "the id-like tag was copied: {log}"
        );
    }
    let co2 = b.path("co2");
    ok(
        &b,
        &[
            "data",
            "checkout",
            &format!("ds@{}", lab.x),
            co2.to_str().unwrap(),
        ],
    );
    assert_eq!(
        tree_without_outside(&co2),
        tree_without_outside(&lab.data_x)
    );
    assert!(err.contains(&tag_key), "warns naming the key: {err}");
}

/// Garbage among valid keys: a tag step that is not JSON, one naming no
/// version id, a version key that is not an id, and an index that is not an
/// index. A pull of a valid ref succeeds, and each is reported by key.
#[test]
fn garbage_keys_among_valid_ones_are_skipped_and_reported() {
    let lab = lab();
    let junk = "datasets/ds/tags/junk/00000000000000000001.json";
    write(&lab.key(junk), b"not json {");
    let bad = "datasets/ds/tags/bad/00000000000000000003.json";
    write(
        &lab.key(bad),
        br#"{"format": 1, "version": "zz", "author": "m", "set_ns": 1}"#,
    );
    let noid = "datasets/ds/versions/nope.json";
    write(&lab.key(noid), b"{}");
    let idx = format!("packs/{}.idx", "ab".repeat(32));
    write(
        &lab.key(&idx),
        b"TYIDX\0\0\0garbage garbage garbage garbage garbage garbage",
    );

    let b = lab.other();
    let co = b.path("co");
    let out = s3_cmd(&b)
        .args([
            "--json",
            "data",
            "pull",
            "ds@v1",
            "-o",
            co.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["version"], lab.x.as_str());
    for k in [junk, bad, noid, idx.as_str()] {
        assert!(err.contains(k), "warns naming {k}: {err}");
        assert!(
            report["warnings"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap().contains(k))),
            "{k} in the report's warnings: {report}"
        );
    }
    assert!(err.contains("lab"), "{err}");
    assert_eq!(tree_without_outside(&co), tree_without_outside(&lab.data_x));
    let log = json(&b, &["data", "log", "ds"]);
    assert_eq!(log[0]["tags"], serde_json::json!(["v1"]), "{log}");
    // Asking for the broken tag itself fails, naming it.
    let e = fail(&b, &["data", "fetch", "ds@junk"]);
    assert!(e.contains(junk), "{e}");
}

/// A TCP relay to `upstream` that counts the bytes sent back to the client.
fn relay(upstream: std::net::SocketAddr) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let down = Arc::new(AtomicU64::new(0));
    let d = down.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut client = client;
                let mut server = server;
                let _ = std::io::copy(&mut client, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            let d = d.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match s2.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    d.fetch_add(n as u64, Ordering::SeqCst);
                }
                let _ = c2.shutdown(std::net::Shutdown::Both);
                let _ = s2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (format!("http://{addr}"), down)
}

/// A loose object far larger than its manifest entry: the download stops at
/// the declared size (plus what the sockets buffer), fails naming the key,
/// and leaves no temp data and no version behind.
#[test]
fn an_oversized_object_is_not_downloaded_past_its_declared_size() {
    let lab = lab();
    let key = format!("objects/{}/{}", &lab.big_id[..2], lab.big_id);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(lab.key(&key))
        .unwrap();
    const HUGE: u64 = 256 << 20;
    f.set_len(HUGE).unwrap();
    drop(f);
    let upstream: std::net::SocketAddr = lab.s3.url.trim_start_matches("http://").parse().unwrap();
    let (via, down) = relay(upstream);
    let b = Env::new();
    add_remote(&b, &via);
    let before = catalog(&b);
    let co = b.path("co");
    down.store(0, Ordering::SeqCst);
    let e = fail(&b, &["data", "pull", "ds@v1", "-o", co.to_str().unwrap()]);
    let read = down.load(Ordering::SeqCst);
    assert!(e.contains("remote lab") && e.contains(&key), "{e}");
    assert!(
        read < BIG as u64 + (32 << 20),
        "read {read} bytes of a {BIG}-byte object"
    );
    assert!(!co.exists());
    assert_eq!(catalog(&b), before);
    for p in walk(&b.home) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(
            !(m.is_file() && m.len() > BIG as u64),
            "left behind: {} ({} bytes)",
            p.display(),
            m.len()
        );
    }
    ok(&b, &["data", "fsck"]);
}

/// Re-encode a pack index with every entry's offset changed by `f`.
fn rewrite_idx(path: &Path, f: impl Fn(u64) -> u64) {
    let b = std::fs::read(path).unwrap();
    let body = &b[..b.len() - 32];
    let mut out = body[..16].to_vec();
    for e in body[16..].chunks_exact(44) {
        out.extend_from_slice(&e[..32]);
        let off = u64::from_le_bytes(e[32..40].try_into().unwrap());
        out.extend_from_slice(&f(off).to_le_bytes());
        out.extend_from_slice(&e[40..44]);
    }
    let h = blake3::hash(&out);
    out.extend_from_slice(h.as_bytes());
    std::fs::write(path, out).unwrap();
}

/// Pack index entries that point outside the pack (an offset that
/// overflows, one past its end): a clear error naming the index, no panic.
#[test]
fn pack_index_entries_outside_their_pack_are_refused() {
    let lab = lab();
    let idx: Vec<PathBuf> = std::fs::read_dir(lab.key("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    assert_eq!(idx.len(), 1, "{idx:?}");
    let name = format!("packs/{}", idx[0].file_name().unwrap().to_str().unwrap());
    let orig = std::fs::read(&idx[0]).unwrap();
    for (what, f) in [
        ("overflow", (|_| u64::MAX - 2) as fn(u64) -> u64),
        ("past the end", |o| o + (1 << 30)),
    ] {
        std::fs::write(&idx[0], &orig).unwrap();
        rewrite_idx(&idx[0], f);
        let b = lab.other();
        let before = catalog(&b);
        let e = fail(&b, &["data", "fetch", "ds@v1"]);
        assert!(e.contains("remote lab") && e.contains(&name), "{what}: {e}");
        assert_eq!(catalog(&b), before, "{what}");
    }
}

/// Control characters in remote messages, authors and tag names: `data log`
/// escapes them in text and keeps them exact in JSON.
#[test]
fn control_characters_from_a_remote_are_escaped_by_log() {
    let env = Env::new();
    let data = env.path("data");
    write(&data.join("a.txt"), b"a\n");
    let message = "line one\x1b[2J\x1b[31mred\rover\nwritten\u{7}\u{202e}";
    let author = "mal\x1b]0;title\x07lory";
    let o = env
        .cmd()
        .env("TRAINYARD_USER", author)
        .args([
            "data",
            "add",
            data.to_str().unwrap(),
            "--name",
            "ds",
            "-m",
            message,
            "--tag",
            "good",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let url = format!("file://{}", env.path("nas").display());
    env.ok(&["remote", "add", "nas", &url]);
    env.ok(&["data", "push", "--all"]);
    let id = env.json(&["data", "log", "ds"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A tag whose name (a directory on the remote) holds control characters.
    let tag_dir = env.path("nas/datasets/ds/tags/v\x1b[2Jx");
    write(
        &tag_dir.join("00000000000000000001.json"),
        serde_json::json!({"format": 1, "version": id, "author": "m", "set_ns": 1})
            .to_string()
            .as_bytes(),
    );

    // Valid tags beside it, so a listing that ended at the bad name would
    // lose some (readdir order is arbitrary: 20 make that near certain).
    for i in 0..20 {
        write(
            &env.path(&format!(
                "nas/datasets/ds/tags/ok{i:02}/00000000000000000001.json"
            )),
            serde_json::json!({"format": 1, "version": id, "author": "m", "set_ns": 1})
                .to_string()
                .as_bytes(),
        );
    }

    let b = Env::new();
    b.ok(&["remote", "add", "nas", &url]);
    let o = b.run(&["data", "fetch", "ds"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    // (The log formatter colours its own prefix; the remote's sequence must
    // not come through.)
    assert!(!err.contains("\x1b[2J"), "raw ESC in the warning: {err:?}");
    assert!(
        err.contains("datasets/ds/tags/v"),
        "warns naming the key: {err:?}"
    );
    let text = b.ok(&["data", "log", "ds"]);
    for c in ['\x1b', '\r', '\u{7}', '\u{202e}'] {
        assert!(!text.contains(c), "raw {c:?} in log: {text:?}");
    }
    assert!(
        text.contains("line one\\u{1b}[2J\\u{1b}[31mred\\rover\\nwritten"),
        "{text}"
    );
    assert!(text.contains("mal\\u{1b}]0;title\\u{7}lory"), "{text}");
    let ls = b.ok(&["data", "ls", "--remote"]);
    assert!(
        !ls.contains('\x1b') && !ls.contains('\r'),
        "raw in ls --remote: {ls:?}"
    );
    assert!(ls.contains("line one\\u{1b}[2J"), "{ls}");
    let j = b.json(&["data", "log", "ds"]);
    assert_eq!(j[0]["message"], message);
    assert_eq!(j[0]["author"], author);
    // The bad tag is skipped; the good one beside it is not lost with it.
    let mut want = vec!["good".to_string()];
    want.extend((0..20).map(|i| format!("ok{i:02}")));
    let mut got: Vec<String> = serde_json::from_value(j[0]["tags"].clone()).unwrap();
    got.sort();
    assert_eq!(got, want);
}

/// Locally too, 64 hex digits always mean that version: `data tag` refuses
/// such a name, and in a catalog that already holds one (copied from a
/// remote by an older Trainyard) the full id still wins over the tag.
#[test]
fn a_full_version_id_is_never_shadowed_by_a_local_tag() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    write(&a.join("a.txt"), b"a\n");
    write(&b.join("b.txt"), b"b\n");
    env.ok(&["data", "add", a.to_str().unwrap(), "--name", "ds"]);
    env.ok(&["data", "add", b.to_str().unwrap(), "--name", "ds"]);
    let log = env.json(&["data", "log", "ds"]);
    let (y, x) = (
        log[0]["id"].as_str().unwrap().to_string(),
        log[1]["id"].as_str().unwrap().to_string(),
    );
    let e = env.fail(&["data", "tag", &format!("ds@{y}"), &x]);
    assert!(e.contains("64 hex digits"), "{e}");
    let e = env.fail(&["data", "tag", &format!("ds@{y}"), &x.to_uppercase()]);
    assert!(e.contains("64 hex digits"), "{e}");
    env.ok(&["data", "tag", &format!("ds@{y}"), "2024"]);

    let db = rusqlite::Connection::open(env.home.join("catalog.db")).unwrap();
    db.execute(
        "INSERT INTO tags (dataset_id, name, manifest, created_ns)
         SELECT dataset_id, ?1, manifest, 1 FROM tags WHERE name = '2024'",
        rusqlite::params![x],
    )
    .unwrap();
    drop(db);
    let co = env.path("co");
    env.ok(&["data", "checkout", &format!("ds@{x}"), co.to_str().unwrap()]);
    assert!(co.join("a.txt").exists() && !co.join("b.txt").exists());
}
