//! The wandb-compatible test server (`support::wandb`): its protocol rules
//! driven directly over HTTP, and the real `wandb sync` (0.31.0) uploading
//! fixture runs to it completely, when the real client is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::wandb::*;

const UPSERT: &str = "mutation UpsertBucket($name: String, $project: String, $entity: String, $config: JSONString, $displayName: String, $tags: [String!]) { upsertBucket(input: {name: $name, modelName: $project, entityName: $entity, config: $config, displayName: $displayName, tags: $tags}) { bucket { id name } inserted } }";

fn upsert(url: &str, vars: Value) -> (u16, Value) {
    graphql(url, "UpsertBucket", UPSERT, vars)
}

/// POST a file_stream body with the default key.
fn stream(url: &str, path: &str, body: Value) -> (u16, String) {
    let auth = basic_auth(API_KEY);
    request(
        url,
        "POST",
        &format!("/files/{path}/file_stream"),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
        Duration::from_secs(10),
    )
}

fn lines(offset: u64, content: &[&str]) -> Value {
    json!({"offset": offset, "content": content})
}

#[test]
fn graphql_needs_the_api_key() {
    let server = WandbServer::start();
    let body = json!({"query": "query Viewer { viewer { id entity } }", "variables": {}});
    let body = body.to_string();
    for auth in [
        None,
        Some(basic_auth(
            "local-wrong_key_0123456789012345678901234567890",
        )),
    ] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let (status, text) = request(
            &server.url,
            "POST",
            "/graphql",
            &headers,
            body.as_bytes(),
            Duration::from_secs(10),
        );
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("not logged in"), "{text}");
    }
    let (status, v) = graphql(&server.url, "", "query Viewer { viewer { id } }", json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["viewer"]["entity"], DEFAULT_ENTITY);
    // Unknown operations are errors, logged with the query text.
    let (status, v) = graphql(&server.url, "Mystery", "query Mystery { x }", json!({}));
    assert_eq!(status, 200);
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown operation Mystery"));
    assert_eq!(
        server.log(),
        [
            "graphql Viewer",
            "graphql Viewer",
            "graphql Viewer",
            "graphql ? query Mystery { x }"
        ]
    );
    assert_eq!(server.count_op("Viewer"), 3);
    assert_eq!(server.count(Kind::Graphql), 4);
}

#[test]
fn upsert_defaults_merges_and_a_deleted_name_is_a_conflict() {
    let server = WandbServer::start();
    let (status, v) = upsert(
        &server.url,
        json!({"name": "r1", "project": "p", "entity": null,
               "config": "{\"lr\":{\"value\":0.1}}", "displayName": "first", "tags": ["a"]}),
    );
    assert_eq!(status, 200, "{v}");
    let b = &v["data"]["upsertBucket"];
    assert_eq!(b["inserted"], true);
    assert_eq!(b["bucket"]["project"]["entity"]["name"], DEFAULT_ENTITY);
    assert_eq!(b["bucket"]["historyLineCount"], 0);
    // A second upsert with nulls changes only what it carries.
    let (_, v) = upsert(
        &server.url,
        json!({"name": "r1", "project": "p", "entity": "lab", "config": "{\"lr\":{\"value\":0.2}}",
               "displayName": null, "tags": null}),
    );
    assert_eq!(v["data"]["upsertBucket"]["inserted"], false);
    let run = server.run(DEFAULT_ENTITY, "p", "r1").expect("run stored");
    assert_eq!(run.display_name, "first");
    assert_eq!(run.tags, ["a"]);
    assert_eq!(run.config["lr"]["value"], 0.2);
    assert_eq!(run.upserts, 2);
    assert_eq!(run.state, "running");
    // No project, no name: "uncategorized" and a generated id.
    let (_, v) = upsert(&server.url, json!({}));
    let generated = v["data"]["upsertBucket"]["bucket"]["name"]
        .as_str()
        .unwrap();
    assert_eq!(generated.len(), 8);
    assert!(server
        .run(DEFAULT_ENTITY, DEFAULT_PROJECT, generated)
        .is_some());

    // Delete by storage id; the name is tombstoned.
    let delete = "mutation DeleteRun($id: ID!, $deleteArtifacts: Boolean) { deleteRun(input: {id: $id, deleteArtifacts: $deleteArtifacts}) { clientMutationId } }";
    let (_, v) = graphql(
        &server.url,
        "DeleteRun",
        delete,
        json!({"id": run.id, "deleteArtifacts": false}),
    );
    assert_eq!(
        v["data"]["deleteRun"]["clientMutationId"],
        Value::Null,
        "{v}"
    );
    assert!(server.run(DEFAULT_ENTITY, "p", "r1").is_none());
    let (_, v) = graphql(&server.url, "DeleteRun", delete, json!({"id": run.id}));
    assert_eq!(v["errors"][0]["message"], "run not found");
    let (status, v) = upsert(&server.url, json!({"name": "r1", "project": "p"}));
    assert_eq!(status, 409, "{v}");
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("previously created and deleted"));
    // The verification query no longer sees it; the project still exists.
    let (_, v) = graphql(
        &server.url,
        "RunState",
        "query RunState { model { bucket { id } } }",
        json!({"entity": "lab", "project": "p", "name": "r1"}),
    );
    assert_eq!(v["data"]["model"]["name"], "p");
    assert_eq!(v["data"]["model"]["bucket"], Value::Null);
    let (_, v) = graphql(
        &server.url,
        "RunResumeStatus",
        "query RunResumeStatus { model { id } }",
        json!({"entity": "lab", "project": "nope", "name": "r1"}),
    );
    assert_eq!(v["data"]["model"], Value::Null);
}

#[test]
fn file_stream_lines_are_positional_and_gaps_are_protocol_errors() {
    let server = WandbServer::start();
    upsert(
        &server.url,
        json!({"name": "r", "project": "p", "entity": "lab"}),
    );
    let (status, body) = stream(
        &server.url,
        "lab/p/r",
        json!({"files": {"wandb-history.jsonl": lines(0, &["{\"a\":1}", "{\"a\":2}"]),
                         "output.log": lines(0, &["line 1", "progress 1/3"])}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"exitcode": null, "limits": {}})
    );
    // A heartbeat, a rewrite of a console line, a NaN line, the summary.
    assert_eq!(stream(&server.url, "lab/p/r", json!({})).0, 200);
    stream(
        &server.url,
        "lab/p/r",
        json!({"files": {"output.log": lines(1, &["progress 3/3", "done"]),
                         "wandb-history.jsonl": lines(2, &["{\"a\":NaN}"]),
                         "wandb-summary.json": lines(0, &["{\"a\":NaN}"])}}),
    );
    let run = server.run("lab", "p", "r").unwrap();
    assert_eq!(run.history, ["{\"a\":1}", "{\"a\":2}", "{\"a\":NaN}"]);
    assert_eq!(run.log, ["line 1", "progress 3/3", "done"]);
    assert_eq!(run.summary.as_deref(), Some("{\"a\":NaN}"));
    assert!(run.protocol_errors.is_empty(), "{:?}", run.protocol_errors);

    // A gap: stored anyway, reported.
    stream(
        &server.url,
        "lab/p/r",
        json!({"files": {"wandb-history.jsonl": lines(5, &["{\"a\":6}"])},
               "uploaded": ["config.yaml"], "complete": true, "exitcode": 3}),
    );
    let run = server.run("lab", "p", "r").unwrap();
    assert_eq!(run.history.len(), 6);
    assert_eq!(run.history[3], "");
    assert_eq!(run.protocol_errors.len(), 1, "{:?}", run.protocol_errors);
    assert!(run.protocol_errors[0].contains("gap"));
    assert_eq!(run.uploaded, ["config.yaml"]);
    assert!(run.complete);
    assert_eq!(run.exitcode, Some(3));
    assert_eq!(run.state, "failed");

    // Unknown runs are 404; no key is 401.
    assert_eq!(stream(&server.url, "lab/p/nope", json!({})).0, 404);
    let (status, _) = request(
        &server.url,
        "POST",
        "/files/lab/p/r/file_stream",
        &[],
        b"{}",
        Duration::from_secs(10),
    );
    assert_eq!(status, 401);
    assert_eq!(server.count(Kind::FileStream), 6);
    assert_eq!(server.log()[1], "file_stream lab/p/r");
}

#[test]
fn uploads_need_an_issued_url_and_its_headers_and_no_credentials() {
    let server = WandbServer::start();
    upsert(
        &server.url,
        json!({"name": "r", "project": "p", "entity": "lab"}),
    );
    let (_, v) = graphql(
        &server.url,
        "CreateRunFiles",
        "mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, $files: [String!]!) { createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) { runID uploadHeaders files { name uploadUrl } } }",
        json!({"entity": "lab", "project": "p", "run": "r", "files": ["config.yaml", "sub dir/a b.txt"]}),
    );
    let c = &v["data"]["createRunFiles"];
    assert_eq!(c["runID"], server.run("lab", "p", "r").unwrap().id);
    assert_eq!(c["uploadHeaders"], json!(["X-Trainyard-Upload: 1"]));
    let url_of = |i: usize| {
        let u = c["files"][i]["uploadUrl"].as_str().unwrap();
        assert!(
            u.starts_with(&format!("{}/local-files/lab/p/r/", server.url)),
            "{u}"
        );
        assert!(u.contains("X-Amz-Signature="), "{u}");
        u.strip_prefix(&server.url).unwrap().to_string()
    };
    let (config_url, spaced_url) = (url_of(0), url_of(1));
    let good = [UPLOAD_HEADER];
    let put = |target: &str, headers: &[(&str, &str)], body: &[u8]| {
        request(
            &server.url,
            "PUT",
            target,
            headers,
            body,
            Duration::from_secs(10),
        )
    };

    let auth = basic_auth(API_KEY);
    let (status, body) = put(
        &config_url,
        &[UPLOAD_HEADER, ("Authorization", &auth)],
        b"x",
    );
    assert_eq!(status, 403);
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert_eq!(put(&config_url, &[], b"x").0, 403);
    let forged = config_url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(put(&forged, &good, b"x").0, 403);
    let run = server.run("lab", "p", "r").unwrap();
    assert!(run.files.is_empty());
    assert_eq!(run.protocol_errors.len(), 3, "{:?}", run.protocol_errors);
    assert!(run.protocol_errors[0].contains("Authorization"));
    assert!(run.protocol_errors[1].contains("uploadHeaders"));
    assert!(run.protocol_errors[2].contains("never handed out"));

    assert_eq!(put(&config_url, &good, b"lr: 1\n").0, 200);
    assert_eq!(put(&spaced_url, &good, b"spaces").0, 200);
    let run = server.run("lab", "p", "r").unwrap();
    assert_eq!(run.files["config.yaml"], b"lr: 1\n");
    assert_eq!(run.files["sub dir/a b.txt"], b"spaces");
    assert_eq!(server.count(Kind::Upload), 5);
    assert!(server
        .log()
        .contains(&"upload lab/p/r/sub dir/a b.txt".to_string()));

    // The verification query lists the files with W&B's base64 MD5.
    let (_, v) = graphql(
        &server.url,
        "RunState",
        "query RunState { model { bucket { files { edges { node { name md5 } } } } } }",
        json!({"entity": "lab", "project": "p", "name": "r"}),
    );
    let files = &v["data"]["model"]["bucket"]["files"]["edges"];
    assert_eq!(files[0]["node"]["name"], "config.yaml");
    assert_eq!(files[0]["node"]["sizeBytes"], 6);
    // md5("spaces") = 717e5e6763efa99e70c9069f3e621fcb
    assert_eq!(files[1]["node"]["md5"], "cX5eZ2PvqZ5wyQafPmIfyw==");
    assert_eq!(v["data"]["model"]["bucket"]["state"], "running");

    // wandb/local's HOST misconfiguration: upload URLs nobody answers.
    let misconfigured = WandbServer::start_with(Options {
        upload_base: Some("http://127.0.0.1:9".into()),
        ..Options::default()
    });
    upsert(&misconfigured.url, json!({"name": "r", "project": "p"}));
    let (_, v) = graphql(
        &misconfigured.url,
        "CreateRunFiles",
        "mutation CreateRunFiles { createRunFiles { files { uploadUrl } } }",
        json!({"entity": "lab", "project": "p", "run": "r", "files": ["a"]}),
    );
    let u = v["data"]["createRunFiles"]["files"][0]["uploadUrl"]
        .as_str()
        .unwrap();
    assert!(
        u.starts_with("http://127.0.0.1:9/local-files/lab/p/r/a?"),
        "{u}"
    );
}

#[test]
fn injected_failures_are_not_applied_and_stalled_requests_are() {
    let server = WandbServer::start();
    server.fail_next(Kind::Graphql, 2, 500);
    for _ in 0..2 {
        let (status, _) = upsert(&server.url, json!({"name": "r", "project": "p"}));
        assert_eq!(status, 500);
    }
    assert!(server.runs().is_empty());
    assert_eq!(
        upsert(&server.url, json!({"name": "r", "project": "p"})).0,
        200
    );

    server.stall_after(Kind::FileStream, 1);
    let hb = |timeout| {
        let auth = basic_auth(API_KEY);
        let body = json!({"files": {"output.log": lines(0, &["x"])}}).to_string();
        request(
            &server.url,
            "POST",
            "/files/lab/p/r/file_stream",
            &[("Authorization", auth.as_str())],
            body.as_bytes(),
            timeout,
        )
        .0
    };
    assert_eq!(hb(Duration::from_secs(10)), 200);
    assert_eq!(
        hb(Duration::from_millis(500)),
        0,
        "a stalled request is never answered"
    );
    assert_eq!(server.count(Kind::FileStream), 2);
    server.clear_stall();
    assert_eq!(hb(Duration::from_secs(10)), 200);
    assert_eq!(server.count(Kind::Any), 6);
    server.reset_counts();
    assert_eq!(server.count(Kind::Any), 0);
}

/// Fixture facts from `tests/fixtures/wandb/expected.json`.
fn expected(id: &str) -> Value {
    let p = fixtures().join("expected.json");
    let all: Value = serde_json::from_slice(&std::fs::read(&p).expect("expected.json"))
        .expect("expected.json is JSON");
    all[id].clone()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy fixture file");
        }
    }
}

/// The real `wandb sync` (0.31.0, Go wandb-core) uploads fixture runs to
/// the test server completely: every history row, summary, config, the
/// generated files, the final state, and nothing the server does not know.
#[test]
fn real_wandb_sync_lands_runs_completely() {
    let Some(cli) = wandb_cli() else {
        if std::env::var("TRAINYARD_REQUIRE_WANDB").as_deref() == Ok("1") {
            panic!(
                "TRAINYARD_REQUIRE_WANDB=1 but the wandb CLI is not installed: run `python3 -m venv \
                 .venv-wandb && .venv-wandb/bin/pip install wandb==0.31.0` in the repository, or \
                 set TRAINYARD_WANDB to a wandb executable"
            );
        }
        println!("wandb not installed; skipping the real-client check (set TRAINYARD_WANDB or create .venv-wandb)");
        return;
    };
    let server = WandbServer::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let runs = [
        (
            "plain001",
            "finished",
            0,
            &["lr", "epochs", "layers", "use_bn", "optimizer", "extra"][..],
        ),
        ("crash001", "failed", 1, &["seed"][..]),
    ];
    let mut dirs = Vec::new();
    for (id, ..) in runs {
        let name = expected(id)["dir"].as_str().expect("dir").to_string();
        let dir = tmp.path().join("runs").join(&name);
        copy_dir(&fixtures().join(&name), &dir);
        dirs.push(dir);
    }
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir home");
    let mut cmd = Command::new(&cli);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WANDB_") {
            cmd.env_remove(&k);
        }
    }
    cmd.arg("sync")
        .args(&dirs)
        .args(["-p", "synced", "-e", "lab"])
        .env("WANDB_BASE_URL", &server.url)
        .env("WANDB_API_KEY", API_KEY)
        .env("HOME", &home)
        .env("NETRC", home.join(".netrc"))
        .env("WANDB_CONFIG_DIR", home.join("config"))
        .env("WANDB_CACHE_DIR", home.join("cache"))
        .env("WANDB_DATA_DIR", home.join("data"))
        .env("WANDB_SILENT", "true")
        .env("WANDB_ERROR_REPORTING", "false")
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn wandb sync");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(240));
        // Still running after 4 minutes: kill it so the test reports why.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("wait for wandb sync");
    drop(watchdog);
    let elapsed = started.elapsed();
    let report = format!(
        "wandb sync: {}\nstdout:\n{}\nstderr:\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log().join("\n")
    );
    println!(
        "wandb sync of {} runs took {elapsed:.1?}\n{report}",
        runs.len()
    );
    // `wandb sync` exits 0 even when a run failed to sync (e.g. a refused
    // key); the `.synced` marker is its own record of success.
    assert!(out.status.success(), "{report}");
    for (dir, (id, ..)) in dirs.iter().zip(runs) {
        let marker = dir.join(format!("run-{id}.wandb.synced"));
        assert!(
            marker.exists(),
            "{id}: wandb sync wrote no .synced marker\n{report}"
        );
    }

    let unknown: Vec<String> = server
        .log()
        .into_iter()
        .filter(|l| l.contains(" ? ") || l.starts_with("? "))
        .collect();
    assert!(
        unknown.is_empty(),
        "requests the server does not know: {unknown:?}\n{report}"
    );
    assert!(
        server.protocol_errors().is_empty(),
        "{:?}",
        server.protocol_errors()
    );
    for (id, state, exitcode, config_keys) in runs {
        let run = server
            .run("lab", "synced", id)
            .unwrap_or_else(|| panic!("run {id} not on the server\n{report}"));
        let facts = expected(id);
        assert!(
            run.protocol_errors.is_empty(),
            "{id}: {:?}",
            run.protocol_errors
        );
        assert_eq!(
            run.history.len() as u64,
            facts["history_rows"].as_u64().unwrap(),
            "{id}"
        );
        assert!(
            run.history.iter().all(|l| l.starts_with('{')),
            "{id}: {:?}",
            run.history
        );
        let summary = run
            .summary
            .as_deref()
            .unwrap_or_else(|| panic!("{id}: no summary"));
        assert!(summary.contains("\"_step\""), "{id}: {summary}");
        for k in config_keys {
            assert!(
                run.config.get(k).is_some(),
                "{id}: config lacks {k}: {}",
                run.config
            );
        }
        for f in [
            "config.yaml",
            "wandb-summary.json",
            "wandb-metadata.json",
            "output.log",
        ] {
            assert!(
                run.files.contains_key(f),
                "{id}: {f} not uploaded: {:?}",
                run.files.keys()
            );
            assert!(
                run.uploaded.iter().any(|u| u == f),
                "{id}: {f} not in `uploaded`"
            );
        }
        assert!(run.complete, "{id}");
        assert_eq!(run.exitcode, Some(exitcode), "{id}");
        assert_eq!(run.state, state, "{id}");
    }
    let plain = server.run("lab", "synced", "plain001").unwrap();
    assert_eq!(plain.display_name, "plain run");
    assert_eq!(plain.tags, ["fixture", "plain"]);
    assert_eq!(plain.notes, "a plain run");
    assert_eq!(plain.group, "fixtures");
    assert_eq!(plain.job_type, "train");
    assert!(plain.files.contains_key("saved.txt"));
    assert!(plain.files.contains_key("requirements.txt"));
}
