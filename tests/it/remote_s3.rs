//! Remotes over real S3 (HTTP, SigV4) against an s3s server on 127.0.0.1,
//! and over a directory (`file://`): round trip, dedup, resume after a kill,
//! concurrent pushers, corruption, credentials, server down.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::support::*;

/// An Env whose commands carry the S3 test credentials.
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

fn ok(env: &Env, args: &[&str]) -> String {
    let o = s3_cmd(env).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "trainyard {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(env, &a)).unwrap()
}

fn fail(env: &Env, args: &[&str]) -> String {
    let o = s3_cmd(env).args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} unexpectedly succeeded");
    String::from_utf8(o.stderr).unwrap()
}

fn add_remote(env: &Env, s3: &S3Server) {
    ok(
        env,
        &[
            "remote",
            "add",
            "lab",
            &format!("s3://{BUCKET}/team"),
            "--endpoint",
            &s3.url,
            "--allow-http",
            "--default",
        ],
    );
}

#[test]
fn s3_round_trip_is_bit_for_bit_and_a_second_push_sends_nothing() {
    let env = Env::new();
    let mut s3 = S3Server::start(&env.path("s3"), 0);
    let data = env.path("data");
    sample_dataset(&data);
    // A 20 MiB file: a multipart upload (16 MiB parts).
    let big: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    write(&data.join("big/large.bin"), &big);
    for i in 0..500 {
        write(
            &data.join(format!("many/{i:04}.txt")),
            format!("small {i}\n").as_bytes(),
        );
    }
    ok(
        &env,
        &[
            "data",
            "add",
            data.to_str().unwrap(),
            "--name",
            "ds",
            "--tag",
            "v1",
        ],
    );
    add_remote(&env, &s3);
    let r = json(&env, &["data", "push", "ds@v1"]);
    assert_eq!(r["versions"][0]["new"], true, "{r}");
    assert_eq!(r["tags"][0]["outcome"], "set");
    assert!(
        s3.counters.get("create_multipart_upload") >= 1,
        "{:?}",
        s3.counters.snapshot()
    );
    // 540-odd small files went up in one pack, not one request each.
    assert!(
        s3.counters.get("put_object") < 12,
        "too many PUTs: {:?}",
        s3.counters.snapshot()
    );

    s3.counters.reset();
    let again = json(&env, &["data", "push", "ds@v1"]);
    assert_eq!(again["versions"][0]["new"], false);
    assert_eq!(again["objects_sent"], 0);
    let snap = s3.counters.snapshot();
    assert_eq!(s3.counters.get("put_object"), 0, "{snap:?}");
    assert!(
        s3.counters.total() <= 6,
        "a no-change push costs a few requests: {snap:?}"
    );

    // Another machine pulls it and gets the same tree.
    let other = Env::new();
    add_remote(&other, &s3);
    let listing = json(&other, &["data", "ls", "--remote"]);
    assert_eq!(listing[0]["name"], "ds");
    assert_eq!(listing[0]["tags"]["v1"], r["versions"][0]["id"]);
    let out = other.path("co");
    let p = json(
        &other,
        &["data", "pull", "ds@v1", "-o", out.to_str().unwrap()],
    );
    assert_eq!(p["new_version"], true);
    assert_eq!(p["tags_set"][0], "v1");
    assert_eq!(snapshot_tree(&out), snapshot_tree_without_outside(&data));
    // The pulled store is complete: fsck passes, checkout works offline.
    s3.stop();
    ok(&other, &["data", "fsck"]);
    let again = other.path("co2");
    ok(
        &other,
        &["data", "checkout", "ds@v1", again.to_str().unwrap()],
    );
    let log = json(&other, &["data", "log", "ds"]);
    assert!(
        log[0]["source"].as_str().unwrap().contains("remote lab"),
        "{log}"
    );
}

/// The sample dataset's tree as a checkout reproduces it (every entry).
fn snapshot_tree_without_outside(root: &std::path::Path) -> Vec<(String, String)> {
    snapshot_tree(root)
}

#[test]
fn push_killed_midway_resumes_and_sends_only_what_is_missing() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"), 0);
    let data = env.path("data");
    // ~100 MiB of 100 KiB files: four 32 MiB packs.
    for i in 0..1000u32 {
        let body: Vec<u8> = (0..100 * 1024u32)
            .map(|j| ((i * 31 + j) % 251) as u8)
            .collect();
        write(&data.join(format!("d{}/{i:04}.bin", i % 10)), &body);
    }
    ok(
        &env,
        &["data", "add", data.to_str().unwrap(), "--name", "big"],
    );
    add_remote(&env, &s3);
    // The third PutObject (after the first pack and its index) is held
    // unanswered, so the push is killed exactly there, however loaded the
    // machine is.
    s3.counters.stall_puts_from.store(3, Ordering::SeqCst);
    let mut child = s3_cmd(&env)
        .args(["data", "push", "big", "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while s3.counters.get("put_object") < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "push made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "push finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    s3.counters.stall_puts_from.store(0, Ordering::SeqCst);
    let before = s3.counters.get("put_object");
    let r = json(&env, &["data", "push", "big"]);
    assert_eq!(r["versions"][0]["new"], true);
    assert!(
        r["packs_sent"].as_u64().unwrap() < 4,
        "the resumed push re-sent packs that were already up: {r}"
    );
    assert!(s3.counters.get("put_object") > before);
    let other = Env::new();
    add_remote(&other, &s3);
    let out = other.path("co");
    ok(
        &other,
        &["data", "pull", "big", "-o", out.to_str().unwrap()],
    );
    assert_eq!(snapshot_tree(&out), snapshot_tree(&data));
}

#[test]
fn concurrent_pushers_both_land_and_a_tag_race_has_one_winner() {
    let s3env = Env::new();
    let s3 = S3Server::start(&s3env.path("s3"), 0);
    let (a, b) = (Env::new(), Env::new());
    for (env, tag) in [(&a, "a"), (&b, "b")] {
        let d = env.path("shared");
        for i in 0..200 {
            write(
                &d.join(format!("f{i}.txt")),
                format!("{tag} {i}\n").as_bytes(),
            );
        }
        ok(env, &["data", "add", d.to_str().unwrap(), "--tag", "prod"]);
        add_remote(env, &s3);
    }
    let spawn = |env: &Env| {
        s3_cmd(env)
            .args(["--json", "data", "push", "shared"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    let ra: serde_json::Value = serde_json::from_slice(&oa.stdout).unwrap();
    let rb: serde_json::Value = serde_json::from_slice(&ob.stdout).unwrap();
    // Both versions landed.
    let listing = json(&a, &["data", "ls", "--remote"]);
    assert_eq!(
        listing[0]["versions"].as_array().unwrap().len(),
        2,
        "{listing}"
    );
    // Exactly one moved the tag; the other was told, and exited non-zero.
    let outcomes = [
        ra["tags"][0]["outcome"].as_str().unwrap(),
        rb["tags"][0]["outcome"].as_str().unwrap(),
    ];
    assert!(
        outcomes.contains(&"set") && outcomes.contains(&"conflict"),
        "{outcomes:?}"
    );
    let (winner, loser, loser_out) = if outcomes[0] == "set" {
        (&ra, &rb, &ob)
    } else {
        (&rb, &ra, &oa)
    };
    assert!(!loser_out.status.success());
    assert!(loser["tags"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("not overwritten"));
    assert_eq!(listing[0]["tags"]["prod"], winner["versions"][0]["id"]);
    // The loser can still move it deliberately.
    ok(
        if outcomes[0] == "set" { &b } else { &a },
        &["data", "push", "shared", "--force-tags"],
    );
    let listing = json(&a, &["data", "ls", "--remote"]);
    assert_eq!(listing[0]["tags"]["prod"], loser["versions"][0]["id"]);
}

#[test]
fn corrupt_remote_objects_are_never_checked_out_and_errors_name_the_cause() {
    let env = Env::new();
    let mut s3 = S3Server::start(&env.path("s3"), 0);
    let data = env.path("data");
    sample_dataset(&data);
    ok(
        &env,
        &["data", "add", data.to_str().unwrap(), "--name", "ds"],
    );
    add_remote(&env, &s3);

    // Wrong and missing credentials: the error says which source was tried.
    let e = {
        let o = s3_cmd(&env)
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .args(["data", "push", "ds"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    assert!(
        e.contains("rejected the credentials from the environment (AWS_ACCESS_KEY_ID)"),
        "{e}"
    );
    let e = {
        let o = s3_cmd(&env)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .args(["data", "push", "ds"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    assert!(e.contains("no AWS credentials for remote lab"), "{e}");
    assert!(
        e.contains("no-aws-credentials"),
        "names the file tried: {e}"
    );

    // Injected 500s are retried.
    s3.counters
        .fail_next
        .store(3, std::sync::atomic::Ordering::SeqCst);
    json(&env, &["data", "push", "ds"]);

    // Flip a byte of every pack on the server: a pull must refuse.
    let packs = s3.file("team/packs");
    for e in std::fs::read_dir(&packs).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "pack") {
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 1] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        }
    }
    let other = Env::new();
    add_remote(&other, &s3);
    let out = other.path("co");
    let e = fail(&other, &["data", "pull", "ds", "-o", out.to_str().unwrap()]);
    assert!(e.contains("does not match") || e.contains("corrupt"), "{e}");
    assert!(e.contains(".pack"), "names the pack: {e}");
    assert!(!out.exists(), "nothing checked out");
    let log = other.run(&["data", "log", "ds"]);
    assert!(!log.status.success(), "no version recorded");

    // Server down: the error names the remote; nothing changes locally.
    s3.stop();
    let e = fail(&env, &["data", "push", "ds"]);
    assert!(e.contains("remote lab"), "{e}");
}

#[test]
fn directory_remote_round_trip() {
    let env = Env::new();
    let data = env.path("data");
    sample_dataset(&data);
    ok(
        &env,
        &[
            "data",
            "add",
            data.to_str().unwrap(),
            "--name",
            "ds",
            "--tag",
            "v1",
        ],
    );
    let url = format!("file://{}", env.path("nas").display());
    ok(&env, &["remote", "add", "nas", &url]);
    let e = fail(&env, &["remote", "add", "bad", "s3://KEY:SECRET@bucket/x"]);
    assert!(e.contains("credentials do not belong in the URL"), "{e}");
    let list = json(&env, &["remote", "list"]);
    assert_eq!(list[0]["default"], true);
    json(&env, &["data", "push", "--all"]);
    let other = Env::new();
    ok(&other, &["remote", "add", "nas", &url]);
    let out = other.path("co");
    ok(&other, &["data", "fetch", "ds@v1"]);
    assert!(!out.exists());
    ok(
        &other,
        &["data", "checkout", "ds@v1", out.to_str().unwrap()],
    );
    assert_eq!(snapshot_tree(&out), snapshot_tree(&data));
}

/// A data registry: pin a pushed version in a git repo, tag it, and get it
/// back elsewhere by repo + tag; import records where it came from.
#[test]
fn git_registry_pins_and_gets_an_exact_version() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"), 0);
    let data = env.path("data");
    sample_dataset(&data);
    ok(
        &env,
        &[
            "data",
            "add",
            data.to_str().unwrap(),
            "--name",
            "ds",
            "--tag",
            "v1",
        ],
    );
    add_remote(&env, &s3);
    // The registry: a bare repo, and a clone to work in (made with git2).
    let bare = env.path("registry.git");
    git2::Repository::init_bare(&bare).unwrap();
    let work = env.path("registry");
    let repo = git2::Repository::clone(bare.to_str().unwrap(), &work).unwrap();
    let mut cfg = repo.config().unwrap();
    cfg.set_str("user.name", "Ada").unwrap();
    cfg.set_str("user.email", "ada@lab").unwrap();

    // Not pushed yet: refused, naming the fix.
    let o = s3_cmd(&env)
        .current_dir(&work)
        .args(["data", "pin", "ds@v1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("push it first"));
    ok(&env, &["data", "push", "ds@v1"]);
    let o = s3_cmd(&env)
        .current_dir(&work)
        .args([
            "--json",
            "data",
            "pin",
            "ds@v1",
            "--commit",
            "-m",
            "ds v1",
            "--git-tag",
            "ds-v1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pinned: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pinned["repo_path"], "ds.trainyard.toml");
    let text = std::fs::read_to_string(work.join("ds.trainyard.toml")).unwrap();
    assert!(text.contains("dataset = \"ds\""), "{text}");
    assert!(
        !text.to_lowercase().contains("secret"),
        "no credentials in the pointer"
    );
    // Publish to the registry.
    let mut origin = repo.find_remote("origin").unwrap();
    origin
        .push(
            &[
                "refs/heads/master:refs/heads/master",
                "refs/tags/ds-v1:refs/tags/ds-v1",
            ],
            None,
        )
        .or_else(|_| {
            origin.push(
                &[
                    "refs/heads/main:refs/heads/main",
                    "refs/tags/ds-v1:refs/tags/ds-v1",
                ],
                None,
            )
        })
        .unwrap();

    // Move on: a second version, pinned and committed, but not tagged.
    write(&data.join("new.txt"), b"v2\n");
    ok(
        &env,
        &["data", "add", data.to_str().unwrap(), "--name", "ds"],
    );

    // Elsewhere: get by repo + tag gives exactly v1.
    let other = Env::new();
    let out = other.path("ds-v1");
    let g = json(
        &other,
        &[
            "data",
            "get",
            bare.to_str().unwrap(),
            "ds.trainyard.toml",
            "--rev",
            "ds-v1",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(g["pointer"]["version"], pinned_version(&env));
    let mut v1_tree = snapshot_tree(&data);
    v1_tree.retain(|(p, _)| p != "new.txt");
    assert_eq!(snapshot_tree(&out), v1_tree);
    assert!(!out.join("new.txt").exists());
    let imp = Env::new();
    let out2 = imp.path("imported");
    json(
        &imp,
        &[
            "data",
            "import",
            bare.to_str().unwrap(),
            "ds.trainyard.toml",
            "--rev",
            "ds-v1",
            "-o",
            out2.to_str().unwrap(),
        ],
    );
    let log = json(&imp, &["data", "log", "ds"]);
    let src = log[0]["source"].as_str().unwrap();
    assert!(
        src.starts_with("git ") && src.contains("ds-v1") && src.contains("ds.trainyard.toml"),
        "{src}"
    );
    // A rev that is not there, and a path that is not a pointer.
    let e = fail(
        &imp,
        &[
            "data",
            "get",
            bare.to_str().unwrap(),
            "ds.trainyard.toml",
            "--rev",
            "nope",
        ],
    );
    assert!(e.contains("unknown git rev"), "{e}");
    let e = fail(
        &imp,
        &[
            "data",
            "get",
            bare.to_str().unwrap(),
            "missing.toml",
            "--rev",
            "ds-v1",
        ],
    );
    assert!(
        e.contains("at ds-v1") && e.contains("has no file missing.toml"),
        "{e}"
    );
    assert!(!e.contains("git checkout of"), "{e}");
    // The documented default rev, HEAD: the registry's default branch.
    let out3 = imp.path("at-head");
    let g = json(
        &imp,
        &[
            "data",
            "get",
            bare.to_str().unwrap(),
            "ds.trainyard.toml",
            "-o",
            out3.to_str().unwrap(),
        ],
    );
    assert_eq!(g["pointer"]["version"], pinned_version(&env));
}

fn pinned_version(env: &Env) -> serde_json::Value {
    let v = json(env, &["data", "log", "ds"]);
    v.as_array()
        .unwrap()
        .iter()
        .find(|x| x["tags"].as_array().unwrap().iter().any(|t| t == "v1"))
        .unwrap()["id"]
        .clone()
}
