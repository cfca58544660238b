//! Golden files for every persistent format: the store catalog with packs,
//! the queue, the run index, the sync ledger, `remotes.toml` and a
//! directory remote's layout (the store's schema 1 is `store_golden`, the
//! wandb run files `wandb_*`). Each `tests/fixtures/<format>-v<N>/` was
//! written by a Trainyard whose schema of that format was `N`; the tests
//! below open it with today's code and read back what was written,
//! migrating it where the schema has moved on.
//!
//! `scripts/gen-fixtures` (the ignored test [`write_missing_fixtures`])
//! writes the fixtures of the current versions that do not exist yet, with
//! the real binary; it never overwrites one. A schema change therefore adds
//! a directory, and a test for it, beside the old ones, which keep being
//! read. `TRAINYARD_GOLDEN_BIN` runs an older build instead, to write an
//! older version's fixture (`queue-v4` came from commit 7400690).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use trainyard::queue::AttemptState;

use crate::support::{copy_dir, snapshot_tree, wait_for, write, Env};

/// `tests/fixtures`.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of fixture directory `name` in a fresh test env: its `home/` as
/// the env's home, the rest under the env's temp dir.
fn env_from(name: &str) -> Env {
    let env = Env::new();
    let src = fixtures().join(name);
    assert!(src.is_dir(), "fixture {} missing", src.display());
    copy_dir(&src, &env.path("fixture"));
    if src.join("home").is_dir() {
        copy_dir(&src.join("home"), &env.home);
    }
    env
}

/// `PRAGMA user_version` of a database.
fn user_version(db: &Path) -> u32 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

// ---------------------------------------------------------------------------
// The store catalog with packs (catalog schema 3).

/// The same two versions as `store-v1`: the manifest encoding is unchanged,
/// so the same content has the same version ids.
const V1: &str = "8c27b9524486dee830de67dfb1b45e7c283f29c37d7daa211f52830e64618c8f";
const V2: &str = "8f8780dc0f2a216be060b9a8110c4741b92ad9a8f3d4123d29a6b0fe95e1bd91";

#[test]
fn catalog_v3_with_packs_still_reads() {
    let env = env_from("catalog-v3");
    assert_eq!(user_version(&env.home.join("catalog.db")), 3);
    let log = env.json(&["data", "log", "golden"]);
    assert_eq!(log[0]["id"], V2);
    assert_eq!(log[0]["message"], "adds a dog");
    assert_eq!(log[1]["id"], V1);
    assert_eq!(log[1]["tags"][0], "v1");
    assert_eq!(log[1]["author"], "golden");
    env.ok(&["data", "fsck"]);
    // Every object is in a pack: checkout reads them from there.
    for v in ["v1", V2] {
        let expect = env.path(&format!("expect-{v}"));
        crate::store_golden::golden_source(&expect, v == V2);
        let out = env.path(&format!("out-{v}"));
        env.ok(&[
            "data",
            "checkout",
            &format!("golden@{v}"),
            out.to_str().unwrap(),
        ]);
        assert_eq!(snapshot_tree(&out), snapshot_tree(&expect));
    }
}

// ---------------------------------------------------------------------------
// A directory remote (remote format 1) and `remotes.toml`.

#[test]
fn remotes_toml_still_reads() {
    let env = env_from("remote-v1");
    let list = env.json(&["remote", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    assert_eq!(list[0]["name"], "lab");
    assert_eq!(list[0]["default"], false);
    assert_eq!(
        list[0]["config"],
        serde_json::json!({
            "url": "s3://datasets/trainyard",
            "endpoint": "http://10.0.0.5:9000",
            "region": "eu-west-1",
            "allow_http": true,
        })
    );
    assert_eq!(list[1]["name"], "nas");
    assert_eq!(list[1]["default"], true);
    assert_eq!(list[1]["config"]["url"], "file:///mnt/nas/trainyard");
}

#[test]
fn a_directory_remote_v1_still_pulls() {
    let env = env_from("remote-v1");
    // A home of its own, not the fixture's remotes.toml.
    let _ = fs::remove_file(env.home.join("remotes.toml"));
    let bucket = env.path("fixture/bucket");
    env.ok(&[
        "remote",
        "add",
        "dir",
        &format!("file://{}", bucket.display()),
    ]);
    let listed = env.ok(&["data", "ls", "--remote", "dir"]);
    assert!(listed.contains("golden"), "{listed}");
    for (r, id, dog) in [("v1", V1, false), ("latest", V2, true)] {
        let out = env.path(&format!("out-{r}"));
        let pulled = env.json(&[
            "data",
            "pull",
            &format!("golden@{r}"),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(pulled["version"], id);
        let expect = env.path(&format!("expect-{r}"));
        crate::store_golden::golden_source(&expect, dog);
        assert_eq!(snapshot_tree(&out), snapshot_tree(&expect));
    }
    let log = env.json(&["data", "log", "golden"]);
    assert_eq!(log[1]["id"], V1);
    assert_eq!(log[1]["author"], "golden");
    assert_eq!(log[1]["message"], "first version");
    assert_eq!(log[1]["tags"][0], "v1");
    assert_eq!(log[0]["message"], "adds a dog");
    env.ok(&["data", "fsck"]);
}

// ---------------------------------------------------------------------------
// The queue: `queue.db` and the daemon's attempt logs.

/// Serve the fixture home in-process (no agent, nothing ever purged) and
/// read every job back through the API. `secret`: the fixture has job 9,
/// submitted with `--secret-env HF_TOKEN` (queue schema 5 and later).
fn queue_reads_back(name: &str, version: u32, secret: bool) {
    use trainyard::daemon::{Config, Daemon};
    use trainyard::queue::{JobId, JobState};
    let env = env_from(name);
    let db = env.home.join("queue.db");
    assert_eq!(user_version(&db), version);
    let home = trainyard::Home::at(&env.home);
    let mut config = Config::loopback(home, 0, None);
    // The fixture's jobs ended long ago: keep them.
    config.server.retention = trainyard::server::Retention {
        keep_jobs: None,
        keep_for: None,
        max_log_bytes: None,
        every: Duration::from_secs(3600),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = Daemon::start(config).await.unwrap();
        let c = d.client();
        let job = |id: i64| {
            let c = c.clone();
            async move { c.job(JobId(id)).await.unwrap() }
        };
        let log = |id: i64| {
            let c = c.clone();
            async move {
                let l = c.log(JobId(id), None, 0, Duration::ZERO).await.unwrap();
                String::from_utf8(l.bytes).unwrap()
            }
        };
        let expect = [
            (1, "ok", JobState::Succeeded, Some(0), Some("hello\n")),
            (2, "fails", JobState::Failed, Some(3), Some("bad\n")),
            (3, "waits", JobState::Failed, None, None),
            (4, "gpu", JobState::Succeeded, Some(0), Some("0,1\n")),
            (5, "sweep", JobState::Succeeded, Some(0), Some("--lr 0.1\n")),
            (
                6,
                "sweep",
                JobState::Succeeded,
                Some(0),
                Some("--lr 0.01\n"),
            ),
            (7, "pending", JobState::Queued, None, None),
            (8, "cancelled", JobState::Cancelled, None, None),
        ];
        for (id, name, state, exit, text) in expect {
            let j = job(id).await;
            assert_eq!(j.job.spec.name.as_deref(), Some(name), "job {id}");
            assert_eq!(j.job.state, state, "job {id}");
            assert_eq!(j.job.exit_code, exit, "job {id}");
            assert_eq!(j.job.spec.project, "golden", "job {id}");
            assert_eq!(j.job.spec.workdir.as_deref(), Some(Path::new("/tmp")));
            if let Some(text) = text {
                assert_eq!(log(id).await, text, "job {id}");
            }
        }
        let ok = job(1).await;
        assert_eq!(ok.job.spec.argv(), ["echo", "hello"]);
        assert_eq!(ok.job.spec.tags, ["a", "b"]);
        assert_eq!(ok.job.spec.env["MODE"], "fast");
        assert_eq!(ok.attempt_log.len(), 1);
        assert!(ok.job.finished_ns.is_some());
        let fails = job(2).await;
        assert_eq!(
            fails.job.reason.as_deref(),
            Some("attempt 1 exited with code 3")
        );
        assert_eq!(fails.attempt_log[0].state, AttemptState::Failed);
        let waits = job(3).await;
        assert_eq!(waits.job.spec.depends_on, [2]);
        assert!(waits.attempt_log.is_empty());
        let gpu = job(4).await;
        assert_eq!(gpu.job.spec.priority, 5);
        assert_eq!(gpu.job.spec.gpus.count, 2);
        assert_eq!(gpu.job.spec.gpus.model.as_deref(), Some("A100"));
        assert_eq!(gpu.job.gpus.len(), 2);
        assert_eq!(gpu.job.gpu_indices, [0, 1]);
        assert_eq!(job(5).await.job.spec.args["lr"], "0.1");
        assert_eq!(job(8).await.attempt_log[0].state, AttemptState::Cancelled);
        // The indexes of schema 3 answer the filters.
        let tagged = c
            .jobs_page(&trainyard::client::JobsQuery {
                tag: Some("a".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(tagged.jobs.iter().map(|j| j.id.0).collect::<Vec<_>>(), [1]);
        if secret {
            let s = job(9).await;
            assert_eq!(s.job.state, JobState::Succeeded);
            assert_eq!(s.job.spec.secret_env["HF_TOKEN"], "<secret>");
        } else {
            assert!(c.job(JobId(9)).await.is_err());
        }
        // Schedules (schema 7): the fixture's one, fired once by hand.
        let schedules = c.schedules().await.unwrap();
        if version >= 7 {
            assert_eq!(schedules.len(), 1, "{schedules:?}");
            let s = &schedules[0];
            assert_eq!(s.name, "golden-nightly");
            assert_eq!(s.cron.as_deref(), Some("0 3 * * *"));
            assert_eq!(s.tz, "Asia/Seoul");
            assert_eq!(s.window.as_deref(), Some("00:00-23:59"));
            assert_eq!(s.job.secret_env["HF_TOKEN"], "<secret>");
            let last = s.last.as_ref().unwrap();
            assert_eq!(last.jobs, [JobId(10)]);
            assert_eq!(last.state, Some(JobState::Succeeded));
            assert_eq!(
                job(10).await.job.spec.env["TRAINYARD_SCHEDULE"],
                "golden-nightly"
            );
        } else {
            assert!(schedules.is_empty(), "{schedules:?}");
        }
        d.stop().await.unwrap();
    });
    assert_eq!(
        user_version(&db) as usize,
        trainyard::queue::SCHEMA,
        "migrated to the current schema"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    // Jobs that ended before the outbox existed (schema 8) notify nobody;
    // a fixture written since keeps the events its jobs' ends wrote. The
    // daemon that opened it may have found this machine's disk low: that
    // event is about the machine, not the fixture.
    let events: i64 = conn
        .query_row(
            "SELECT count(*) FROM notify_events WHERE kind != 'disk_low'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if version < 8 {
        assert_eq!(events, 0, "no notification for jobs that ended before");
    } else {
        assert!(events > 0, "the fixture's job ends are events");
    }
    let secrets: Vec<(i64, String, String)> = conn
        .prepare("SELECT job_id, name, value FROM job_secrets")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    if secret {
        let mut want = vec![(9, "HF_TOKEN".into(), "golden-secret-value".into())];
        if version >= 7 {
            // The scheduled job got the schedule's secret.
            want.push((10, "HF_TOKEN".into(), "golden-secret-value".into()));
        }
        assert_eq!(secrets, want);
    } else {
        assert!(secrets.is_empty());
    }
}

#[test]
fn queue_v8_still_reads() {
    queue_reads_back("queue-v8", 8, true);
}

#[test]
fn queue_v7_still_reads() {
    queue_reads_back("queue-v7", 7, true);
}

#[test]
fn queue_v6_still_reads() {
    queue_reads_back("queue-v6", 6, true);
}

#[test]
fn queue_v5_still_reads() {
    queue_reads_back("queue-v5", 5, true);
}

#[test]
fn queue_v4_is_migrated_and_reads() {
    queue_reads_back("queue-v4", 4, false);
}

// ---------------------------------------------------------------------------
// The run index (`runs.db`) and the sync ledger (`sync.db`).

#[test]
fn runs_v1_still_reads() {
    let env = env_from("runs-v1");
    assert_eq!(user_version(&env.home.join("runs.db")), 1);
    let runs = env.json(&["runs", "ls"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let crash = &runs[0];
    assert_eq!(crash["id"], "crash001");
    assert_eq!(crash["name"], "crashed run");
    assert_eq!(crash["project"], "trainyard-fixtures");
    assert_eq!(crash["state"], "crashed");
    assert_eq!(crash["exit_code"], 1);
    assert_eq!(crash["history_rows"], 20);
    assert_eq!(crash["keys"], serde_json::json!(["loss"]));
    assert_eq!(crash["summary"]["loss"], -9);
    assert_eq!(crash["host"], "fixture-host");
    let stats = &runs[1];
    assert_eq!(stats["id"], "stats001");
    assert_eq!(stats["state"], "finished");
    assert_eq!(stats["history_rows"], 6);
    assert_eq!(stats["system_rows"], 7);
    assert_eq!(stats["summary"]["x"], 5);
    let show = env.json(&["runs", "show", "crash001"]);
    assert_eq!(show["config"]["seed"], 7);
    let csv = env.ok(&["runs", "history", "stats001", "--csv"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "step,runtime,x");
    assert_eq!(rows.len(), 7);
    assert!(
        rows[6].starts_with("5,") && rows[6].ends_with(",5"),
        "{csv}"
    );
}

#[test]
fn sync_v2_still_reads() {
    let env = env_from("sync-v2");
    assert_eq!(user_version(&env.home.join("sync.db")), 2);
    let status = env.json(&["sync", "status"]);
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{status:#}");
    let r = &rows[0];
    assert_eq!(r["run_id"], "stats001");
    assert_eq!(r["project"], "trainyard-fixtures");
    assert!(
        r["server"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{r:#}"
    );
    assert_eq!(r["state"], "synced");
    assert_eq!(r["history_lines"], 6);
    assert_eq!(r["history_rows"], 6);
    assert_eq!(r["files"], 4);
}

// ---------------------------------------------------------------------------
// Generating the fixtures.

/// The binary that writes fixtures: `TRAINYARD_GOLDEN_BIN`, else this build's.
fn golden_bin() -> PathBuf {
    std::env::var_os("TRAINYARD_GOLDEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trainyard")))
}

/// Runs [`golden_bin`] in `env` as the user `golden`.
struct Gen<'a> {
    env: &'a Env,
}

impl Gen<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new(golden_bin());
        c.env("TRAINYARD_HOME", &self.env.home)
            .env("TRAINYARD_USER", "golden")
            .env_remove("RUST_LOG")
            .env_remove("TRAINYARD_URL")
            .env_remove("TRAINYARD_TOKEN")
            .current_dir(self.env.tmp.path());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn help_mentions(&self, args: &[&str], flag: &str) -> bool {
        self.ok(args).contains(flag)
    }
}

/// Copy `from` into `tests/fixtures/<name>-v<version>` unless that exists.
fn keep(name: &str, version: u32, from: &Path) {
    let dest = fixtures().join(format!("{name}-v{version}"));
    if dest.exists() {
        eprintln!("kept    {} (exists)", dest.display());
        return;
    }
    copy_dir(from, &dest);
    eprintln!("wrote   {}", dest.display());
}

/// Remove what SQLite and the store leave beside their files that is no
/// part of the format: side files (a clean close leaves none), locks,
/// temp directories, the stat cache (a rebuildable hint).
fn tidy(dir: &Path) {
    for e in walkdir(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        let drop = name.ends_with("-wal")
            || name.ends_with("-shm")
            || name.ends_with(".lock")
            || name == "lock"
            || name.starts_with("statcache.db");
        if drop {
            let _ = fs::remove_file(&e);
        }
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Compact a database in place (VACUUM), so the fixture is small.
fn vacuum(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("PRAGMA journal_mode = DELETE; VACUUM;")
        .unwrap();
}

/// Write the fixtures of the current formats that do not exist yet (see the
/// module doc). `TRAINYARD_GOLDEN_ONLY=queue,runs` limits it to some.
#[test]
#[ignore = "writes tests/fixtures; run by scripts/gen-fixtures"]
fn write_missing_fixtures() {
    let only = std::env::var("TRAINYARD_GOLDEN_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    if wanted("catalog") {
        gen_catalog();
    }
    if wanted("remote") {
        gen_remote();
    }
    if wanted("queue") {
        gen_queue();
    }
    if wanted("runs") {
        gen_runs();
    }
    if wanted("sync") {
        gen_sync();
    }
}

/// Two versions of the `store-v1` source, tagged, packed.
fn add_golden_versions(g: &Gen) {
    let src = g.env.path("golden");
    crate::store_golden::golden_source(&src, false);
    let s = src.to_str().unwrap();
    g.ok(&["data", "add", s, "-m", "first version", "--tag", "v1"]);
    write(&src.join("images/dog.txt"), b"dog\n");
    g.ok(&["data", "add", s, "-m", "adds a dog"]);
}

fn gen_catalog() {
    let env = Env::new();
    let g = Gen { env: &env };
    add_golden_versions(&g);
    let out = env.path("out");
    fs::create_dir_all(out.join("home")).unwrap();
    fs::copy(env.home.join("catalog.db"), out.join("home/catalog.db")).unwrap();
    copy_dir(&env.home.join("store"), &out.join("home/store"));
    let _ = fs::remove_dir_all(out.join("home/store/tmp"));
    tidy(&out);
    vacuum(&out.join("home/catalog.db"));
    keep("catalog", user_version(&out.join("home/catalog.db")), &out);
}

fn gen_remote() {
    let env = Env::new();
    let g = Gen { env: &env };
    add_golden_versions(&g);
    let bucket = env.path("out/bucket");
    fs::create_dir_all(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    g.ok(&["remote", "add", "dir", &url]);
    g.ok(&["data", "push", "--all", "--remote", "dir"]);
    // remotes.toml of another home, with fixed URLs.
    let conf = Env::new();
    let c = Gen { env: &conf };
    c.ok(&[
        "remote",
        "add",
        "lab",
        "s3://datasets/trainyard",
        "--endpoint",
        "http://10.0.0.5:9000",
        "--region",
        "eu-west-1",
        "--allow-http",
    ]);
    c.ok(&[
        "remote",
        "add",
        "nas",
        "file:///mnt/nas/trainyard",
        "--default",
    ]);
    write(
        &env.path("out/home/remotes.toml"),
        &fs::read(conf.home.join("remotes.toml")).unwrap(),
    );
    let record = walkdir(&bucket.join("datasets"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a version record");
    let v: serde_json::Value = serde_json::from_slice(&fs::read(record).unwrap()).unwrap();
    keep(
        "remote",
        v["format"].as_u64().unwrap() as u32,
        &env.path("out"),
    );
}

/// A daemon with a fake two-GPU agent: jobs that succeed, fail, depend on a
/// failed job, wait for a GPU nobody has, are cancelled, a sweep, tags, env
/// and (where the binary has it) a secret env; then stopped cleanly.
fn gen_queue() {
    let env = Env::new();
    let g = Gen { env: &env };
    let mut up = g.cmd();
    up.args(["--json", "up", "--port", "0", "--fake-gpus", "2xA100-80GB"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut daemon = crate::support::Proc {
        child: up.spawn().unwrap(),
        log: env.path("up.stderr"),
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let url: String = serde_json::from_str::<serde_json::Value>(&line).unwrap()["url"]
        .as_str()
        .unwrap()
        .into();
    let submit = |args: &[&str]| -> Vec<u64> {
        let mut a = vec![
            "submit",
            "--server",
            &url,
            "--workdir",
            "/tmp",
            "--project",
            "golden",
        ];
        a.extend_from_slice(args);
        g.json(&a)["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect()
    };
    let state = |id: u64| -> String {
        g.json(&["show", "--server", &url, &id.to_string()])["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ok = submit(&[
        "--name",
        "ok",
        "--tag",
        "a",
        "--tag",
        "b",
        "--env",
        "MODE=fast",
        "--",
        "echo",
        "hello",
    ])[0];
    let fails = submit(&[
        "--name",
        "fails",
        "--shell",
        "--max-attempts",
        "1",
        "--",
        "echo bad >&2; exit 3",
    ])[0];
    wait_for(Duration::from_secs(30), || state(fails) == "failed");
    let waits = submit(&[
        "--name",
        "waits",
        "--after",
        &fails.to_string(),
        "--",
        "true",
    ])[0];
    let gpu = submit(&[
        "--name",
        "gpu",
        "--gpus",
        "2",
        "--gpu-model",
        "A100",
        "--priority",
        "5",
        "--",
        "sh",
        "-c",
        "echo $CUDA_VISIBLE_DEVICES",
    ])[0];
    let sweep = submit(&["--name", "sweep", "--sweep", "lr=0.1,0.01", "--", "echo"]);
    let pending = submit(&[
        "--name",
        "pending",
        "--gpus",
        "1",
        "--gpu-model",
        "H100",
        "--",
        "true",
    ])[0];
    let long = submit(&["--name", "cancelled", "--", "sleep", "600"])[0];
    wait_for(Duration::from_secs(30), || state(long) == "running");
    g.ok(&["cancel", "--server", &url, &long.to_string()]);
    let mut all = vec![ok, gpu, long];
    all.extend(&sweep);
    if g.help_mentions(&["submit", "--help"], "--secret-env") {
        let mut c = g.cmd();
        c.args([
            "--json",
            "submit",
            "--server",
            &url,
            "--workdir",
            "/tmp",
            "--project",
            "golden",
        ])
        .args(["--name", "secret", "--secret-env", "HF_TOKEN", "--", "true"])
        .env("HF_TOKEN", "golden-secret-value");
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        all.push(v["ids"][0].as_u64().unwrap());
    }
    if g.help_mentions(&["--help"], "schedule") {
        let mut c = g.cmd();
        c.args(["schedule", "add", "golden-nightly", "--server", &url])
            .args([
                "--cron",
                "0 3 * * *",
                "--tz",
                "Asia/Seoul",
                "--window",
                "00:00-23:59",
            ])
            .args([
                "--overlap",
                "queue",
                "--catch-up",
                "once",
                "--workdir",
                "/tmp",
            ])
            .args([
                "--project",
                "golden",
                "--secret-env",
                "HF_TOKEN",
                "--",
                "true",
            ])
            .env("HF_TOKEN", "golden-secret-value");
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Fired by hand (its window is open but for a minute a day).
        let v = g.json(&["schedule", "run", "golden-nightly", "--server", &url]);
        let id = v["occurrence"]["jobs"][0].as_u64().unwrap();
        all.push(id);
    }
    wait_for(Duration::from_secs(60), || {
        all.iter()
            .all(|id| matches!(state(*id).as_str(), "succeeded" | "failed" | "cancelled"))
    });
    assert_eq!(state(waits), "failed");
    assert_eq!(state(pending), "queued");
    daemon.term();
    let out = env.path("out");
    fs::create_dir_all(out.join("home")).unwrap();
    fs::copy(env.home.join("queue.db"), out.join("home/queue.db")).unwrap();
    copy_dir(&env.home.join("logs"), &out.join("home/logs"));
    tidy(&out);
    vacuum(&out.join("home/queue.db"));
    keep("queue", user_version(&out.join("home/queue.db")), &out);
}

/// The wandb fixtures used here: small, one with system metrics, one crashed.
const RUNS: [&str; 2] = [
    "offline-run-20261122_133845-stats001",
    "offline-run-20261122_133849-crash001",
];

fn gen_runs() {
    let env = Env::new();
    let g = Gen { env: &env };
    for r in RUNS {
        copy_dir(
            &fixtures().join("wandb").join(r),
            &env.path("wandb").join(r),
        );
    }
    g.ok(&["runs", "scan", env.path("wandb").to_str().unwrap()]);
    let out = env.path("out");
    fs::create_dir_all(out.join("home")).unwrap();
    fs::copy(env.home.join("runs.db"), out.join("home/runs.db")).unwrap();
    vacuum(&out.join("home/runs.db"));
    keep("runs", user_version(&out.join("home/runs.db")), &out);
}

fn gen_sync() {
    use crate::support::wandb::{WandbServer, API_KEY};
    let env = Env::new();
    let g = Gen { env: &env };
    let r = RUNS[0];
    copy_dir(
        &fixtures().join("wandb").join(r),
        &env.path("wandb").join(r),
    );
    g.ok(&["runs", "scan", env.path("wandb").to_str().unwrap()]);
    let server = WandbServer::start();
    let mut c = g.cmd();
    c.args(["sync", "wandb", env.path("wandb").to_str().unwrap()])
        .args(["--host", &server.url])
        .env("WANDB_API_KEY", API_KEY)
        .env("HOME", env.path("userhome"))
        .env_remove("WANDB_BASE_URL")
        .env_remove("WANDB_CONFIG_DIR")
        .env_remove("NETRC");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = env.path("out");
    fs::create_dir_all(out.join("home")).unwrap();
    for db in ["runs.db", "sync.db"] {
        fs::copy(env.home.join(db), out.join("home").join(db)).unwrap();
        vacuum(&out.join("home").join(db));
    }
    keep("sync", user_version(&out.join("home/sync.db")), &out);
}
