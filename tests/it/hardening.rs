//! The security issue's hardening, with the real binary: a checkout killed
//! with SIGKILL leaves temp files that nothing sees and the next checkout
//! removes; the home and its databases, logs and daemon files are the
//! owner's alone; bad job flags and spec files are refused naming the field
//! and submit nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{get_json, snapshot_tree, wait_for, walk, write, Env};

const TEMP: &str = ".trainyard-tmp-";

/// 2,000 small (packed) files in 20 directories and four 16 MiB (loose)
/// files at the top, which take long enough to copy that a kill lands
/// while one is half written.
fn big_dataset(root: &Path) {
    for i in 0..2000u32 {
        let mut body = vec![(i % 251) as u8; 4096];
        body[..4].copy_from_slice(&i.to_le_bytes());
        write(&root.join(format!("d{:02}/f{i:05}", i % 20)), &body);
    }
    for b in 0..4u32 {
        let body: Vec<u8> = (0..16u32 << 20)
            .map(|x| (x.wrapping_mul(2_654_435_761).wrapping_add(b) >> 13) as u8)
            .collect();
        write(&root.join(format!("big{b}.bin")), &body);
    }
}

/// Checkout temp files below `root`.
fn debris(root: &Path) -> Vec<PathBuf> {
    if !root.exists() {
        return Vec::new();
    }
    walk(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(TEMP))
        })
        .collect()
}

/// Whether a temp file is at the top of `dir` (where the big files go).
fn temp_at_top(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(TEMP))
    })
}

enum KillAt {
    /// As soon as a temp file shows at the top of the directory.
    FirstTemp,
    /// After this long.
    After(Duration),
}

#[test]
fn a_killed_checkout_leaves_debris_nothing_sees_and_the_next_checkout_removes() {
    let env = Env::new();
    let src = env.path("src");
    big_dataset(&src);
    env.ok(&["data", "add", "src", "--name", "ds"]);
    let points = [
        KillAt::FirstTemp,
        KillAt::FirstTemp,
        KillAt::FirstTemp,
        KillAt::After(Duration::from_millis(5)),
        KillAt::After(Duration::from_millis(30)),
        KillAt::After(Duration::from_millis(80)),
        KillAt::After(Duration::from_millis(150)),
        KillAt::After(Duration::from_millis(300)),
        KillAt::After(Duration::from_millis(600)),
    ];
    let (mut killed, mut with_debris) = (0, 0);
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for (round, at) in points.iter().enumerate() {
        let name = format!("out{round}");
        let out = env.path(&name);
        let mut child = env
            .cmd()
            .args(["data", "checkout", "ds", &name, "--link", "copy"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn checkout");
        match at {
            KillAt::FirstTemp => {
                let end = Instant::now() + Duration::from_secs(60);
                while !temp_at_top(&out)
                    && child.try_wait().expect("try_wait").is_none()
                    && Instant::now() < end
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            KillAt::After(d) => std::thread::sleep(*d),
        }
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL");
            killed += 1;
        }
        child.wait().expect("wait");
        let left = debris(&out);
        if !left.is_empty() {
            with_debris += 1;
        }
        let point = match at {
            KillAt::FirstTemp => "at the first temp file".to_string(),
            KillAt::After(d) => format!("after {d:?}"),
        };
        outcomes.push(format!("{point}: {} temp files", left.len()));
        if !out.exists() {
            continue; // killed before it made the directory
        }
        let mut wrong = Vec::new();

        // status says nothing of them.
        let st = env.run(&["--json", "data", "status", &name, "--name", "ds"]);
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        if [&st.stdout, &st.stderr]
            .iter()
            .any(|t| String::from_utf8_lossy(t).contains(TEMP))
        {
            wrong.push("status lists temp files");
        }
        // add records none of them.
        let probe = format!("probe{round}");
        env.ok(&["data", "add", &name, "--name", &probe]);
        let files = env.json(&["data", "ls", &probe, "-R"]);
        if files
            .as_array()
            .expect("ls array")
            .iter()
            .any(|f| f["path"].as_str().unwrap_or("").contains(TEMP))
        {
            wrong.push("add recorded temp files");
        }
        // The next checkout (no --force) removes exactly them and completes.
        let rep = env.json(&["data", "checkout", "ds", &name, "--link", "copy"]);
        if rep["cleaned"].as_u64() != Some(left.len() as u64) {
            wrong.push("the re-run did not report the cleaned count");
        }
        if !debris(&out).is_empty() {
            wrong.push("temp files remain after the re-run");
        }
        if snapshot_tree(&out) != snapshot_tree(&src) {
            wrong.push("the re-run's tree differs from the source");
        }
        if !wrong.is_empty() {
            failed.push(format!("round {round} ({point}): {}", wrong.join("; ")));
        }
        fs::remove_dir_all(&out).expect("clean up");
    }
    eprintln!(
        "checkout kill points: {} tried, {killed} killed mid-way, {with_debris} left debris, \
         {} rounds held, {} failed ({})",
        points.len(),
        points.len() - failed.len(),
        failed.len(),
        outcomes.join(", ")
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(killed >= 4, "only {killed} checkouts were interrupted");
    assert!(with_debris >= 2, "only {with_debris} kills left temp files");
}

#[test]
fn a_running_writers_temp_files_are_left_alone_and_a_users_look_alike_is_data() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"a");
    env.ok(&["data", "add", "src", "--name", "ds"]);
    let out = env.path("out");
    fs::create_dir_all(out.join("sub")).unwrap();
    // This test process is alive: its "temp file" may be a checkout still writing.
    let live = out.join(format!("sub/{TEMP}{}-1-1", std::process::id()));
    // A finished child's pid is dead.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = c.id();
    c.wait().unwrap();
    let dead = out.join(format!("{TEMP}{dead_pid}-1-1"));
    // Not Trainyard's pattern: the user's own file.
    let mine = out.join(format!("{TEMP}notes"));
    for p in [&live, &dead, &mine] {
        fs::write(p, b"x").unwrap();
    }
    let rep = env.json(&["data", "checkout", "ds", "out", "--force"]);
    assert_eq!(rep["cleaned"], 1, "{rep}");
    assert!(live.exists() && mine.exists() && !dead.exists());
    // Temp-named files are never data; the look-alike is.
    let st = env.json(&["data", "status", "out", "--name", "ds"]);
    let paths: Vec<&str> = st["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [format!("{TEMP}notes").as_str()], "{st}");
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_new_home_is_private_and_the_queue_wal_with_an_env_secret_too() {
    let env = Env::new();
    // --keep-work: the agent's own copy of the log stays to be checked.
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB", "--keep-work"]);
    let out = env.json(&[
        "submit",
        "--server",
        &url,
        "--env",
        "API_KEY=hunter2",
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    let id = out["ids"][0].as_u64().expect("id");
    wait_for(Duration::from_secs(20), || {
        get_json(&url, &format!("/api/v1/jobs/{id}"), None)["state"] == "succeeded"
    });
    let h = &env.home;
    assert_eq!(mode(h), 0o700, "home");
    // The daemon holds the queue open: its WAL (with the secret) exists now.
    for f in [
        "queue.db",
        "queue.db-wal",
        "queue.db-shm",
        "daemon.json",
        "daemon.token",
    ] {
        assert_eq!(mode(&h.join(f)), 0o600, "{f}");
    }
    let log = h.join(format!("logs/{id}/1.log"));
    assert_eq!(fs::read_to_string(&log).unwrap().trim(), "done");
    assert_eq!(mode(&log), 0o600, "job log");
    // Everything the daemon and its agent wrote for the job: logs, attempt
    // records, the agent's id and locks.
    let mut files = Vec::new();
    let mut dirs = vec![h.join("agent"), h.join("logs")];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // The job's own work directory holds what the job wrote.
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let work = name
                    .split_once('-')
                    .is_some_and(|(j, n)| [j, n].iter().all(|x| x.parse::<u64>().is_ok()));
                if !work {
                    dirs.push(p);
                }
            } else {
                files.push(p);
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&format!("{id}-1.log"))),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(mode(f) & 0o077, 0, "{} is readable by others", f.display());
    }
    // The data commands' databases, too.
    write(&env.path("ds/a"), b"a");
    env.ok(&["data", "add", "ds"]);
    assert_eq!(mode(&h.join("catalog.db")), 0o600);
    assert_eq!(mode(&h.join("store/statcache.db")), 0o600);
    // A checkout is user data in a user directory: ordinary modes.
    env.ok(&["data", "checkout", "ds", "co", "--link", "copy"]);
    assert_eq!(mode(&env.path("co/a")), 0o644);
}

#[test]
fn an_existing_open_home_is_narrowed_once_with_a_notice() {
    let env = Env::new();
    write(&env.path("ds/a"), b"a");
    env.ok(&["data", "add", "ds"]);
    let h = &env.home;
    // As an older Trainyard left it.
    fs::set_permissions(h, fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["catalog.db", "daemon.json", "remotes.toml"] {
        if !h.join(f).exists() {
            fs::write(h.join(f), b"").unwrap();
        }
        fs::set_permissions(h.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(
        h.join("store/statcache.db"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = env.run(&["data", "list"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let notice: Vec<&str> = err.lines().filter(|l| l.contains("narrowed")).collect();
    assert_eq!(notice.len(), 1, "{err}");
    for part in [
        "the home 0755 -> 0700",
        "catalog.db 0644 -> 0600",
        "daemon.json 0644 -> 0600",
    ] {
        assert!(notice[0].contains(part), "{part}: {err}");
    }
    assert_eq!(mode(h), 0o700);
    assert_eq!(mode(&h.join("catalog.db")), 0o600);
    assert_eq!(mode(&h.join("daemon.json")), 0o600);
    // Not a database, token or daemon file: left as the user set it.
    assert_eq!(mode(&h.join("remotes.toml")), 0o644);
    // A database below the top is narrowed when it is opened.
    assert_eq!(mode(&h.join("store/statcache.db")), 0o600);
    // Nothing more to say the next time.
    let o = env.run(&["data", "list"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

#[test]
fn bad_job_flags_and_specs_are_refused_naming_the_field_and_submit_nothing() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    write(
        &env.path("bad.json"),
        br#"{"command": ["x"], "gpus": {"count": "two"}}"#,
    );
    write(
        &env.path("zero.toml"),
        b"command = [\"x\"]\ntimeout_s = 0\n",
    );
    write(
        &env.path("huge.json"),
        br#"{"command": ["x"], "gpus": {"min_memory_mib": 18446744073709551615}}"#,
    );
    let cases: [(&[&str], &str); 10] = [
        (
            &["--gpu-mem", "18014398509481984GB", "--", "true"],
            "--gpu-mem",
        ),
        (&["--timeout", "0s", "--", "true"], "--timeout"),
        (&["--timeout", "500ms", "--", "true"], "--timeout"),
        (&["--sweep", "lr=", "--", "true"], "sweep.lr"),
        (&["--sweep", "lr=1,,2", "--", "true"], "sweep.lr"),
        (&["--input", "ds@", "--", "true"], "inputs[0]"),
        (&["-f", "bad.json"], "gpus.count"),
        (&["-f", "zero.toml"], "timeout_s"),
        (&["-f", "huge.json"], "gpus.min_memory_mib"),
        (
            &["--sweep", "lr=1", "--sweep", "lr=2", "--", "true"],
            "sweep.lr",
        ),
    ];
    for (args, field) in cases {
        let mut a = vec!["submit", "--server", &url];
        a.extend_from_slice(args);
        let err = env.fail(&a);
        assert!(
            err.contains(&format!("invalid job spec: {field}: ")),
            "{args:?} should name {field}: {err}"
        );
    }
    let err = env.fail(&["submit", "--server", &url, "--input", "ds@", "--", "true"]);
    assert!(
        err.contains("empty ref after '@' in ds@: use NAME or NAME@REF"),
        "{err}"
    );
    let jobs = get_json(&url, "/api/v1/jobs", None);
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    // The same flags, well formed, are accepted.
    let ok = env.json(&[
        "submit",
        "--server",
        &url,
        "--gpu-mem",
        "40GB",
        "--timeout",
        "1s",
        "--sweep",
        "lr=1,2",
        "--",
        "true",
    ]);
    assert_eq!(ok["ids"].as_array().map(Vec::len), Some(2), "{ok}");
}

#[test]
fn an_empty_ref_is_an_error_not_latest() {
    let env = Env::new();
    write(&env.path("ds/a"), b"a");
    env.ok(&["data", "add", "ds"]);
    for args in [
        &["data", "checkout", "ds@", "out"][..],
        &["data", "ls", "ds@"][..],
    ] {
        let err = env.fail(args);
        assert!(
            err.contains("empty ref after '@' in ds@: use NAME or NAME@REF"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !env.path("out").exists(),
        "a refused checkout wrote nothing"
    );
}
