//! `trainyard sync wandb` against the wandb-compatible test server
//! (support/wandb.rs) on 127.0.0.1: what lands, idempotence, resuming after
//! kill -9 and server errors, errors people can act on, verify and delete,
//! and the same result as the real `wandb sync` when it is installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use trainyard::wandb::Value;

use crate::support::wandb::{self, Kind, Options, StoredRun, WandbServer, API_KEY, DEFAULT_ENTITY};
use crate::support::{wait_for, Env};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb")
}

/// Copies fixture run directories (by id suffix) under `dest/wandb/`.
fn copy_runs(dest: &Path, ids: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.ends_with(id)) {
            let to = dest.join("wandb").join(&name);
            copy_dir(&e.path(), &to);
            out.push(to);
        }
    }
    out.sort();
    assert_eq!(out.len(), ids.len(), "fixtures {ids:?}");
    out
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// `trainyard sync …` with the server and key in the environment and a
/// private HOME (so no real ~/.netrc or wandb settings leak in).
pub(crate) fn sync_cmd(env: &Env, url: &str, key: &str) -> Command {
    let mut c = env.cmd();
    c.env("WANDB_BASE_URL", url)
        .env("WANDB_API_KEY", key)
        .env("HOME", env.path("userhome"))
        .env_remove("WANDB_CONFIG_DIR")
        .env_remove("NETRC")
        .arg("sync");
    c
}

pub(crate) fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args).output().expect("run trainyard")
}

pub(crate) fn ok_json(c: Command, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = run(c, &a);
    assert!(
        o.status.success(),
        "sync {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

pub(crate) fn fail(c: Command, args: &[&str]) -> String {
    let o = run(c, args);
    assert!(
        !o.status.success(),
        "sync {args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn parse(line: &str) -> Value {
    Value::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A line in canonical form (sorted keys, one float format, NaN comparable).
pub(crate) fn canon(line: &str) -> String {
    parse(line).to_extended_json()
}

/// The fixture run directory among `dirs` whose name ends in `id`.
fn dir_of<'a>(dirs: &'a [PathBuf], id: &str) -> &'a Path {
    dirs.iter()
        .find(|d| d.to_string_lossy().ends_with(id))
        .unwrap_or_else(|| panic!("no fixture {id}"))
}

/// The fixtures' project.
pub(crate) const PROJECT: &str = "trainyard-fixtures";

/// `_step` of each history line, in order.
pub(crate) fn steps(r: &StoredRun) -> Vec<i64> {
    r.history
        .iter()
        .map(|l| {
            parse(l)
                .pointer(&["_step"])
                .and_then(Value::as_i64)
                .expect("_step")
        })
        .collect()
}

/// `trainyard --json sync status`.
pub(crate) fn sync_status(env: &Env) -> serde_json::Value {
    let o = env
        .cmd()
        .args(["--json", "sync", "status"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

/// The run `id` in `project` (any entity: a run may name its own).
pub(crate) fn stored(server: &WandbServer, project: &str, id: &str) -> StoredRun {
    server
        .runs()
        .into_iter()
        .find(|r| r.project == project && r.name == id)
        .unwrap_or_else(|| {
            let have: Vec<String> = server
                .runs()
                .iter()
                .map(|r| format!("{}/{}/{}", r.entity, r.project, r.name))
                .collect();
            panic!("no run {project}/{id} on the server; it has {have:?}")
        })
}

#[test]
fn runs_land_complete_and_verified() {
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(
        env.tmp.path(),
        &["plain001", "stats001", "crash001", "killed01"],
    );
    let wandb_dir = dirs[0].parent().unwrap().to_str().unwrap().to_string();
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", &wandb_dir, "-p", "proj"],
    );
    let runs = rep["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{rep}");
    for r in runs {
        assert_eq!(r["outcome"], "synced", "{r}");
        assert_eq!(r["mismatches"], serde_json::json!([]), "{r}");
    }
    assert!(
        server.protocol_errors().is_empty(),
        "{:?}",
        server.protocol_errors()
    );

    let plain = stored(&server, "proj", "plain001");
    assert_eq!(plain.history.len(), 300);
    assert_eq!(steps(&plain), (0..300).collect::<Vec<_>>());
    assert!(plain.complete);
    assert_eq!(plain.exitcode, Some(0));
    assert_eq!(plain.state, "finished");
    // NaN / Infinity travel as wandb writes them
    assert!(
        plain.history.iter().any(|l| l.contains("NaN")),
        "{:?}",
        &plain.history[..3]
    );
    let names: BTreeSet<&str> = plain.files.keys().map(String::as_str).collect();
    for f in [
        "config.yaml",
        "wandb-summary.json",
        "wandb-metadata.json",
        "output.log",
        "requirements.txt",
        "saved.txt",
    ] {
        assert!(names.contains(f), "{f} not uploaded: {names:?}");
    }
    let saved = std::fs::read(dir_of(&dirs, "plain001").join("files/saved.txt")).unwrap();
    assert_eq!(plain.files["saved.txt"], saved);
    assert!(plain.config.get("_wandb").is_some(), "{}", plain.config);
    let summary = parse(plain.summary.as_deref().expect("summary"));
    assert!(summary.pointer(&["_step"]).is_some(), "{summary}");
    assert!(!plain.log.is_empty());
    assert!(!plain.tags.is_empty(), "tags: {:?}", plain.tags);

    let stats = stored(&server, "proj", "stats001");
    assert_eq!(stats.events.len(), 7);
    assert!(stats.events[0].contains("\"system."), "{}", stats.events[0]);

    let crash = stored(&server, "proj", "crash001");
    assert_eq!(
        (crash.history.len(), crash.exitcode, crash.state.as_str()),
        (20, Some(1), "failed")
    );

    // a killed run (cut tail, no exit record) is sent as failed with what it holds
    let killed = stored(&server, "proj", "killed01");
    assert_eq!(killed.exitcode, Some(1));
    assert_eq!(killed.state, "failed");
    let killed_rep = runs
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("killed01"))
        .unwrap();
    assert!(
        killed_rep["notes"].to_string().contains("incomplete tail"),
        "{killed_rep}"
    );

    // status lists them as synced
    let st = sync_status(&env);
    let states: Vec<&str> = st
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["synced"; 4], "{st}");
}

#[test]
fn resync_sends_nothing_and_a_grown_run_only_its_new_rows() {
    let env = Env::new();
    let server = WandbServer::start();
    let dir = copy_runs(env.tmp.path(), &["blocks01"]).remove(0);
    let file = dir.join("run-blocks01.wandb");
    let full = std::fs::read(&file).unwrap();
    // the run as it was while still being written: cut inside a record
    std::fs::write(&file, &full[..200_000]).unwrap();
    let d = dir.to_str().unwrap();
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    let first = rep["runs"][0]["history_sent"].as_u64().unwrap();
    assert!(first > 100 && first < 1500, "{rep}");
    let r = stored(&server, PROJECT, "blocks01");
    assert_eq!(r.history.len() as u64, first);
    assert_eq!(
        r.exitcode,
        Some(1),
        "no exit record yet: sent as failed, as wandb sync does"
    );

    // unchanged: no request at all
    server.reset_counts();
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    assert_eq!(rep["runs"][0]["outcome"], "unchanged", "{rep}");
    assert_eq!(server.count(Kind::Any), 0, "{:?}", server.log());

    // the run finished: only the new rows go out, the files that changed, and the end
    std::fs::write(&file, &full).unwrap();
    let log_before = server.log().len();
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    assert_eq!(
        rep["runs"][0]["history_sent"].as_u64().unwrap(),
        1500 - first,
        "{rep}"
    );
    let r = stored(&server, PROJECT, "blocks01");
    assert_eq!(steps(&r), (0..1500).collect::<Vec<_>>());
    assert_eq!((r.exitcode, r.state.as_str()), (Some(0), "finished"));
    assert_eq!(rep["runs"][0]["mismatches"], serde_json::json!([]), "{rep}");
    // requirements.txt did not change, so it was not uploaded again
    let uploads: Vec<String> = server.log()[log_before..]
        .iter()
        .filter(|l| l.starts_with("upload"))
        .cloned()
        .collect();
    assert!(
        !uploads.iter().any(|l| l.ends_with("requirements.txt")),
        "{uploads:?}"
    );
    assert!(
        uploads.iter().any(|l| l.ends_with("wandb-summary.json")),
        "{uploads:?}"
    );
    assert!(
        server.protocol_errors().is_empty(),
        "{:?}",
        server.protocol_errors()
    );

    // --force looks again but still sends no history twice
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", d, "--force"],
    );
    assert_eq!(rep["runs"][0]["history_sent"], 0, "{rep}");
    assert_eq!(stored(&server, PROJECT, "blocks01").history.len(), 1500);
}

#[test]
fn killed_sync_resumes_without_duplicates() {
    let env = Env::new();
    let server = WandbServer::start();
    let dir = copy_runs(env.tmp.path(), &["blocks01"]).remove(0);
    let d = dir.to_str().unwrap();
    // small requests, and the third one lands but is never answered
    server.stall_after(Kind::FileStream, 2);
    let log = env.path("sync.stderr");
    let mut child = sync_cmd(&env, &server.url, API_KEY)
        .args(["wandb", d, "--request-kib", "32"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), || {
        server.count(Kind::FileStream) >= 3
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = stored(&server, PROJECT, "blocks01");
    assert!(
        partial.history.len() > 100 && partial.history.len() < 1500,
        "{}",
        partial.history.len()
    );
    assert!(!partial.complete);
    let st = sync_status(&env);
    assert_eq!(st[0]["state"], "partial", "{st}");

    server.clear_stall();
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", d, "--request-kib", "32"],
    );
    let r = stored(&server, PROJECT, "blocks01");
    assert_eq!(
        steps(&r),
        (0..1500).collect::<Vec<_>>(),
        "duplicates or gaps after resume"
    );
    assert!(r.complete);
    assert_eq!(rep["runs"][0]["mismatches"], serde_json::json!([]), "{rep}");
    assert!(
        server.protocol_errors().is_empty(),
        "{:?}",
        server.protocol_errors()
    );
}

#[test]
fn server_errors_are_retried_then_reported() {
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(env.tmp.path(), &["plain001", "crash001"]);
    let plain = dir_of(&dirs, "plain001").to_str().unwrap();
    // a few 500s here and there: retried, nothing duplicated
    server.fail_next(Kind::Any, 3, 500);
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", plain]);
    assert_eq!(rep["runs"][0]["outcome"], "synced", "{rep}");
    assert_eq!(
        steps(&stored(&server, PROJECT, "plain001")),
        (0..300).collect::<Vec<_>>()
    );

    // a server that keeps failing: the run fails with the reason, the other run still syncs
    let crash = dir_of(&dirs, "crash001").to_str().unwrap();
    let mut c = sync_cmd(&env, &server.url, API_KEY);
    c.args(["wandb", crash, "--attempts", "2", "--force"]);
    server.fail_next(Kind::FileStream, 1000, 503);
    let o = run(c, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let host = server.url.trim_start_matches("http://");
    assert!(err.contains(host) && err.contains("503"), "{err}");
    server.fail_next(Kind::FileStream, 0, 503);
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", crash]);
    assert_eq!(rep["runs"][0]["mismatches"], serde_json::json!([]), "{rep}");
    assert_eq!(stored(&server, PROJECT, "crash001").history.len(), 20);
}

#[test]
fn errors_name_the_key_source_the_host_and_the_way_out() {
    let env = Env::new();
    let server = WandbServer::start();
    let dir = copy_runs(env.tmp.path(), &["crash001"]).remove(0);
    let d = dir.to_str().unwrap();
    let host = server.url.trim_start_matches("http://").to_string();

    let err = fail(
        sync_cmd(
            &env,
            &server.url,
            "local-wrongwrongwrongwrongwrongwrongwrongwrong",
        ),
        &["wandb", d],
    );
    assert!(
        err.contains(&format!(
            "API key for {host} was rejected (from WANDB_API_KEY)"
        )),
        "{err}"
    );
    assert!(server.runs().is_empty());

    // the key from ~/.netrc, for host:port (what `wandb login --host` writes)
    let netrc = env.path("userhome/.netrc");
    std::fs::create_dir_all(netrc.parent().unwrap()).unwrap();
    std::fs::write(
        &netrc,
        format!("machine {host}\n  login user\n  password {API_KEY}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&netrc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut c = sync_cmd(&env, &server.url, "");
    c.env_remove("WANDB_API_KEY");
    let rep = ok_json(c, &["wandb", d]);
    assert_eq!(rep["runs"][0]["outcome"], "synced", "{rep}");

    // server down
    let port = crate::support::free_port();
    let err = fail(
        sync_cmd(&env, &format!("http://127.0.0.1:{port}"), API_KEY),
        &["wandb", d, "--attempts", "2"],
    );
    assert!(
        err.contains(&format!("cannot reach the wandb server 127.0.0.1:{port}")),
        "{err}"
    );

    // no server configured at all
    let mut c = sync_cmd(&env, "", API_KEY);
    c.env_remove("WANDB_BASE_URL");
    let err = fail(c, &["wandb", d]);
    assert!(
        err.contains("--host") && err.contains("WANDB_BASE_URL"),
        "{err}"
    );

    // wandb/local handing out upload URLs on a host this machine cannot reach
    let bad = WandbServer::start_with(Options {
        upload_base: Some("http://127.0.0.1:9".into()),
        ..Options::default()
    });
    let err = fail(
        sync_cmd(&env, &bad.url, API_KEY),
        &["wandb", d, "--attempts", "2"],
    );
    assert!(err.contains("127.0.0.1:9") && err.contains("HOST"), "{err}");
}

#[test]
fn verify_finds_differences_and_delete_removes_the_run() {
    let env = Env::new();
    let server = WandbServer::start();
    let dir = copy_runs(env.tmp.path(), &["plain001"]).remove(0);
    let d = dir.to_str().unwrap();
    ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", "--verify", d],
    );
    assert_eq!(rep["runs"][0]["mismatches"], serde_json::json!([]), "{rep}");

    // the local copy moves on: verify says exactly what differs
    std::fs::write(dir.join("files/saved.txt"), "changed after the sync\n").unwrap();
    let o = run(
        sync_cmd(&env, &server.url, API_KEY),
        &["--json", "wandb", "--verify", d],
    );
    assert!(!o.status.success());
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = rep["runs"][0]["mismatches"].to_string();
    assert!(m.contains("saved.txt"), "{m}");
    let st = sync_status(&env);
    assert_eq!(st[0]["state"], "mismatch", "{st}");
    // a sync fixes it
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    assert_eq!(rep["runs"][0]["files_uploaded"], 1, "{rep}");

    // delete through the API; the ledger forgets the run
    ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", "--delete", d],
    );
    assert!(
        server.runs().iter().all(|r| r.name != "plain001"),
        "deleted run still there"
    );
    let st = sync_status(&env);
    assert_eq!(st.as_array().map(Vec::len), Some(0), "{st}");
    // the server refuses the deleted id: the error says how to go on
    let err = fail(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    assert!(err.contains("deleted") && err.contains("--id"), "{err}");
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", d, "--id", "plain002"],
    );
    // a copy of the same run elsewhere is refused, not merged into it
    let copy = env
        .tmp
        .path()
        .join("elsewhere/offline-run-20261122_133843-plain001");
    copy_dir(&dir, &copy);
    let err = fail(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", copy.to_str().unwrap(), "--id", "plain002"],
    );
    assert!(
        err.contains("already synced from") && err.contains("--id"),
        "{err}"
    );
    assert_eq!(rep["runs"][0]["mismatches"], serde_json::json!([]), "{rep}");
    assert_eq!(stored(&server, PROJECT, "plain002").history.len(), 300);
}

#[test]
fn many_runs_sync_concurrently_and_one_failure_does_not_stop_the_rest() {
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(
        env.tmp.path(),
        &["plain001", "stats001", "crash001", "large001", "blocks01"],
    );
    // one run that cannot be read
    let broken = env
        .tmp
        .path()
        .join("wandb/offline-run-20261122_000000-broken01");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("run-broken01.wandb"), b"not a wandb file").unwrap();
    let root = dirs[0].parent().unwrap().to_str().unwrap().to_string();
    let o = run(
        sync_cmd(&env, &server.url, API_KEY),
        &["--json", "wandb", &root, "-j", "3"],
    );
    assert!(!o.status.success(), "a failed run makes the exit non-zero");
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs = rep["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    let failed: Vec<_> = runs.iter().filter(|r| r["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{rep}");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("broken01"),
        "{rep}"
    );
    assert_eq!(server.runs().len(), 5);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("broken01"), "{stderr}");
}

/// Two streams hold the same lines as values (key order and number
/// formatting aside), `skip` keys left out; the first difference is shown.
pub(crate) fn same_lines(id: &str, what: &str, ours: &[String], theirs: &[String], skip: &[&str]) {
    let strip = |l: &String| match parse(l) {
        Value::Object(mut m) => {
            for k in skip {
                m.remove(*k);
            }
            Value::Object(m).to_extended_json()
        }
        v => v.to_extended_json(),
    };
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(
            strip(a),
            strip(b),
            "{id}: {what} line {i} differs:\n ours   {a}\n theirs {b}"
        );
    }
    assert_eq!(ours.len(), theirs.len(), "{id}: {what} line counts differ");
}

/// Runs the real `wandb sync` of `dirs` into `project` of the test server,
/// with everything of the client's kept under `tmp`.
pub(crate) fn real_wandb_sync(cli: &Path, url: &str, tmp: &Path, dirs: &[&str], project: &str) {
    let h = tmp.join("wandb-home");
    std::fs::create_dir_all(&h).unwrap();
    let o = Command::new(cli)
        .arg("sync")
        .args(["-p", project, "-e", DEFAULT_ENTITY])
        .args(dirs)
        .env("WANDB_BASE_URL", url)
        .env("WANDB_API_KEY", API_KEY)
        .env("HOME", &h)
        .env("WANDB_CONFIG_DIR", h.join("config"))
        .env("WANDB_CACHE_DIR", h.join("cache"))
        .env("WANDB_DATA_DIR", h.join("data"))
        .env("WANDB_SILENT", "true")
        .env("WANDB_ERROR_REPORTING", "false")
        .current_dir(tmp)
        .output()
        .expect("run wandb sync");
    assert!(
        o.status.success(),
        "wandb sync failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The real `wandb sync` and ours, of the same runs, into two projects of
/// the same server: the same history, system metrics, summary, config,
/// files and final state.
#[test]
fn same_result_as_the_real_wandb_sync() {
    let Some(cli) = wandb::wandb_cli() else {
        assert!(
            std::env::var("TRAINYARD_REQUIRE_WANDB").is_err(),
            "TRAINYARD_REQUIRE_WANDB is set but no wandb client was found: python3 -m venv .venv-wandb && .venv-wandb/bin/pip install wandb==0.31.0"
        );
        eprintln!("wandb not installed; skipping the comparison with the real client (set TRAINYARD_WANDB or create .venv-wandb)");
        return;
    };
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(env.tmp.path(), &["plain001", "stats001", "crash001"]);
    let args: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    let mut a = vec!["wandb", "-p", "ours", "-e", DEFAULT_ENTITY];
    a.extend(&args);
    ok_json(sync_cmd(&env, &server.url, API_KEY), &a);
    real_wandb_sync(&cli, &server.url, env.tmp.path(), &args, "theirs");

    for id in ["plain001", "stats001", "crash001"] {
        let ours = stored(&server, "ours", id);
        let theirs = stored(&server, "theirs", id);
        same_lines(id, "history", &ours.history, &theirs.history, &[]);
        same_lines(id, "system metrics", &ours.events, &theirs.events, &[]);
        let summary = |r: &StoredRun| canon(r.summary.as_deref().unwrap_or("{}"));
        assert_eq!(summary(&ours), summary(&theirs), "{id}: summary differs");
        let user_config = |r: &StoredRun| {
            let mut c = r.config.clone();
            c.as_object_mut().map(|m| m.remove("_wandb"));
            c
        };
        assert_eq!(
            user_config(&ours),
            user_config(&theirs),
            "{id}: config differs"
        );
        let names = |r: &StoredRun| r.files.keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(names(&ours), names(&theirs), "{id}: files differ");
        let meta = |r: &StoredRun| -> serde_json::Value {
            serde_json::from_slice(r.files.get("wandb-metadata.json").expect("metadata"))
                .expect("metadata is JSON")
        };
        assert_eq!(
            meta(&ours),
            meta(&theirs),
            "{id}: wandb-metadata.json differs"
        );
        for f in ["output.log", "requirements.txt", "wandb-summary.json"] {
            if let (Some(a), Some(b)) = (ours.files.get(f), theirs.files.get(f)) {
                if f == "wandb-summary.json" {
                    let p = |b: &[u8]| canon(std::str::from_utf8(b).unwrap());
                    assert_eq!(p(a), p(b), "{id}: {f} differs");
                } else {
                    assert_eq!(a, b, "{id}: {f} differs");
                }
            }
        }
        // console lines: wandb-core stamps them with the time of the sync, we with the record's
        let text = |r: &StoredRun| {
            r.log
                .iter()
                .map(|l| {
                    let l = l.strip_prefix("ERROR ").unwrap_or(l);
                    l.split_once(' ').map_or("", |(_, t)| t).to_string()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(text(&ours), text(&theirs), "{id}: console differs");
        assert_eq!(
            (
                ours.complete,
                ours.exitcode,
                &ours.state,
                &ours.tags,
                &ours.display_name
            ),
            (
                theirs.complete,
                theirs.exitcode,
                &theirs.state,
                &theirs.tags,
                &theirs.display_name
            ),
            "{id}: final state differs"
        );
    }
    assert!(
        server.protocol_errors().is_empty(),
        "{:?}",
        server.protocol_errors()
    );
}
