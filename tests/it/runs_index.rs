//! `trainyard runs …` and `/api/v1/runs` over the real wandb fixtures
//! (`tests/fixtures/wandb`, written by wandb 0.31.0 offline).

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb")
}

fn fixture_dir(id: &str) -> PathBuf {
    fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(id))
        .unwrap_or_else(|| panic!("fixture {id}"))
}

fn outcomes(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap_or("error").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn scan_indexes_every_fixture_once_and_rescans_do_nothing() {
    let env = Env::new();
    // Copy, so the test owns the files' mtimes.
    let root = env.path("proj/wandb");
    for e in fs::read_dir(fixtures()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_dir(&p, &root.join(p.file_name().unwrap()));
        }
    }
    // wandb's latest-run symlink must not index a run twice.
    let first = fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    std::os::unix::fs::symlink(&first, root.join("latest-run")).unwrap();
    let r = env.json(&["runs", "scan", env.path("proj").to_str().unwrap()]);
    assert_eq!(r["found"], 6);
    assert_eq!(r["new"], 6);
    assert!(outcomes(&r).iter().all(|(_, o)| o == "new"), "{r}");
    let again = env.json(&["runs", "scan", root.to_str().unwrap()]);
    assert_eq!(again["unchanged"], 6, "{again}");

    let runs = env.json(&["runs", "ls"]);
    let by_id = |id: &str| -> serde_json::Value {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
            .clone()
    };
    assert_eq!(by_id("plain001")["state"], "finished");
    assert_eq!(by_id("plain001")["history_rows"], 300);
    assert_eq!(by_id("crash001")["state"], "crashed");
    assert_eq!(by_id("crash001")["exit_code"], 1);
    assert_eq!(by_id("blocks01")["history_rows"], 1500);
    // Just written, no exit record: the writer may be alive.
    assert_eq!(by_id("killed01")["state"], "running");
    assert_eq!(by_id("killed01")["history_rows"], 50);
    let crashed = env.json(&["runs", "ls", "--state", "crashed"]);
    assert_eq!(crashed.as_array().unwrap().len(), 1);
    assert!(env
        .fail(&["runs", "ls", "--state", "weird"])
        .contains("unknown state"));

    // Stale: the same file, declared old, is a killed run; an incomplete
    // tail is reported.
    let r = env.json(&[
        "runs",
        "scan",
        "--assume-killed-after",
        "0s",
        root.to_str().unwrap(),
    ]);
    assert_eq!(r["updated"], 1, "only the running run changes: {r}");
    let k = env.json(&["runs", "show", "killed01"]);
    assert_eq!(k["state"], "killed");
    assert!(k["meta"]["incomplete_tail"].as_u64().is_some(), "{k}");

    // show: config, summary, files; history with NaN/Infinity and nested keys.
    let p = env.json(&["runs", "show", "plain001"]);
    assert_eq!(p["name"], "plain run");
    assert!(
        p["keys"].as_array().unwrap().iter().any(|k| k == "grp.sub"),
        "{p}"
    );
    let csv = env.ok(&[
        "runs",
        "history",
        "plain001",
        "--keys",
        "loss,grp.sub",
        "--csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,runtime,loss,grp.sub");
    assert_eq!(lines.len(), 301);
    assert!(
        csv.contains(",NaN,"),
        "NaN kept: {}",
        &csv[..400.min(csv.len())]
    );
    let e = env.fail(&["runs", "history", "plain001", "--keys", "nope"]);
    assert!(e.contains("no metric \"nope\""), "{e}");
    let e = env.fail(&["runs", "show", "zzz"]);
    assert!(e.contains("no run \"zzz\""), "{e}");
    let sys = env.json(&["runs", "history", "stats001", "--keys", "system.cpu"]);
    assert!(
        sys["columns"]["system.cpu"].as_array().unwrap().len() >= 2,
        "{sys}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else if e.file_type().unwrap().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A run whose file grows between scans (cut at arbitrary bytes, as a live
/// writer leaves it) ends with exactly the rows of a run read in one go.
#[test]
fn a_growing_run_is_read_on_from_where_the_last_scan_stopped() {
    let env = Env::new();
    let src = fixture_dir("blocks01");
    let dir = env.path("live/wandb/offline-run-20261122_133854-blocks01");
    copy_dir(&src, &dir);
    let file = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wandb"))
        .unwrap();
    let full = fs::read(&file).unwrap();
    let mut last_rows = 0;
    for cut in [9_000, 40_001, 77_777, 150_000, full.len()] {
        let cut = cut.min(full.len());
        fs::write(&file, &full[..cut]).unwrap();
        let r = env.json(&["runs", "scan", dir.to_str().unwrap()]);
        let run = &r["runs"][0];
        assert_ne!(run["outcome"], "unchanged", "cut {cut}: {r}");
        let rows = env.json(&["runs", "show", dir.to_str().unwrap()])["history_rows"]
            .as_u64()
            .unwrap();
        assert_eq!(
            run["rows_added"].as_u64().unwrap(),
            rows - last_rows,
            "cut {cut}: only new rows are read"
        );
        assert!(rows >= last_rows);
        last_rows = rows;
    }
    assert_eq!(last_rows, 1500);
    let grown = env.ok(&["runs", "history", "blocks01", "--csv"]);
    let show = env.json(&["runs", "show", "blocks01"]);
    assert_eq!(show["state"], "finished");

    let fresh = Env::new();
    fresh.ok(&["runs", "scan", src.to_str().unwrap()]);
    assert_eq!(grown, fresh.ok(&["runs", "history", "blocks01", "--csv"]));
    let f = fresh.json(&["runs", "show", "blocks01"]);
    assert_eq!(show["summary"], f["summary"]);
    assert_eq!(show["config"], f["config"]);

    // A file that shrank (rewritten) is read again from the start.
    fs::write(&file, &full[..40_001]).unwrap();
    env.ok(&["runs", "scan", dir.to_str().unwrap()]);
    let rows = env.json(&["runs", "show", "blocks01"])["history_rows"]
        .as_u64()
        .unwrap();
    assert!(rows < 1500);
    let csv = env.ok(&["runs", "history", "blocks01", "--csv"]);
    assert_eq!(csv.lines().count() as u64, rows + 1);
}

#[test]
fn runs_api_lists_shows_and_charts() {
    let env = Env::new();
    let (_up, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    let (code, body) = http(
        &url,
        "POST",
        "/api/v1/runs/scan",
        Some(&env.token()),
        &serde_json::json!({"paths": [fixtures()]}).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["new"], 6);
    let (code, body) = http(
        &url,
        "POST",
        "/api/v1/runs/scan",
        Some(&env.token()),
        r#"{"paths":["rel"]}"#,
    );
    assert_eq!(code, 400);
    assert!(body.contains("not absolute"), "{body}");
    let (code, body) = http(
        &url,
        "POST",
        "/api/v1/runs/scan",
        Some(&env.token()),
        r#"{"paths":["/nonexistent/x"]}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("/nonexistent/x"), "{body}");

    let health = get_json(&url, "/api/v1/health", None);
    assert!(health["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "runs"));
    let runs = get_json(&url, "/api/v1/runs?project=trainyard-fixtures", None);
    assert_eq!(runs.as_array().unwrap().len(), 6);
    let run = get_json(&url, "/api/v1/runs/plain001", None);
    assert_eq!(run["state"], "finished");
    assert!(run["config"].is_object());
    let h = get_json(&url, "/api/v1/runs/plain001/history?keys=loss,acc", None);
    let steps = h["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 300);
    let loss = h["series"]["loss"].as_array().unwrap();
    assert_eq!(loss.len(), 300);
    assert_eq!(loss[0], 1.0);
    assert!(loss.iter().any(|v| v.is_null()), "NaN is null in charts");
    let (code, body) = http(&url, "GET", "/api/v1/runs/nope", Some(&env.token()), "");
    assert_eq!(code, 404, "{body}");
}
