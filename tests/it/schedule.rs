//! Schedules end to end: the real `trainyard` binary, a real daemon with
//! fake GPUs, the CLI and the HTTP API. Fire times themselves (DST,
//! catch-up, overlap, crash safety) are unit tests on an injected clock in
//! `src/schedule/tests.rs`; here a schedule is fired with `schedule run`
//! or by a new dataset version, so no test waits for a cron tick.

use std::time::Duration;

use crate::support::jobs::{job, logs, submit, wait_state};
use crate::support::{get_json, http, wait_for, write, Env};

fn sched(env: &Env, url: &str, args: &[&str]) -> String {
    let mut a = vec!["schedule"];
    a.extend_from_slice(args);
    a.extend(["--server", url]);
    env.ok(&a)
}

fn sched_json(env: &Env, url: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["schedule"];
    a.extend_from_slice(args);
    a.extend(["--server", url]);
    env.json(&a)
}

fn sched_fail(env: &Env, url: &str, args: &[&str]) -> String {
    let mut a = vec!["schedule"];
    a.extend_from_slice(args);
    a.extend(["--server", url]);
    env.fail(&a)
}

/// The jobs tagged `schedule:NAME`, oldest first.
fn jobs_of(url: &str, name: &str) -> Vec<serde_json::Value> {
    let mut v = get_json(url, &format!("/api/v1/jobs?tag=schedule:{name}"), None)
        .as_array()
        .unwrap()
        .clone();
    v.sort_by_key(|j| j["id"].as_u64());
    v
}

#[test]
fn add_ls_show_pause_resume_run_and_rm() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    let out = sched(
        &env,
        &url,
        &[
            "add",
            "nightly",
            "--cron",
            "0 3 * * *",
            "--tz",
            "Asia/Seoul",
            "--gpus",
            "1",
            "--env",
            "MODE=eval",
            "--",
            "sh",
            "-c",
            "echo run=$TRAINYARD_SCHEDULE mode=$MODE",
        ],
    );
    assert!(out.contains("added schedule nightly (next fire "), "{out}");
    assert!(out.contains("T03:00:00+09:00"), "{out}");

    let ls = sched_json(&env, &url, &["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["name"], "nightly");
    assert_eq!(ls[0]["overlap"], "skip");
    assert_eq!(ls[0]["catch_up"], "skip");
    assert!(ls[0]["next_fire"]
        .as_str()
        .unwrap()
        .ends_with("T03:00:00+09:00"));

    let show = sched_json(&env, &url, &["show", "nightly"]);
    let next: Vec<i64> = show["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["at_ns"].as_i64().unwrap())
        .collect();
    assert_eq!(next.len(), 5);
    assert!(next
        .windows(2)
        .all(|w| w[1] - w[0] == 24 * 3600 * 1_000_000_000));
    assert!(show["runs"].as_array().unwrap().is_empty());

    // Fire now: the job runs with the schedule's name in its environment.
    let run = sched_json(&env, &url, &["run", "nightly"]);
    assert_eq!(run["occurrence"]["outcome"], "fired");
    let id = run["occurrence"]["jobs"][0].as_u64().unwrap();
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(20));
    assert!(j["spec"]["tags"]
        .as_array()
        .unwrap()
        .contains(&"schedule:nightly".into()));
    assert_eq!(logs(&env, &url, id).trim(), "run=nightly mode=eval");
    let show = sched_json(&env, &url, &["show", "nightly"]);
    assert_eq!(show["runs"][0]["outcome"], "fired");
    assert_eq!(show["runs"][0]["state"], "succeeded");
    let table = sched(&env, &url, &["ls"]);
    assert!(table.contains(&format!("job {id} succeeded")), "{table}");
    let text = sched(&env, &url, &["show", "nightly"]);
    assert!(
        text.contains("next fire times:") && text.contains("last runs:"),
        "{text}"
    );

    // Pause: no next fire time; resume: one again.
    let p = sched_json(&env, &url, &["pause", "nightly"]);
    assert_eq!(p["paused"], true);
    assert!(p["next_fire"].is_null());
    let table = sched(&env, &url, &["ls"]);
    assert!(table.contains("paused"), "{table}");
    let r = sched_json(&env, &url, &["resume", "nightly"]);
    assert_eq!(r["paused"], false);
    assert!(r["next_fire"].is_string());

    // The schedule outlives a daemon restart.
    drop(_d);
    let (_d, url) = env.up("up2", &["--fake-gpus", "1xA100-80GB"]);
    let ls = sched_json(&env, &url, &["ls"]);
    assert_eq!(ls[0]["name"], "nightly");
    assert_eq!(ls[0]["last"]["jobs"][0].as_u64(), Some(id));

    // Remove it: gone, its job stays.
    sched(&env, &url, &["rm", "nightly"]);
    let e = sched_fail(&env, &url, &["show", "nightly"]);
    assert!(e.contains("no schedule \"nightly\""), "{e}");
    assert_eq!(job(&url, id)["state"], "succeeded");
    let e = sched_fail(&env, &url, &["run", "nightly"]);
    assert!(e.contains("no schedule \"nightly\""), "{e}");

    // The routes sit behind the guard like every other.
    let (status, _) = http(&url, "GET", "/api/v1/schedules", None, "");
    assert_eq!(status, 401);
    let token = env.token();
    let (status, _) = crate::support::raw(
        &url,
        &format!(
            "POST /api/v1/schedules HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain",
            url.trim_start_matches("http://")
        ),
        "{}",
    );
    assert_eq!(status, 415);
    let (status, body) = http(
        &url,
        "POST",
        "/api/v1/schedules",
        Some(&token),
        r#"{"name": "x", "cron": "@daily", "job": {"command": ["true"]}, "color": "red"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("color"), "{body}");
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cron", "61 * * * *"],
            "cron: \"61 * * * *\" is not a cron pattern",
        ),
        (&["--cron", "0 3 * *"], "cron: \"0 3 * *\" has 4 fields"),
        (
            &["--cron", "0 3 * * *", "--tz", "Mars/Olympus"],
            "tz: unknown time zone \"Mars/Olympus\"",
        ),
        (
            &["--window", "22:00-06:00"],
            "window: a window belongs to a schedule",
        ),
        (
            &["--cron", "0 3 * * *", "--window", "22:00-30:00"],
            "window: \"22:00-30:00\" is not a window",
        ),
        (&[], "cron: a schedule needs a trigger"),
        (
            &["--on-dataset", "imagenet"],
            "on_dataset: no dataset \"imagenet\"",
        ),
        (
            &["--cron", "@daily", "--tag-pattern", "v*"],
            "tag_pattern: a tag pattern needs --on-dataset",
        ),
        (&["--cron", "@daily", "--gpus", "100"], "gpus.count"),
    ];
    for (flags, want) in cases {
        let mut a = vec!["add", "bad"];
        a.extend_from_slice(flags);
        a.extend(["--", "true"]);
        let e = sched_fail(&env, &url, &a);
        assert!(e.contains(want), "{flags:?}: {e}");
    }
    let e = sched_fail(
        &env,
        &url,
        &[
            "add",
            "bad",
            "--cron",
            "@daily",
            "--overlap",
            "sometimes",
            "--",
            "true",
        ],
    );
    assert!(e.contains("--overlap"), "{e}");
    let e = sched_fail(
        &env,
        &url,
        &["add", "no good", "--cron", "@daily", "--", "true"],
    );
    assert!(e.contains("name: \"no good\""), "{e}");
    // Nothing was stored.
    assert!(sched_json(&env, &url, &["ls"])
        .as_array()
        .unwrap()
        .is_empty());
    // A name that is taken.
    sched(&env, &url, &["add", "a", "--cron", "@daily", "--", "true"]);
    let e = sched_fail(&env, &url, &["add", "a", "--cron", "@hourly", "--", "true"]);
    assert!(e.contains("exists already"), "{e}");
}

/// A job fired outside its window waits, with free GPUs, while the
/// scheduler places other jobs.
#[test]
fn a_fired_job_waits_for_its_window() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    // A window that opens 2 hours from now (UTC) and lasts an hour.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hm = |s: u64| format!("{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60);
    let window = format!("{}-{}", hm(secs + 7200), hm(secs + 10800));
    sched(
        &env,
        &url,
        &[
            "add", "later", "--cron", "@yearly", "--tz", "UTC", "--window", &window, "--gpus", "1",
            "--", "true",
        ],
    );
    let id = sched_json(&env, &url, &["run", "later"])["occurrence"]["jobs"][0]
        .as_u64()
        .unwrap();
    // Another job takes the free GPU and finishes: the scheduler has run
    // passes since, and the windowed job was not placed.
    let other = submit(&env, &url, &["--gpus", "1", "--", "true"]);
    wait_state(&url, other, "succeeded", Duration::from_secs(20));
    let j = job(&url, id);
    assert_eq!(j["state"], "queued", "{j}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("waiting for its window {window}")),
        "{j}"
    );
}

/// A new dataset version fires the job once, with that exact version
/// checked out as its input; re-adding identical content fires nothing.
#[test]
fn a_new_dataset_version_fires_its_schedule_once() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    let data = env.path("imagenet");
    write(&data.join("a.txt"), b"one\n");
    env.ok(&["data", "add", data.to_str().unwrap(), "--name", "imagenet"]);
    sched(
        &env,
        &url,
        &[
            "add", "retrain", "--on-dataset", "imagenet", "--overlap", "queue", "--", "sh", "-c",
            "cat $TRAINYARD_INPUT_IMAGENET/a.txt; echo $TRAINYARD_INPUT_IMAGENET_VERSION $TRAINYARD_TRIGGER",
        ],
    );
    // The version it had when added does not fire.
    write(&data.join("a.txt"), b"two\n");
    let v2 = env.json(&["data", "add", data.to_str().unwrap(), "--name", "imagenet"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(Duration::from_secs(20), || {
        jobs_of(&url, "retrain").len() == 1
    });
    let first = jobs_of(&url, "retrain")[0]["id"].as_u64().unwrap();
    wait_state(&url, first, "succeeded", Duration::from_secs(20));
    assert_eq!(
        logs(&env, &url, first),
        format!("two\n{v2} imagenet@{v2}\n")
    );
    // Identical content again: no new version, so nothing fires; then a
    // real third version fires the second (and last) job.
    let again = env.json(&["data", "add", data.to_str().unwrap(), "--name", "imagenet"]);
    assert_eq!(again["created"], false, "{again}");
    write(&data.join("a.txt"), b"three\n");
    let v3 = env.json(&["data", "add", data.to_str().unwrap(), "--name", "imagenet"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(Duration::from_secs(20), || {
        jobs_of(&url, "retrain").len() == 2
    });
    let jobs = jobs_of(&url, "retrain");
    let second = jobs[1]["id"].as_u64().unwrap();
    assert_eq!(jobs[1]["spec"]["inputs"][0], format!("imagenet@{v3}"));
    wait_state(&url, second, "succeeded", Duration::from_secs(20));
    assert!(logs(&env, &url, second).starts_with("three\n"));
    let show = sched_json(&env, &url, &["show", "retrain"]);
    let runs = show["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{show:#}");
    assert!(runs[0]["detail"].as_str().unwrap().contains(&v3));
    assert!(runs[1]["detail"].as_str().unwrap().contains(&v2));
    assert_eq!(jobs_of(&url, "retrain").len(), 2);
}
