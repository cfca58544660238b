//! The field-test findings about `trainyard sync wandb`, each against the
//! in-test W&B server on 127.0.0.1 and, where it says so, the real `wandb
//! sync` 0.31: resumed runs (two offline directories of one id) merged into
//! one server run without overwriting a row, under concurrency too;
//! `wandb-metadata.json` as the client builds it from runs made with its
//! default settings; tags set on the server kept; artifacts reported.
//!
//! Fixtures: `tests/fixtures/wandb-sync` (`scripts/make-wandb-sync-fixtures`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use trainyard::wandb::Value;

use crate::support::wandb::{self, graphql, StoredRun, WandbServer, API_KEY, DEFAULT_ENTITY};
use crate::support::Env;
use crate::wandb_sync::{
    canon, copy_dir, ok_json, parse, real_wandb_sync, run, same_lines, steps, stored, sync_cmd,
    PROJECT,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb-sync")
}

/// Copies the fixture run directories whose names end in one of `ids`
/// under `dest/wandb/`, sorted by name (start time).
fn copy_runs(dest: &Path, ids: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && ids.iter().any(|id| name.ends_with(id)) {
            let to = dest.join("wandb").join(&name);
            copy_dir(&e.path(), &to);
            out.push(to);
        }
    }
    out.sort();
    out
}

/// The real client, or `None` (the test then checks only our side) unless
/// TRAINYARD_REQUIRE_WANDB is set.
fn real_client() -> Option<PathBuf> {
    let cli = wandb::wandb_cli();
    if cli.is_none() {
        assert!(
            std::env::var("TRAINYARD_REQUIRE_WANDB").is_err(),
            "TRAINYARD_REQUIRE_WANDB is set but no wandb client was found: python3 -m venv .venv-wandb && .venv-wandb/bin/pip install wandb==0.31.0"
        );
        eprintln!("wandb not installed; comparing with the real client skipped");
    }
    cli
}

/// `part` of each history line (1 or 2: which fragment logged it).
fn parts(r: &StoredRun) -> Vec<i64> {
    r.history
        .iter()
        .map(|l| {
            parse(l)
                .pointer(&["part"])
                .and_then(Value::as_i64)
                .unwrap_or(0)
        })
        .collect()
}

/// What a merged resumed run must look like: 50 rows of the first fragment
/// at steps 0–49, then 30 of the second at 50–79, nothing overwritten.
fn assert_merged(r: &StoredRun) {
    assert_eq!(steps(r), (0..80).collect::<Vec<_>>(), "steps");
    let want: Vec<i64> = std::iter::repeat_n(1, 50)
        .chain(std::iter::repeat_n(2, 30))
        .collect();
    assert_eq!(parts(r), want, "rows of the first fragment overwritten");
    assert!(
        r.protocol_errors.is_empty(),
        "protocol errors: {:?}",
        r.protocol_errors
    );
    assert_eq!((r.complete, r.exitcode), (true, Some(0)));
    // the config keeps what only the first fragment set
    assert_eq!(r.config["first_only"]["value"], 1, "{}", r.config);
    assert_eq!(r.config["part"]["value"], 2, "{}", r.config);
    assert_eq!(r.log.len(), 2, "{:?}", r.log);
}

#[test]
fn resumed_fragments_merge_into_one_run_like_the_real_client() {
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(env.tmp.path(), &["resume01"]);
    assert_eq!(dirs.len(), 2);
    // both at once: the parent directory, several runs in parallel
    let root = dirs[0].parent().unwrap().to_str().unwrap().to_string();
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &[
            "wandb",
            &root,
            "-p",
            "ours",
            "-e",
            DEFAULT_ENTITY,
            "-j",
            "4",
        ],
    );
    for r in rep["runs"].as_array().unwrap() {
        assert_eq!(r["outcome"], "synced", "{rep}");
        assert_eq!(r["mismatches"], json!([]), "{rep}");
    }
    let ours = stored(&server, "ours", "resume01");
    assert_merged(&ours);

    // again: nothing to send; forced: still nothing sent twice, rows unchanged
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", &root, "-p", "ours", "-e", DEFAULT_ENTITY],
    );
    assert!(
        rep["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "unchanged"),
        "{rep}"
    );
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &[
            "wandb",
            &root,
            "-p",
            "ours",
            "-e",
            DEFAULT_ENTITY,
            "--force",
        ],
    );
    for r in rep["runs"].as_array().unwrap() {
        assert_eq!(r["history_sent"], 0, "{rep}");
        assert_eq!(r["mismatches"], json!([]), "{rep}");
    }
    assert_merged(&stored(&server, "ours", "resume01"));

    let Some(cli) = real_client() else { return };
    let args: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    real_wandb_sync(&cli, &server.url, env.tmp.path(), &args, "theirs");
    let theirs = stored(&server, "theirs", "resume01");
    assert_merged(&theirs);
    same_lines("resume01", "history", &ours.history, &theirs.history, &[]);
    same_lines(
        "resume01",
        "system metrics",
        &ours.events,
        &theirs.events,
        &[],
    );
    let summary = |r: &StoredRun| canon(r.summary.as_deref().unwrap_or("{}"));
    assert_eq!(summary(&ours), summary(&theirs), "summary differs");
    let user_config = |r: &StoredRun| {
        let mut c = r.config.clone();
        c.as_object_mut().map(|m| m.remove("_wandb"));
        c
    };
    assert_eq!(user_config(&ours), user_config(&theirs), "config differs");
}

/// Fragments whose rows carry explicit steps (`wandb.log(..., step=i)`):
/// overlapping steps (a restart from an older checkpoint) move up just past
/// the earlier fragment, a gap is kept — as the real client does.
#[test]
fn explicit_steps_of_resumed_fragments_are_shifted_as_the_client_does() {
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(env.tmp.path(), &["resume02", "resume03"]);
    assert_eq!(dirs.len(), 4);
    let args: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    let mut a = vec!["wandb", "-p", "ours", "-e", DEFAULT_ENTITY];
    a.extend(&args);
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &a);
    for r in rep["runs"].as_array().unwrap() {
        assert_eq!(r["mismatches"], json!([]), "{rep}");
    }
    let overlap = stored(&server, "ours", "resume02");
    assert_eq!(steps(&overlap), (0..80).collect::<Vec<_>>());
    let gap = stored(&server, "ours", "resume03");
    assert_eq!(
        steps(&gap),
        (0..50).chain(60..90).collect::<Vec<_>>(),
        "a gap in the steps is the run's own"
    );
    let Some(cli) = real_client() else { return };
    real_wandb_sync(&cli, &server.url, env.tmp.path(), &args, "theirs");
    for id in ["resume02", "resume03"] {
        let ours = stored(&server, "ours", id);
        let theirs = stored(&server, "theirs", id);
        same_lines(id, "history", &ours.history, &theirs.history, &[]);
        assert_eq!(
            canon(ours.summary.as_deref().unwrap_or("{}")),
            canon(theirs.summary.as_deref().unwrap_or("{}")),
            "{id}: summary differs"
        );
    }
}

#[test]
fn fragments_synced_one_by_one_or_by_two_processes_at_once_are_merged() {
    // one after the other, in two commands: the second continues the first
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(env.tmp.path(), &["resume01"]);
    for d in &dirs {
        let rep = ok_json(
            sync_cmd(&env, &server.url, API_KEY),
            &["wandb", d.to_str().unwrap()],
        );
        assert_eq!(rep["runs"][0]["mismatches"], json!([]), "{rep}");
    }
    assert_merged(&stored(&server, PROJECT, "resume01"));
    // verifying the first fragment later: its rows are there (the rest of
    // the run is the second fragment's)
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", "--verify", dirs[0].to_str().unwrap()],
    );
    assert_eq!(rep["runs"][0]["mismatches"], json!([]), "{rep}");

    // two processes at once, one per fragment, several times over: the
    // server never loses a row (which fragment goes first is up to the race)
    for round in 0..3 {
        let env = Env::new();
        let server = WandbServer::start();
        let dirs = copy_runs(env.tmp.path(), &["resume01"]);
        let children: Vec<_> = dirs
            .iter()
            .map(|d| {
                sync_cmd(&env, &server.url, API_KEY)
                    .args(["--json", "wandb", d.to_str().unwrap()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        let r = stored(&server, PROJECT, "resume01");
        assert_eq!(steps(&r), (0..80).collect::<Vec<_>>(), "round {round}");
        let mut p = parts(&r);
        let first = p[0];
        let n_first = if first == 1 { 50 } else { 30 };
        assert!(
            p[..n_first].iter().all(|x| *x == first),
            "round {round}: {p:?}"
        );
        p.sort();
        assert_eq!(
            p,
            std::iter::repeat_n(1, 50)
                .chain(std::iter::repeat_n(2, 30))
                .collect::<Vec<_>>(),
            "round {round}: rows lost"
        );
        assert!(r.protocol_errors.is_empty(), "{:?}", r.protocol_errors);
    }
}

#[test]
fn metadata_and_run_fields_match_the_real_client_for_default_settings() {
    let env = Env::new();
    let server = WandbServer::start();
    let dirs = copy_runs(env.tmp.path(), &["meta0001", "gpu00001"]);
    assert_eq!(dirs.len(), 2);
    let args: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    let mut a = vec!["wandb", "-p", "ours", "-e", DEFAULT_ENTITY];
    a.extend(&args);
    let rep = ok_json(sync_cmd(&env, &server.url, API_KEY), &a);
    for r in rep["runs"].as_array().unwrap() {
        assert_eq!(r["mismatches"], json!([]), "{rep}");
    }
    let meta = |r: &StoredRun| -> serde_json::Value {
        serde_json::from_slice(
            r.files
                .get("wandb-metadata.json")
                .expect("metadata uploaded"),
        )
        .expect("metadata is JSON")
    };
    let m = meta(&stored(&server, "ours", "meta0001"));
    for k in [
        "codePath",
        "codePathLocal",
        "cpu",
        "disk",
        "memory",
        "root",
        "writerId",
        "git",
        "startedAt",
    ] {
        assert!(m.get(k).is_some(), "no {k} in {m}");
    }
    // the exact start time, to the last digit of the record
    assert_eq!(m["startedAt"], "2026-12-06T18:51:05.206441Z", "{m}");
    let g = meta(&stored(&server, "ours", "gpu00001"));
    assert_eq!(g["gpu_nvidia"][1]["memoryTotal"], "85520809984", "{g}");
    assert_eq!(g["gpu_count"], 2, "{g}");

    let Some(cli) = real_client() else { return };
    real_wandb_sync(&cli, &server.url, env.tmp.path(), &args, "theirs");
    for id in ["meta0001", "gpu00001"] {
        let ours = stored(&server, "ours", id);
        let theirs = stored(&server, "theirs", id);
        assert_eq!(
            meta(&ours),
            meta(&theirs),
            "{id}: wandb-metadata.json differs"
        );
        same_lines(id, "history", &ours.history, &theirs.history, &[]);
        same_lines(id, "system metrics", &ours.events, &theirs.events, &[]);
        assert_eq!(
            canon(ours.summary.as_deref().unwrap_or("{}")),
            canon(theirs.summary.as_deref().unwrap_or("{}")),
            "{id}: summary differs"
        );
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
        assert_eq!(
            ours.files.get("code/train.py"),
            theirs.files.get("code/train.py"),
            "{id}: saved code differs"
        );
        assert_eq!(
            (&ours.tags, &ours.display_name, &ours.host, ours.exitcode),
            (
                &theirs.tags,
                &theirs.display_name,
                &theirs.host,
                theirs.exitcode
            ),
            "{id}: run fields differ"
        );
    }
}

#[test]
fn a_resync_keeps_tags_set_on_the_server() {
    let env = Env::new();
    let server = WandbServer::start();
    let dir = copy_runs(env.tmp.path(), &["meta0001"]).remove(0);
    let d = dir.to_str().unwrap();
    ok_json(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    // someone tags the run in the W&B UI
    let (status, body) = graphql(
        &server.url,
        "UpsertBucket",
        "mutation UpsertBucket($name: String, $project: String, $entity: String, $tags: [String!]) { upsertBucket(input: {name: $name, modelName: $project, entityName: $entity, tags: $tags}) { bucket { id } } }",
        json!({"name": "meta0001", "project": PROJECT, "entity": DEFAULT_ENTITY, "tags": ["best", "paper"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored(&server, PROJECT, "meta0001").tags, ["best", "paper"]);
    let rep = ok_json(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", d, "--force"],
    );
    assert_eq!(rep["runs"][0]["outcome"], "synced", "{rep}");
    assert_eq!(
        stored(&server, PROJECT, "meta0001").tags,
        ["best", "paper"],
        "the re-sync wiped the server's tags"
    );
}

#[test]
fn artifacts_not_synced_are_named_per_run_and_fail_the_sync() {
    let env = Env::new();
    let server = WandbServer::start();
    let dir = copy_runs(env.tmp.path(), &["table001"]).remove(0);
    let d = dir.to_str().unwrap();
    let o = run(
        sync_cmd(&env, &server.url, API_KEY),
        &["--json", "wandb", d],
    );
    assert!(
        !o.status.success(),
        "a run with unsynced artifacts must not exit 0"
    );
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &rep["runs"][0];
    let names: Vec<&str> = r["artifacts_not_synced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        names.iter().any(|a| a.contains("run_table"))
            && names.iter().any(|a| a.contains("model-weights")),
        "{rep}"
    );
    assert!(r["mismatches"].to_string().contains("not synced"), "{rep}");
    // everything else went up
    let s = stored(&server, PROJECT, "table001");
    assert_eq!((s.history.len(), s.complete), (4, true));

    // the text report names them too, and an unchanged re-sync still says so
    let o = run(sync_cmd(&env, &server.url, API_KEY), &["wandb", d]);
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("unchanged"), "{text}");
    let o = run(
        sync_cmd(&env, &server.url, API_KEY),
        &["wandb", d, "--force"],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("not synced: artifact") && text.contains("model-weights"),
        "{text}"
    );
    let st = crate::wandb_sync::sync_status(&env);
    assert_eq!(st[0]["state"], "mismatch", "{st}");
}

#[test]
fn runs_cli_expands_globs_lists_keys_and_filters() {
    let env = Env::new();
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb");
    env.json(&[
        "runs",
        "scan",
        old.to_str().unwrap(),
        fixtures().to_str().unwrap(),
    ]);

    // globs, as the help says: every system metric of the run
    let h = env.json(&["runs", "history", "meta0001", "--keys", "system.*"]);
    let cols: Vec<&String> = h["columns"].as_object().unwrap().keys().collect();
    assert!(cols.len() > 5, "{cols:?}");
    assert!(cols.iter().all(|c| c.starts_with("system.")), "{cols:?}");
    assert!(cols.iter().any(|c| *c == "system.cpu"), "{cols:?}");
    let h = env.json(&["runs", "history", "meta0001", "--keys", "?"]);
    let cols: BTreeSet<&String> = h["columns"].as_object().unwrap().keys().collect();
    assert_eq!(
        cols,
        BTreeSet::from([&"x".to_string(), &"y".to_string()]),
        "{h}"
    );
    let err = env.fail(&["runs", "history", "meta0001", "--keys", "nothing*"]);
    assert!(err.contains("no metric"), "{err}");

    // show lists the metric keys
    let text = env.ok(&["runs", "show", "meta0001"]);
    assert!(text.contains("metrics   x, y"), "{text}");
    assert!(text.contains("system.cpu"), "{text}");
    let text = env.ok(&["runs", "show", "gpu00001"]);
    assert!(
        text.contains("gpu       2 x NVIDIA H100 80GB HBM3"),
        "{text}"
    );

    // ls: metadata in --json, filters by tag, time and host
    let ids = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = env.json(&["runs", "ls"]);
    let gpu = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "gpu00001")
        .unwrap();
    assert_eq!(
        (&gpu["gpu"], &gpu["gpu_count"], &gpu["host"]),
        (
            &json!("NVIDIA H100 80GB HBM3"),
            &json!(2),
            &json!("fixture-host")
        ),
        "{gpu}"
    );
    assert_eq!(
        ids(&env.json(&["runs", "ls", "--tag", "plain"])),
        BTreeSet::from(["plain001".to_string()])
    );
    assert_eq!(
        ids(&env.json(&["runs", "ls", "--tag", "fixture", "--tag", "plain"])),
        BTreeSet::from(["plain001".to_string()])
    );
    assert!(ids(&env.json(&["runs", "ls", "--tag", "plain", "--tag", "nope"])).is_empty());
    let new = ids(&env.json(&["runs", "ls", "--since", "2026-12-01"]));
    assert_eq!(
        new,
        ["gpu00001", "meta0001", "resume01", "resume02", "resume03", "table001"]
            .map(String::from)
            .into_iter()
            .collect(),
    );
    let before = ids(&env.json(&["runs", "ls", "--until", "2026-12-01"]));
    assert_eq!(before.len(), 6, "{before:?}");
    assert!(ids(&env.json(&[
        "runs",
        "ls",
        "--since",
        "2026-11-22T13:38:50Z",
        "--until",
        "2026-11-22T13:38:52Z"
    ]))
    .contains("killed01"));
    assert_eq!(
        ids(&env.json(&["runs", "ls", "--host", "fixture-host"])),
        ids(&all)
    );
    assert!(ids(&env.json(&["runs", "ls", "--host", "elsewhere"])).is_empty());
    let err = env.fail(&["runs", "ls", "--since", "last tuesday"]);
    assert!(err.contains("not a date"), "{err}");
}
