//! Watching directories end to end: the real `trainyard` binary and a real
//! daemon, real inotify events, the polling path (forced, and on a real
//! FUSE mount when `bindfs` is installed), a directory that goes away and
//! comes back, a writer that keeps appending, an event storm, `data status`
//! from the watcher's record, and `--sync-wandb` against the test W&B
//! server. When to act is unit-tested on an injected clock
//! (`src/watch/tests.rs`); here the quiet periods are short and the tests
//! wait for outcomes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::wandb::{WandbServer, API_KEY};
use crate::support::{wait_for, write, Env, Proc};

fn watch(env: &Env, url: &str, args: &[&str]) -> String {
    let mut a = vec!["watch"];
    a.extend_from_slice(args);
    a.extend(["--server", url]);
    env.ok(&a)
}

fn watches(env: &Env, url: &str) -> Vec<serde_json::Value> {
    env.json(&["watch", "ls", "--server", url])
        .as_array()
        .unwrap()
        .clone()
}

fn state(env: &Env, url: &str) -> (String, String, String) {
    let w = watches(env, url).remove(0);
    (
        w["state"].as_str().unwrap().to_string(),
        w["mode"].as_str().unwrap().to_string(),
        w["detail"].as_str().unwrap().to_string(),
    )
}

fn versions(env: &Env, name: &str) -> Vec<serde_json::Value> {
    let o = env.run(&["--json", "data", "log", name]);
    if !o.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn log_text(env: &Env, url: &str) -> String {
    watch(env, url, &["log", "--limit", "500"])
}

fn wait_versions(env: &Env, url: &str, name: &str, n: usize, limit: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(limit);
    while std::time::Instant::now() < end {
        if versions(env, name).len() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{name}: expected {n} versions, have {}; log:\n{}",
        versions(env, name).len(),
        log_text(env, url)
    );
}

fn wait_state(env: &Env, url: &str, want: &str, limit: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(limit);
    while std::time::Instant::now() < end {
        if state(env, url).0 == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "expected state {want}, have {:?}; log:\n{}",
        state(env, url),
        log_text(env, url)
    );
}

/// The files of the newest version: path → size.
fn files_of(env: &Env, name: &str) -> Vec<(String, u64)> {
    let v = env.json(&["data", "ls", name, "-R"]);
    let mut out: Vec<(String, u64)> = v["entries"]
        .as_array()
        .or(v.as_array())
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "file")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn events_snapshot_once_when_quiet_and_only_on_change() {
    let env = Env::new();
    let (_d, url) = env.up("up", &[]);
    let data = env.path("data");
    write(&data.join("a.txt"), b"one");
    write(&data.join("sub/b.txt"), b"two");
    let out = watch(
        &env,
        &url,
        &[
            "add",
            data.to_str().unwrap(),
            "--snapshot",
            "ds",
            "--quiet",
            "1s",
            "--tag-format",
            "auto-{n}",
        ],
    );
    assert!(out.contains("added watch 1: snapshot ds"), "{out}");
    // The first look records what is there.
    wait_versions(&env, &url, "ds", 1, 30);
    wait_state(&env, &url, "idle", 10);
    assert_eq!(state(&env, &url).1, "events");
    // A change is seen through inotify and recorded once, after the quiet period.
    write(&data.join("sub/c.txt"), b"three");
    wait_versions(&env, &url, "ds", 2, 30);
    assert_eq!(files_of(&env, "ds").len(), 3);
    // Its own reads raise no change: no further version.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(versions(&env, "ds").len(), 2, "{}", log_text(&env, &url));
    let log = log_text(&env, &url);
    assert!(
        log.contains("mode ok (start)") || log.contains("mode events"),
        "{log}"
    );
    assert!(
        log.contains("snapshot created (events: quiet for 1s"),
        "{log}"
    );
    let tags = env.ok(&["data", "log", "ds"]);
    assert!(tags.contains("auto-2"), "{tags}");
    // Pause: changes are not acted on; resume: they are.
    watch(&env, &url, &["pause", "1"]);
    assert_eq!(state(&env, &url).0, "paused");
    write(&data.join("d.txt"), b"four");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(versions(&env, "ds").len(), 2);
    watch(&env, &url, &["resume", data.to_str().unwrap()]);
    wait_versions(&env, &url, "ds", 3, 30);
    // Bad input names the field.
    let err = env.fail(&[
        "watch",
        "add",
        data.to_str().unwrap(),
        "--snapshot",
        "ds2",
        "--quiet",
        "soon",
        "--server",
        &url,
    ]);
    assert!(err.contains("quiet") && err.contains("soon"), "{err}");
    let err = env.fail(&[
        "watch",
        "add",
        env.path("nope").to_str().unwrap(),
        "--snapshot",
        "ds2",
        "--server",
        &url,
    ]);
    assert!(err.contains("path"), "{err}");
    watch(&env, &url, &["rm", "1"]);
    assert!(watches(&env, &url).is_empty());
}

#[test]
fn an_event_storm_of_100k_files_makes_one_version() {
    let env = Env::new();
    let (_d, url) = env.up("up", &[]);
    let data = env.path("storm");
    std::fs::create_dir_all(&data).unwrap();
    watch(
        &env,
        &url,
        &[
            "add",
            data.to_str().unwrap(),
            "--snapshot",
            "storm",
            "--quiet",
            "3s",
        ],
    );
    wait_state(&env, &url, "idle", 20);
    for d in 0..100 {
        let dir = data.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("f{f:04}")), format!("{d}-{f}")).unwrap();
        }
    }
    wait_versions(&env, &url, "storm", 1, 120);
    wait_state(&env, &url, "idle", 60);
    std::thread::sleep(Duration::from_secs(4));
    let v = versions(&env, "storm");
    assert_eq!(v.len(), 1, "{}", log_text(&env, &url));
    assert_eq!(v[0]["files"], 100_000);
}

#[test]
fn an_appending_writer_postpones_the_snapshot_until_its_final_bytes() {
    let env = Env::new();
    let (_d, url) = env.up("up", &[]);
    let data = env.path("logs");
    write(&data.join("keep.txt"), b"keep");
    watch(
        &env,
        &url,
        &[
            "add",
            data.to_str().unwrap(),
            "--snapshot",
            "app",
            "--quiet",
            "1500ms",
        ],
    );
    wait_versions(&env, &url, "app", 1, 30);
    let path = data.join("growing.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    // Appends every 300 ms for 6 s: always inside the quiet period.
    for _ in 0..20 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
        std::io::Write::flush(&mut f).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            versions(&env, "app").len(),
            1,
            "snapshot while still writing: {}",
            log_text(&env, &url)
        );
    }
    drop(f);
    wait_versions(&env, &url, "app", 2, 30);
    let files = files_of(&env, "app");
    assert!(
        files.contains(&("growing.bin".to_string(), 20 * (64 << 10))),
        "{files:?}"
    );
}

#[test]
fn forced_polling_sees_changes_and_a_removed_directory_pauses_until_it_returns() {
    let env = Env::new();
    let (_d, url) = env.up("up", &[]);
    let data = env.path("vol");
    write(&data.join("x"), b"x");
    watch(
        &env,
        &url,
        &[
            "add",
            data.to_str().unwrap(),
            "--snapshot",
            "vol",
            "--poll",
            "--poll-interval",
            "300ms",
            "--quiet",
            "700ms",
        ],
    );
    wait_versions(&env, &url, "vol", 1, 30);
    wait_state(&env, &url, "idle", 10);
    let (_, mode, detail) = state(&env, &url);
    assert_eq!(mode, "polling");
    assert!(detail.contains("--poll"), "{detail}");
    write(&data.join("y"), b"y");
    wait_versions(&env, &url, "vol", 2, 30);

    // Gone: the watch says so and records nothing.
    let away = env.path("vol-away");
    std::fs::rename(&data, &away).unwrap();
    wait_state(&env, &url, "missing", 10);
    // An empty directory in its place (an unmounted mount point) is not a
    // new, empty version.
    std::fs::create_dir(&data).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(versions(&env, "vol").len(), 2, "{}", log_text(&env, &url));
    assert_eq!(state(&env, &url).0, "missing", "{}", log_text(&env, &url));
    std::fs::remove_dir(&data).unwrap();
    // Back, with a change made while away: resumed, and recorded.
    write(&away.join("z"), b"z");
    std::fs::rename(&away, &data).unwrap();
    wait_versions(&env, &url, "vol", 3, 30);
    let log = log_text(&env, &url);
    assert!(log.contains("missing paused"), "{log}");
    assert!(log.contains("returned resumed"), "{log}");
    assert!(log.contains("is empty but the latest version"), "{log}");
    assert_eq!(files_of(&env, "vol").len(), 3);
}

#[test]
fn data_status_answers_from_the_watch_record() {
    let env = Env::new();
    let (_d, url) = env.up("up", &[]);
    let data = env.path("tree");
    for i in 0..50 {
        write(
            &data.join(format!("d{}/f{i}", i % 5)),
            format!("{i}").as_bytes(),
        );
    }
    // A marker that is already there: the first look snapshots at once,
    // and later changes (the marker untouched) are only recorded.
    write(&data.join("_SUCCESS"), b"");
    watch(
        &env,
        &url,
        &[
            "add",
            data.to_str().unwrap(),
            "--snapshot",
            "tree",
            "--when-file",
            "_SUCCESS",
        ],
    );
    wait_versions(&env, &url, "tree", 1, 60);
    wait_for(Duration::from_secs(10), || {
        watches(&env, &url)[0]["sure"] == true
    });
    std::fs::write(data.join("d0/f0"), b"changed").unwrap();
    std::fs::remove_file(data.join("d1/f1")).unwrap();
    write(&data.join("new/g"), b"new");
    let walked = {
        let o = env.json(&[
            "data",
            "status",
            data.to_str().unwrap(),
            "--against",
            "latest",
        ]);
        crate::support::changes(&o)
    };
    wait_for(Duration::from_secs(5), || {
        let o = env.json(&["data", "status", data.to_str().unwrap()]);
        o["touched"].as_u64().is_some() && crate::support::changes(&o) == walked
    });
    let o = env.json(&["data", "status", data.to_str().unwrap()]);
    assert!(o["touched"].as_u64().unwrap() >= 3, "{o}");
    assert_eq!(crate::support::changes(&o), walked);
    assert_eq!(o["files"], 51);
    assert_eq!(walked.len(), 3, "{walked:?}");

    // The answer came through the rule's index of the version's manifest,
    // which reads only the runs holding the touched paths' entries: with
    // a byte of the manifest's header (in no run) flipped, the whole-manifest
    // read would refuse the object, yet the record still answers.
    let clean = watches(&env, &url)[0]["clean_version"]
        .as_str()
        .unwrap()
        .to_string();
    let db = rusqlite::Connection::open(env.home.join("watch.db")).unwrap();
    let indexed: String = db
        .query_row("SELECT version FROM watch_index WHERE watch = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(indexed, clean);
    let obj = env
        .home
        .join("store/objects")
        .join(&clean[..2])
        .join(&clean[2..]);
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[12] ^= 0xff;
    let mut perm = std::fs::metadata(&obj).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&obj, perm).unwrap();
    std::fs::write(&obj, &bytes).unwrap();
    let o = env.json(&["data", "status", data.to_str().unwrap()]);
    assert!(o["touched"].as_u64().is_some(), "{o}");
    assert_eq!(crate::support::changes(&o), walked);
    assert_eq!(o["files"], 51);
    let walk = env.run(&[
        "data",
        "status",
        data.to_str().unwrap(),
        "--against",
        "latest",
    ]);
    assert!(!walk.status.success(), "the walk read the flipped manifest");
}

fn mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == dir.to_str())
}

#[test]
fn a_fuse_mount_is_polled_and_an_unmount_pauses_the_watch() {
    if Command::new("bindfs").arg("--version").output().is_err() {
        eprintln!("bindfs is not installed: skipping the FUSE mount test");
        return;
    }
    let env = Env::new();
    let (_d, url) = env.up("up", &[]);
    let src = env.path("export");
    let mnt = env.path("mnt");
    write(&src.join("a"), b"a");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = |src: &Path, mnt: &Path| {
        let o = Command::new("bindfs").arg(src).arg(mnt).output().unwrap();
        o.status.success() && mounted(mnt)
    };
    if !mount(&src, &mnt) {
        eprintln!("bindfs could not mount here: skipping the FUSE mount test");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("fusermount").arg("-u").arg(&self.0).output();
        }
    }
    let _guard = Unmount(mnt.clone());
    watch(
        &env,
        &url,
        &[
            "add",
            mnt.to_str().unwrap(),
            "--snapshot",
            "nas",
            "--poll-interval",
            "300ms",
            "--quiet",
            "700ms",
        ],
    );
    wait_versions(&env, &url, "nas", 1, 30);
    let (_, mode, detail) = state(&env, &url);
    assert_eq!(mode, "polling", "{detail}");
    assert!(detail.contains("fuse"), "{detail}");
    // Written behind the mount's back (as another NFS client would).
    write(&src.join("b"), b"b");
    wait_versions(&env, &url, "nas", 2, 30);
    // Unmounted: the empty mount point is not a version. (A poll walking
    // the mount at that instant makes it busy: try again, as a user would.)
    let mut o = None;
    for _ in 0..50 {
        let r = Command::new("fusermount")
            .arg("-u")
            .arg(&mnt)
            .output()
            .unwrap();
        let done = r.status.success();
        o = Some(r);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = o.unwrap();
    assert!(o.status.success(), "{o:?}");
    wait_state(&env, &url, "missing", 10);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(versions(&env, "nas").len(), 2);
    write(&src.join("c"), b"c");
    assert!(mount(&src, &mnt));
    wait_versions(&env, &url, "nas", 3, 30);
    assert_eq!(files_of(&env, "nas").len(), 3);
}

/// The user-namespace wrapper that caps inotify watches at `limit` for
/// the daemon alone: in a new user namespace `user.max_inotify_watches` is
/// the namespace's own (the kernel counts watches against every level, so
/// the machine's `fs.inotify.max_user_watches` is neither read nor
/// changed). `None`, with the reason printed, where unprivileged user
/// namespaces are not allowed.
fn inotify_capped(limit: u32) -> Option<Vec<String>> {
    let set = format!("echo {limit} > /proc/sys/user/max_inotify_watches");
    let o = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", &set])
        .output();
    match o {
        Ok(o) if o.status.success() => Some(vec![
            "unshare".into(),
            "--user".into(),
            "--map-root-user".into(),
            "sh".into(),
            "-c".into(),
            format!("{set} && exec \"$@\""),
            "sh".into(),
        ]),
        Ok(o) => {
            eprintln!(
                "no user namespace with its own inotify limit here ({}): skipping",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("unshare is not installed ({e}): skipping");
            None
        }
    }
}

fn watch_at(env: &Env, url: &str, path: &Path) -> serde_json::Value {
    watches(env, url)
        .into_iter()
        .find(|w| w["path"].as_str() == path.canonicalize().unwrap().to_str())
        .unwrap_or_else(|| panic!("no watch on {}", path.display()))
}

#[test]
fn over_the_inotify_watch_limit_a_watch_polls_and_says_so() {
    let Some(wrapper) = inotify_capped(3) else {
        return;
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let env = Env::new();
    let (_d, url) = env.up_via("up", &wrapper, &[], &[]);
    let quick = ["--quiet", "500ms", "--poll-interval", "300ms"];

    // At start: 7 directories, 3 watches allowed.
    let wide = env.path("wide");
    for i in 0..6 {
        write(&wide.join(format!("d{i}/f")), b"x");
    }
    let mut args = vec!["add", wide.to_str().unwrap(), "--snapshot", "wide"];
    args.extend(quick);
    watch(&env, &url, &args);
    wait_versions(&env, &url, "wide", 1, 30);
    let w = watch_at(&env, &url, &wide);
    assert_eq!(w["mode"], "polling", "{w}");
    let detail = w["detail"].as_str().unwrap();
    assert!(
        detail.contains("the inotify watch limit is reached")
            && detail.contains("user.max_inotify_watches = 3")
            && detail.contains("sysctl fs.inotify.max_user_watches"),
        "{detail}"
    );
    let log = log_text(&env, &url);
    assert!(log.contains("mode polling (start)"), "{log}");
    // Polling still sees changes, and `data status` walks (no record).
    write(&wide.join("d0/g"), b"g");
    wait_versions(&env, &url, "wide", 2, 30);
    let o = env.json(&["data", "status", wide.to_str().unwrap()]);
    assert!(o.get("touched").is_none(), "{o}");

    // Later: a narrow tree starts with events (one watch), then new
    // directories go over the limit; the watch falls back and their files
    // are still snapshotted.
    let narrow = env.path("narrow");
    write(&narrow.join("a"), b"a");
    let mut args = vec!["add", narrow.to_str().unwrap(), "--snapshot", "narrow"];
    args.extend(quick);
    watch(&env, &url, &args);
    wait_versions(&env, &url, "narrow", 1, 30);
    wait_for(Duration::from_secs(10), || {
        let w = watch_at(&env, &url, &narrow);
        w["state"] == "idle" && w["sure"] == true
    });
    assert_eq!(watch_at(&env, &url, &narrow)["mode"], "events");
    for i in 0..5 {
        write(&narrow.join(format!("n{i}/f")), b"n");
    }
    wait_for(Duration::from_secs(10), || {
        watch_at(&env, &url, &narrow)["mode"] == "polling"
    });
    let w = watch_at(&env, &url, &narrow);
    assert_eq!(w["sure"], false, "{w}");
    let log = log_text(&env, &url);
    assert!(
        log.lines().any(|l| l.contains("mode polling (events)")
            && l.contains("the inotify watch limit is reached")),
        "{log}"
    );
    wait_versions(&env, &url, "narrow", 2, 30);
    wait_for(Duration::from_secs(10), || {
        files_of(&env, "narrow").len() == 6
    });
    let o = env.json(&["data", "status", narrow.to_str().unwrap()]);
    assert!(o.get("touched").is_none(), "{o}");
}

/// `trainyard up` with the W&B server and key in its environment.
fn up_with_wandb(env: &Env, server: &WandbServer) -> (Proc, String) {
    let home = env.path("userhome");
    std::fs::create_dir_all(&home).unwrap();
    env.up_with(
        "up",
        &[],
        &[
            ("WANDB_BASE_URL", server.url.as_str()),
            ("WANDB_API_KEY", API_KEY),
            ("HOME", home.to_str().unwrap()),
            ("WANDB_CONFIG_DIR", home.to_str().unwrap()),
            ("NETRC", home.join("netrc").to_str().unwrap()),
        ],
    )
}

#[test]
fn sync_wandb_syncs_a_run_when_it_finishes_while_watched() {
    let server = WandbServer::start();
    let env = Env::new();
    let (_d, url) = up_with_wandb(&env, &server);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wandb/offline-run-20261122_133843-plain001");
    let runs = env.path("runs");
    let dir = runs.join("wandb/offline-run-20261122_133843-plain001");
    crate::wandb_sync::copy_dir(&fixture, &dir);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wandb"))
        .unwrap();
    let full = std::fs::read(&file).unwrap();
    // Still running: the file is cut before its exit record.
    std::fs::write(&file, &full[..full.len() / 2]).unwrap();
    watch(
        &env,
        &url,
        &[
            "add",
            runs.to_str().unwrap(),
            "--sync-wandb",
            "--host",
            &server.url,
        ],
    );
    wait_for(Duration::from_secs(30), || {
        log_text(&env, &url).contains("index new run")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        server.runs().iter().all(|r| !r.complete),
        "a running run was completed"
    );
    // It finishes: the rest of the file, exit record included, is appended.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, &full[full.len() / 2..]).unwrap();
    drop(f);
    wait_for(Duration::from_secs(60), || {
        server
            .runs()
            .iter()
            .any(|r| r.complete && r.state == "finished")
    });
    let log = log_text(&env, &url);
    assert!(log.contains("sync synced"), "{log}");
    let synced = server.runs();
    assert_eq!(synced.len(), 1);
    assert!(!synced[0].history.is_empty());
    assert!(
        server.protocol_errors().is_empty(),
        "{:?}",
        server.protocol_errors()
    );
    // Synced once: nothing more is sent on later scans.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(log_text(&env, &url).matches("sync synced").count(), 1);
}
