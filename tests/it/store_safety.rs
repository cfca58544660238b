//! Bad input and damage: clear errors that name the culprit, and nothing lost.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::support::{sample_dataset, write, Env};

fn object_path(home: &Path, id: &str) -> std::path::PathBuf {
    home.join("store/objects").join(&id[..2]).join(&id[2..])
}

fn versions(env: &Env, name: &str) -> usize {
    match env.run(&["--json", "data", "log", name]) {
        o if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        _ => 0,
    }
}

#[test]
fn missing_path_is_named() {
    let env = Env::new();
    let err = env.fail(&["data", "add", "no/such/dir"]);
    assert!(
        err.contains("no/such/dir") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn non_utf8_names_are_refused_and_nothing_recorded() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("ok.txt"), b"fine");
    let bad = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    fs::write(&bad, b"latin-1 name").unwrap();
    let err = env.fail(&["data", "add", "ds"]);
    assert!(
        err.contains("caf") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert_eq!(versions(&env, "ds"), 0);
}

#[test]
fn fifos_are_refused_with_their_path() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("ok.txt"), b"fine");
    let fifo = src.join("pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let err = env.fail(&["data", "add", "ds"]);
    assert!(err.contains("pipe") && err.contains("FIFO"), "{err}");
    assert_eq!(versions(&env, "ds"), 0);
}

#[test]
fn unreadable_file_is_named_and_nothing_recorded() {
    // Root reads everything: run the binary as `nobody` when we are root.
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("ok.txt"), b"fine");
    write(&src.join("secret.txt"), b"no");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let root = rustix::process::geteuid().is_root();
    let mut cmd = if root {
        // let nobody reach the temp dir and write the home
        for p in [env.tmp.path(), &src] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
        }
        fs::set_permissions(src.join("ok.txt"), fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_trainyard"));
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
    };
    let o = cmd
        .env("TRAINYARD_HOME", &env.home)
        .args(["data", "add"])
        .arg(&src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("secret.txt") && err.contains("ermission denied"),
        "{err}"
    );
    assert_eq!(versions(&env, "ds"), 0);
}

#[test]
fn a_file_changing_while_hashed_is_detected_not_recorded() {
    let env = Env::new();
    let src = env.path("ds");
    let growing = src.join("growing.log");
    write(&growing, &vec![7u8; 64 << 20]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let growing = growing.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(growing).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[1u8; 4096]).unwrap();
            }
        })
    };
    let mut detected = false;
    for _ in 0..5 {
        let o = env.run(&["data", "add", "ds"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if !o.status.success() {
            assert!(
                err.contains("growing.log") && err.contains("changed while"),
                "{err}"
            );
            detected = true;
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        detected,
        "a file appended to throughout was recorded as if stable"
    );
    assert_eq!(versions(&env, "ds"), 0);
    env.ok(&["data", "fsck"]);
}

/// Checking out `ds` in every link mode fails naming the corrupt object, and
/// `file` is not materialized.
fn checkout_refuses_corrupt(env: &Env, id: &str, file: &str) {
    for link in ["copy", "hardlink"] {
        let out = env.path(&format!("out-{link}"));
        let err = env.fail(&[
            "data",
            "checkout",
            "ds",
            out.to_str().unwrap(),
            "--link",
            link,
        ]);
        assert!(err.contains(id) && err.contains("corrupt"), "{err}");
        assert!(
            !out.join(file).exists(),
            "a corrupt object was materialized"
        );
    }
}

/// The one pack file of a fresh store.
fn only_pack(home: &Path) -> std::path::PathBuf {
    let packs: Vec<_> = fs::read_dir(home.join("store/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    packs[0].clone()
}

#[test]
fn corrupt_packed_object_is_never_checked_out_and_fsck_names_it() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("good.txt"), b"good");
    write(&src.join("bad.txt"), b"this will rot");
    env.ok(&["data", "add", "ds"]);
    let id = blake3::hash(b"this will rot").to_hex().to_string();
    // Flip one byte of the object inside its pack (same size, different bytes).
    let pack = only_pack(&env.home);
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes
        .windows(13)
        .position(|w| w == b"this will rot")
        .unwrap();
    bytes[at + 11] = b'0';
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&pack, &bytes).unwrap();

    checkout_refuses_corrupt(&env, &id, "bad.txt");
    let o = env.run(&["data", "fsck"]);
    assert!(!o.status.success(), "fsck must exit non-zero");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("bad pack") && out.contains(&id), "{out}");
    // gc refuses to repack from a damaged pack rather than propagate it:
    // a second dataset shares the rotten object, the first is removed, so
    // the pack holds live and dead objects and would be rewritten.
    write(&env.path("ds2/copy.txt"), b"this will rot");
    env.ok(&["data", "add", "ds2"]);
    env.ok(&["data", "rm", "ds"]);
    let err = env.fail(&["data", "gc"]);
    assert!(err.contains(&id) && err.contains("corrupt"), "{err}");
}

#[test]
fn corrupt_or_missing_loose_object_is_reported_and_re_add_restores_it() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("small.txt"), b"small");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    write(&src.join("big.bin"), &big);
    env.ok(&["data", "add", "ds"]);
    let id = blake3::hash(&big).to_hex().to_string();
    let obj = object_path(&env.home, &id);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
    let mut rotten = big.clone();
    rotten[1234] ^= 0xff;
    fs::write(&obj, &rotten).unwrap();
    checkout_refuses_corrupt(&env, &id, "big.bin");
    let o = env.run(&["data", "fsck"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("corrupt object {id}")));

    // Missing objects are reported with who needs them.
    fs::remove_file(&obj).unwrap();
    let r = env.run(&["--json", "data", "fsck"]);
    assert!(!r.status.success());
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let p = &v["problems"][0];
    assert_eq!(p["problem"], "missing");
    assert!(
        p["referenced_by"].as_str().unwrap().ends_with(":big.bin"),
        "{p}"
    );
    // Re-adding the data restores the object.
    env.ok(&["data", "add", "ds"]);
    env.ok(&["data", "fsck"]);
}

/// Plant a version whose manifest is hostile, bypassing `add`.
fn plant_manifest(env: &Env, name: &str, manifest: &[u8]) -> String {
    env.ok(&["data", "list"]); // creates the store
    let id = blake3::hash(manifest).to_hex().to_string();
    write(&object_path(&env.home, &id), manifest);
    let db = rusqlite::Connection::open(env.home.join("catalog.db")).unwrap();
    db.execute(
        "INSERT INTO datasets (name, created_ns) VALUES (?1, 0)",
        [name],
    )
    .unwrap();
    let ds: i64 = db.last_insert_rowid();
    db.execute(
        "INSERT INTO versions (dataset_id, manifest, message, author, created_ns, files, bytes, new_bytes)
         VALUES (?1, ?2, '', 'evil', 0, 1, 0, 0)",
        rusqlite::params![ds, blake3::hash(manifest).as_bytes().to_vec()],
    )
    .unwrap();
    id
}

fn raw_manifest(entries: &[(u8, &str, &[u8])]) -> Vec<u8> {
    let mut m = b"TYMANIF\0".to_vec();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (kind, path, content) in entries {
        m.push(*kind);
        m.push(0);
        m.extend_from_slice(&(path.len() as u32).to_le_bytes());
        m.extend_from_slice(path.as_bytes());
        if *kind == 3 {
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&[0u8; 32]);
        } else {
            m.extend_from_slice(&(content.len() as u64).to_le_bytes());
            m.extend_from_slice(blake3::hash(content).as_bytes());
        }
    }
    m
}

#[test]
fn manifests_that_escape_the_checkout_dir_are_refused() {
    for (name, path) in [
        ("dotdot", "../escaped.txt"),
        ("absolute", "/tmp/escaped.txt"),
    ] {
        let env = Env::new();
        let m = raw_manifest(&[(1, path, b"x")]);
        plant_manifest(&env, name, &m);
        let out = env.path("out");
        let err = env.fail(&["data", "checkout", name, out.to_str().unwrap()]);
        assert!(err.contains("manifest") && err.contains(path), "{err}");
        assert!(!env.path("escaped.txt").exists());
    }
}

#[test]
fn checkout_never_writes_through_a_symlink_on_disk() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("sub/file.txt"), b"data");
    env.ok(&["data", "add", "ds"]);
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let out = env.path("out");
    fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("sub")).unwrap();
    let err = env.fail(&["data", "checkout", "ds", out.to_str().unwrap()]);
    assert!(err.contains("sub"), "{err}");
    assert!(
        !outside.join("file.txt").exists(),
        "wrote through a symlink"
    );
    // --force replaces the symlink itself with a real directory.
    env.ok(&["data", "checkout", "ds", out.to_str().unwrap(), "--force"]);
    assert!(
        !outside.join("file.txt").exists(),
        "wrote through a symlink"
    );
    assert!(fs::symlink_metadata(out.join("sub")).unwrap().is_dir());
    assert_eq!(fs::read(out.join("sub/file.txt")).unwrap(), b"data");
}

#[test]
fn hostile_manifest_with_file_under_symlink_is_refused() {
    let env = Env::new();
    // "link" is a symlink to /tmp and "link/x" a file below it.
    let m = raw_manifest(&[(2, "link", b"/tmp"), (1, "link/x", b"pwned")]);
    plant_manifest(&env, "evil", &m);
    let err = env.fail(&[
        "data",
        "checkout",
        "evil",
        env.path("out").to_str().unwrap(),
    ]);
    assert!(
        err.contains("link/x") && err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn sample_dataset_fsck_clean() {
    let env = Env::new();
    sample_dataset(&env.path("s"));
    env.ok(&["data", "add", "s"]);
    let f = env.json(&["data", "fsck"]);
    assert_eq!(f["problems"].as_array().unwrap().len(), 0);
    assert!(f["packed_objects"].as_u64().unwrap() >= 40, "{f}");
    assert_eq!(f["packs"], 1);
}
