//! `trainyard usage` and `trainyard tag` against a real daemon: allocated
//! GPU-hours equal the attempts' assignment-to-release spans, retries count
//! every attempt, an ignore tag applies retroactively, teams come from the
//! lab config, bad input is refused naming what is wrong, and a wandb run a
//! job produced is linked to it both ways.

use std::time::Duration;

use crate::support::jobs::{gpu_uuids, job, submit, wait_state};
use crate::support::wandb_run::{write_gpu_run, GpuRun};
use crate::support::{get_json, http, token_of, write, Env};

/// Σ over a job's attempts of (finished - assigned) × GPUs, in hours.
fn attempt_gpu_hours(url: &str, id: u64) -> f64 {
    let j = job(url, id);
    j["attempt_log"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            let span = a["finished_ns"].as_i64().expect("finished") / 1_000_000
                - a["assigned_ns"].as_i64().expect("assigned") / 1_000_000;
            span as f64 * a["gpus"].as_array().expect("gpus").len() as f64 / 3.6e6
        })
        .sum()
}

fn row<'a>(report: &'a serde_json::Value, key: &[&str]) -> Option<&'a serde_json::Value> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["key"] == serde_json::json!(key))
}

fn close(a: f64, b: f64) -> bool {
    // Hours from milliseconds: equal to the millisecond, whatever the rounding.
    (a - b).abs() < 1e-6
}

#[test]
fn allocated_gpu_hours_are_the_attempts_spans_and_tags_and_teams_apply() {
    let env = Env::new();
    // Jobs are submitted as TRAINYARD_USER (the test env's "tester").
    let me = "tester";
    write(
        &env.home.join("config.toml"),
        format!(
            "[usage]\ntimezone = \"Asia/Seoul\"\n[teams.vision]\nprojects = [\"detr\"]\n\
             [teams.nlp]\nusers = [\"{me}\"]\n"
        )
        .as_bytes(),
    );
    let (mut up, url) = env.up("up", &["--fake-gpus", "4xA100-80GB"]);
    let two = submit(
        &env,
        &url,
        &["--gpus", "2", "--project", "detr", "--", "sleep", "0.5"],
    );
    // Fails once, then succeeds: both attempts count.
    let flaky = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--max-attempts",
            "2",
            "--",
            "sh",
            "-c",
            "test -e marker || { touch marker; exit 3; }",
        ],
    );
    let cpu = submit(&env, &url, &["--", "true"]);
    for id in [two, flaky, cpu] {
        wait_state(&url, id, "succeeded", Duration::from_secs(60));
    }
    assert_eq!(job(&url, flaky)["attempt_log"].as_array().unwrap().len(), 2);

    let r = env.json(&[
        "usage", "--server", &url, "--by", "project", "--since", "today",
    ]);
    assert_eq!(r["timezone"], "Asia/Seoul");
    let detr = row(&r, &["detr"]).expect("detr row");
    assert!(
        close(
            detr["allocated_gpu_h"].as_f64().unwrap(),
            attempt_gpu_hours(&url, two)
        ),
        "{r:#}"
    );
    assert_eq!(detr["jobs"], 1);
    let total = attempt_gpu_hours(&url, two) + attempt_gpu_hours(&url, flaky);
    assert!(
        close(r["total"]["allocated_gpu_h"].as_f64().unwrap(), total),
        "{r:#}"
    );
    // The CPU job holds no GPU: not counted.
    assert_eq!(r["total"]["jobs"], 2);

    // Teams: the project's team wins over the submitter's.
    let r = env.json(&["usage", "--server", &url, "--by", "team,user", "--daily"]);
    assert!(row(&r, &["vision", me]).is_some(), "{r:#}");
    assert!(row(&r, &["nlp", me]).is_some(), "{r:#}");
    let day = r["rows"][0]["period"].as_str().unwrap().to_string();
    assert_eq!(day.len(), 10, "{day}");

    // Tagged later with the ignore tag: out of the report, retroactively.
    let out = env.ok(&["tag", "--server", &url, &two.to_string(), "ignore-usage"]);
    assert_eq!(out.trim(), format!("job {two}: tags ignore-usage"));
    let r = env.json(&["usage", "--server", &url]);
    assert!(
        close(
            r["total"]["allocated_gpu_h"].as_f64().unwrap(),
            attempt_gpu_hours(&url, flaky)
        ),
        "{r:#}"
    );
    env.ok(&[
        "tag",
        "--server",
        &url,
        "--remove",
        &two.to_string(),
        "ignore-usage",
    ]);
    let r = env.json(&["usage", "--server", &url]);
    assert!(
        close(r["total"]["allocated_gpu_h"].as_f64().unwrap(), total),
        "{r:#}"
    );

    // CSV: a header, the rows, the totals row.
    let csv = env.ok(&["usage", "--server", &url, "--by", "project", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("project,alloc_gpu_h,used_gpu_h,idle_gpu_h,energy_kwh"),
        "{csv}"
    );
    assert!(lines.last().unwrap().starts_with("total,"), "{csv}");

    // Bad input: each refused, naming what is wrong, exit non-zero.
    for (args, want) in [
        (vec!["--by", "gpu"], "unknown dimension \"gpu\""),
        (
            vec!["--since", "2026-12-05", "--until", "2026-12-01"],
            "--since (2026-12-05) is after --until (2026-12-01)",
        ),
        (
            vec!["--since", "last tuesday"],
            "--since: cannot read \"last tuesday\"",
        ),
        (
            vec!["--tz", "Mars/Olympus"],
            "unknown time zone \"Mars/Olympus\"",
        ),
        (vec!["--daily", "--monthly"], "cannot be used with"),
    ] {
        let mut a = vec!["usage", "--server", url.as_str()];
        a.extend(args.iter().copied());
        let e = env.fail(&a);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let e = env.fail(&["tag", "--server", &url, "999", "x"]);
    assert!(e.contains("no job 999"), "{e}");
    let e = env.fail(&["tag", "--server", &url, &two.to_string(), "a b"]);
    assert!(e.contains("no spaces"), "{e}");
    // The API names its parameters.
    let (status, body) = crate::support::http(
        &url,
        "GET",
        "/api/v1/usage?since=soon",
        Some(&env.token()),
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("since: cannot read"), "{body}");
    up.term();
}

#[test]
fn a_bad_lab_config_stops_the_daemon_naming_file_line_and_field() {
    let env = Env::new();
    for (text, want) in [
        (
            "[usage]\ntimezone = \"Atlantis/Capital\"\n",
            "usage.timezone: unknown time zone",
        ),
        (
            "[usage]\nidle_threshold = 5\n",
            "unknown field `idle_threshold`",
        ),
        ("[teams.a]\nusers = \"ana\"\n", "line 2"),
    ] {
        write(&env.home.join("config.toml"), text.as_bytes());
        let e = env.fail(&["up", "--port", "0", "--no-agent"]);
        assert!(
            e.contains("config.toml") && e.contains(want),
            "{text:?}: {e}"
        );
    }
}

/// The runs made by the real wandb client (tests/fixtures/wandb-usage, hand
/// counted in scripts/make-wandb-usage-fixtures): a run that used one of
/// its host's two GPUs counts one, and a run initialised twice on one GPU
/// is counted once, with the overlap reported.
#[test]
fn wandb_runs_count_the_gpus_their_processes_used_once() {
    let env = Env::new();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wandb-usage");
    env.ok(&["runs", "scan", fixtures]);
    let (mut up, url) = env.up("up", &["--no-agent"]);
    let r = env.json(&[
        "usage",
        "--server",
        &url,
        "--by",
        "user",
        "--since",
        "2026-11-30",
        "--until",
        "2026-11-30",
        "--tz",
        "UTC",
    ]);
    let secs = |row: &serde_json::Value, k: &str| {
        (row[k].as_f64().unwrap() * 3600.0 * 1000.0).round() / 1000.0
    };
    // Allocated, used and idle seconds of a row.
    let hours = |row: &serde_json::Value| {
        (
            secs(row, "allocated_gpu_h"),
            secs(row, "used_gpu_h"),
            secs(row, "idle_gpu_h"),
        )
    };
    let ana = row(&r, &["ana"]).expect("ana");
    assert_eq!(hours(ana), (120.0, 78.0, 15.0), "{r:#}");
    assert_eq!(ana["runs"], 1);
    assert_eq!(ana["jobs"], 0);
    let ben = row(&r, &["ben"]).expect("ben");
    assert_eq!(hours(ben), (240.0, 184.5, 15.0), "{r:#}");
    assert_eq!(ben["runs"], 2);
    assert_eq!(secs(&r["total"], "allocated_gpu_h"), 360.0);
    assert!(
        (r["total"]["energy_kwh"].as_f64().unwrap() - 93_600.0 / 3.6e6).abs() < 1e-9,
        "{r:#}"
    );
    let conflicts = r["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{r:#}");
    assert_eq!(conflicts[0]["host"], "gpu-host-b");
    assert_eq!(conflicts[0]["claimants"][0]["run"], "dinit001");
    assert_eq!(conflicts[0]["claimants"][1]["run"], "dinit002");
    // The table says so too.
    let t = env.ok(&[
        "usage",
        "--server",
        &url,
        "--since",
        "2026-11-30",
        "--until",
        "2026-11-30",
        "--tz",
        "UTC",
    ]);
    assert!(
        t.contains("overlap on gpu-host-b") && t.contains("run dinit001 and run dinit002"),
        "{t}"
    );
    // A run tagged with the ignore tag leaves the report, retroactively,
    // and comes back untagged; its own (wandb) tags cannot be removed here.
    let day = [
        "usage",
        "--server",
        &url,
        "--by",
        "user",
        "--since",
        "2026-11-30",
        "--until",
        "2026-11-30",
        "--tz",
        "UTC",
    ];
    let out = env.ok(&["tag", "--server", &url, "usage001", "ignore-usage"]);
    assert_eq!(out.trim(), "run usage001: tags one-of-two, ignore-usage");
    let r = env.json(&day);
    assert!(row(&r, &["ana"]).is_none(), "{r:#}");
    assert_eq!(secs(&r["total"], "allocated_gpu_h"), 240.0);
    // The tag survives a re-scan of the run's files.
    env.ok(&["runs", "scan", fixtures]);
    assert!(row(&env.json(&day), &["ana"]).is_none());
    let e = env.fail(&[
        "tag",
        "--server",
        &url,
        "usage001",
        "one-of-two",
        "--remove",
    ]);
    assert!(e.contains("the tag \"one-of-two\" is the run's own"), "{e}");
    let e = env.fail(&["tag", "--server", &url, "nosuchrun", "x"]);
    assert!(e.contains("no run \"nosuchrun\""), "{e}");
    env.ok(&[
        "tag",
        "--server",
        &url,
        "usage001",
        "ignore-usage",
        "--remove",
    ]);
    let r = env.json(&day);
    assert_eq!(
        hours(row(&r, &["ana"]).expect("ana back")),
        (120.0, 78.0, 15.0)
    );
    up.term();
}

/// Used and idle-allocated GPU time from the agent's samples of a scripted
/// trace: 1 GPU at 60 % and 200 W while a job holds it, then a job on an
/// idle GPU (2 %): used and energy follow the trace to the second.
#[test]
fn used_idle_and_energy_follow_a_scripted_trace() {
    let env = Env::new();
    let trace = env.path("trace.toml");
    std::fs::write(
        &trace,
        "version = 1\n[[gpu]]\nindex = 0\npoints = [[0, 60, 4096, 200]]\n\
         [[gpu]]\nindex = 1\npoints = [[0, 2, 1024, 50]]\n",
    )
    .unwrap();
    let (mut up, url) = env.up(
        "up",
        &[
            "--fake-gpus",
            "2xA100-80GB",
            "--fake-gpu-trace",
            trace.to_str().unwrap(),
            "--sample-every",
            "200ms",
        ],
    );
    let uuids = crate::support::jobs::gpu_uuids(&url, 2);
    // One job per GPU: each job's GPU is known from its attempt.
    let busy = submit(
        &env,
        &url,
        &["--gpus", "1", "--project", "busy", "--", "sleep", "3"],
    );
    let idle = submit(
        &env,
        &url,
        &["--gpus", "1", "--project", "idle", "--", "sleep", "3"],
    );
    for id in [busy, idle] {
        wait_state(&url, id, "succeeded", Duration::from_secs(30));
    }
    // The agent ships its samples about every second at this rate: ask
    // until every sample of the two attempts has arrived (or 20 s).
    let truth = |id: u64| {
        let a = &job(&url, id)["attempt_log"][0];
        let gpu = a["gpus"][0].as_str().unwrap().to_string();
        let (util, watts) = if gpu == uuids[0] {
            (60.0, 200.0)
        } else {
            (2.0, 50.0)
        };
        let alloc =
            (a["finished_ns"].as_i64().unwrap() - a["assigned_ns"].as_i64().unwrap()) as f64 / 1e9;
        (util, watts, alloc)
    };
    let truths = [(busy, "busy", truth(busy)), (idle, "idle", truth(idle))];
    // Checks one report against the trace; the first failure, if any.
    let check = |r: &serde_json::Value| -> Result<(), String> {
        for (_, project, (util, watts, alloc)) in &truths {
            let row = row(r, &[project]).ok_or(format!("no {project} row"))?;
            let h = |k: &str| row[k].as_f64().unwrap() * 3600.0;
            if (h("allocated_gpu_h") - alloc).abs() >= 1e-3 {
                return Err(format!(
                    "{project}: allocated {} of {alloc} s",
                    h("allocated_gpu_h")
                ));
            }
            // Samples every 0.2 s cover the holding but for its edges.
            let used = h("used_gpu_h");
            if !(used <= util / 100.0 * alloc + 1e-6 && used >= util / 100.0 * (alloc - 1.0)) {
                return Err(format!("{project}: used {used} of {alloc} s at {util} %"));
            }
            let energy_j = row["energy_kwh"].as_f64().unwrap() * 3.6e6;
            if !(energy_j <= watts * alloc + 1.0 && energy_j >= watts * (alloc - 1.0)) {
                return Err(format!(
                    "{project}: {energy_j} J at {watts} W for {alloc} s"
                ));
            }
            let idle_s = h("idle_gpu_h");
            let idle_ok = if *util < 5.0 {
                idle_s <= *alloc && idle_s >= alloc - 1.0
            } else {
                idle_s == 0.0
            };
            if !idle_ok {
                return Err(format!("{project}: idle {idle_s} of {alloc} s at {util} %"));
            }
        }
        Ok(())
    };
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = env.json(&[
            "usage", "--server", &url, "--by", "project", "--since", "today",
        ]);
        match check(&r) {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() > end => panic!("{e}: {r:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    up.term();
}

/// A wandb run that a job produced — on the attempt's GPU, on its host,
/// inside its time — is linked to it both ways (`GET /jobs/{id}/runs`,
/// `GET /runs/{id}/jobs`) and counted once, as the job; a run on the other
/// GPU at the same time, and one on the job's GPU ending before the attempt
/// (by more than the slack), are not the job's and count as runs.
#[test]
fn a_run_a_job_produced_is_linked_to_it_both_ways() {
    let env = Env::new();
    let (mut up, url) = env.up("up", &["--fake-gpus", "2xA100-80GB"]);
    let uuids = gpu_uuids(&url, 2);
    let id = submit(
        &env,
        &url,
        &["--gpus", "1", "--project", "linked", "--", "sleep", "2"],
    );
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
    let a = &j["attempt_log"][0];
    let mine = a["gpus"][0].as_str().unwrap();
    let (i_mine, i_other) = if mine == uuids[0] { (0, 1) } else { (1, 0) };
    let from = a["assigned_ns"].as_i64().unwrap() / 1_000_000;
    let to = a["finished_ns"].as_i64().unwrap() / 1_000_000;
    let host = get_json(&url, "/api/v1/agents", None)[0]["report"]["hostname"]
        .as_str()
        .unwrap()
        .to_string();
    let gpus = [
        ("NVIDIA A100-SXM4-80GB", uuids[0].as_str()),
        ("NVIDIA A100-SXM4-80GB", uuids[1].as_str()),
    ];
    let every_200ms = |a: i64, b: i64| -> Vec<(i64, f64)> {
        (0..)
            .map(|k| a + 200 * k)
            .take_while(|t| *t <= b)
            .map(|t| (t, 80.0))
            .collect()
    };
    let root = env.path("wandb");
    for (run, used, start, end) in [
        ("prod01", i_mine, from + 100, to - 100),
        ("other01", i_other, from + 100, to - 100),
        ("early01", i_mine, from - 10_000, from - 8_000),
    ] {
        write_gpu_run(
            &root,
            &GpuRun {
                id: run,
                project: "wandb-linked",
                user: "tester",
                host: &host,
                gpus: &gpus,
                used: &[used],
                start_ms: start,
                samples: &every_200ms(start, end),
            },
        );
    }
    env.ok(&["runs", "scan", root.to_str().unwrap()]);

    let link = serde_json::json!([{"job": id, "attempt": 1, "run": "prod01"}]);
    assert_eq!(
        get_json(&url, &format!("/api/v1/jobs/{id}/runs"), None),
        link
    );
    assert_eq!(get_json(&url, "/api/v1/runs/prod01/jobs", None), link);
    for run in ["other01", "early01"] {
        assert_eq!(
            get_json(&url, &format!("/api/v1/runs/{run}/jobs"), None),
            serde_json::json!([]),
            "{run}"
        );
    }
    let token = token_of(&url);
    for path in ["/api/v1/jobs/999/runs", "/api/v1/runs/nope01/jobs"] {
        let (status, body) = http(&url, "GET", path, Some(&token), "");
        assert_eq!(status, 404, "{path}: {body}");
    }
    // The usage report says the same, and counts the linked run once.
    let r = env.json(&[
        "usage", "--server", &url, "--by", "project", "--since", "today",
    ]);
    assert_eq!(r["links"], link, "{r:#}");
    let job_row = row(&r, &["linked"]).expect("the job's row");
    assert_eq!(
        (job_row["jobs"].as_u64(), job_row["runs"].as_u64()),
        (Some(1), Some(0))
    );
    let runs_row = row(&r, &["wandb-linked"]).expect("the runs' row");
    assert_eq!(runs_row["runs"], 2, "{r:#}");
    up.term();
}

/// A cancelled job counts until its GPU was released (the cancel), and a
/// job whose agent was killed with SIGKILL mid-job counts until the daemon
/// judged the attempt lost (at most a lease after the kill): the usage
/// report's allocated hours are exactly the attempts' recorded spans.
#[test]
fn cancelled_and_agent_killed_attempts_count_until_their_release() {
    let env = Env::new();
    let (mut up, url) = env.up("up", &["--no-agent", "--lease", "3s"]);
    let agent = |log: &str| {
        env.spawn(
            log,
            &[
                "agent",
                "--server",
                &url,
                "--name",
                "a",
                "--fake-gpus",
                "2xA100-80GB",
                "--grace",
                "1s",
            ],
        )
    };
    let mut a = agent("agent-1");
    // Short sleeps: the killed agent's job outlives it, then ends by itself.
    let cancelled = submit(&env, &url, &["--gpus", "1", "--", "sleep", "20"]);
    let orphaned = submit(&env, &url, &["--gpus", "1", "--", "sleep", "8"]);
    for id in [cancelled, orphaned] {
        wait_state(&url, id, "running", Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before_cancel = std::time::SystemTime::now();
    env.ok(&["cancel", "--server", &url, &cancelled.to_string()]);
    wait_state(&url, cancelled, "cancelled", Duration::from_secs(20));
    let killed_at = std::time::SystemTime::now();
    a.kill9();
    wait_state(&url, orphaned, "lost", Duration::from_secs(30));
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    let span = |id: u64| {
        let j = job(&url, id);
        let a = &j["attempt_log"][0];
        (
            a["assigned_ns"].as_i64().unwrap() / 1_000_000,
            a["finished_ns"].as_i64().expect("finished") / 1_000_000,
        )
    };
    let (_, cancel_end) = span(cancelled);
    assert!(
        cancel_end >= ms(before_cancel) && cancel_end <= ms(killed_at),
        "{cancel_end}"
    );
    let (_, lost_end) = span(orphaned);
    assert!(
        lost_end >= ms(killed_at) && lost_end <= ms(killed_at) + 3_000 + 5_000,
        "lost at {lost_end}, killed at {}",
        ms(killed_at)
    );
    let r = env.json(&["usage", "--server", &url, "--since", "today"]);
    let want = attempt_gpu_hours(&url, cancelled) + attempt_gpu_hours(&url, orphaned);
    assert!(
        close(r["total"]["allocated_gpu_h"].as_f64().unwrap(), want),
        "{r:#}"
    );
    assert_eq!(r["total"]["jobs"], 2);
    up.term();
}
