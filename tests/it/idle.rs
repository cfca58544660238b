//! The idle policy end to end (issue 17): a real daemon, a real agent
//! with fake GPUs replaying a scripted trace, real job processes. The
//! trace says when a GPU is used, so each test knows when a job's GPUs
//! became idle and checks the decisions' times against the policy to
//! the sample period (200 ms here).

use std::time::{Duration, Instant};

use crate::support::jobs::{job, logs, submit, wait_state};
use crate::support::{wait_for, Env, Proc};

const SAMPLE_MS: i64 = 200;

/// A daemon with `config` as its config.toml and an agent with `gpus`
/// fake GPUs replaying `trace` (if any), sampling every 200 ms.
fn lab(env: &Env, config: &str, gpus: (usize, &str), trace: Option<&str>) -> (Proc, Proc, String) {
    let (count, model) = gpus;
    std::fs::create_dir_all(&env.home).unwrap();
    std::fs::write(env.home.join("config.toml"), config).unwrap();
    let (d, url) = env.up("up", &["--no-agent"]);
    let mut args = vec![
        "agent".to_string(),
        "--server".into(),
        url.clone(),
        "--agent-name".into(),
        "lab1".into(),
        "--fake-gpus".into(),
        format!("{count}x{model}"),
        "--sample-every".into(),
        format!("{SAMPLE_MS}ms"),
        "--grace".into(),
        "1s".into(),
    ];
    if let Some(t) = trace {
        let p = env.path("trace.toml");
        std::fs::write(&p, t).unwrap();
        args.extend(["--fake-gpu-trace".into(), p.to_str().unwrap().into()]);
    }
    let a = env.spawn(
        "agent",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    crate::support::jobs::gpu_uuids(&url, count);
    (d, a, url)
}

fn attempts(url: &str, id: u64) -> Vec<serde_json::Value> {
    job(url, id)["attempt_log"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The notification events of job `id`, in the order they were written.
fn events(env: &Env, id: u64) -> Vec<(String, serde_json::Value)> {
    let c = rusqlite::Connection::open_with_flags(
        env.home.join("queue.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT kind, body FROM notify_events ORDER BY id")
        .unwrap();
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.into_iter()
        .map(|(k, b)| (k, serde_json::from_str::<serde_json::Value>(&b).unwrap()))
        .filter(|(_, b)| b["job"].as_u64() == Some(id))
        .collect()
}

/// GPU 0 is used (90 %) for the agent's first 5 s, then idle (0 %) with
/// its memory held.
const USED_THEN_IDLE: &str = "version = 1
processes = \"environment\"
[[gpu]]
index = 0
points = [[0, 90, 30000, 300], [5, 0, 30000, 60]]
";

#[test]
fn a_job_idle_past_its_window_is_warned_then_stopped_with_its_evidence() {
    let env = Env::new();
    let (_d, _a, url) = lab(
        &env,
        "[idle]\nwarn_before = \"1s\"\n",
        (1, "A100-80GB"),
        Some(USED_THEN_IDLE),
    );
    // Armed by its first use (the grace is an hour), idle from the
    // trace's step at 5 s: warned 1 s before the 2 s window ends, stopped
    // at its end.
    let id = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--idle",
            "2s:5%:stop",
            "--idle-grace",
            "1h",
            "--",
            "sleep",
            "60",
        ],
    );
    let j = wait_state(&url, id, "idle_stopped", Duration::from_secs(20));
    assert!(
        j["reason"].as_str().unwrap().contains("stopped for idling"),
        "{j:#}"
    );
    let a = &attempts(&url, id)[0];
    assert_eq!(a["state"], "idle_stopped");
    let ev = a["idle_evidence"].as_array().expect("evidence");
    assert_eq!(
        ev.iter()
            .map(|e| e["decision"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["warned", "stopped"]
    );
    let (warned, stopped) = (&ev[0], &ev[1]);
    assert_eq!(stopped["armed_by"], "first_use");
    assert_eq!(stopped["policy"]["window_ms"], 2000);
    assert_eq!(stopped["policy"]["threshold_pct"], 5);
    assert_eq!(stopped["policy"]["action"], "stop");
    let since = stopped["idle_since_ms"].as_i64().unwrap();
    assert_eq!(warned["idle_since_ms"].as_i64().unwrap(), since);
    // To the sample: the warning 1 s into the run, the stop at 2 s.
    let w = warned["at_ms"].as_i64().unwrap() - since;
    let s = stopped["at_ms"].as_i64().unwrap() - since;
    assert!(
        (1000..1000 + SAMPLE_MS + 50).contains(&w),
        "warned {w} ms into the run"
    );
    assert!(
        (2000..2000 + SAMPLE_MS + 50).contains(&s),
        "stopped {s} ms into the run"
    );
    // The evidence's samples: every one idle, from the run's start to the
    // decision.
    let samples = stopped["samples"].as_array().unwrap();
    assert!(samples.len() >= 8, "{samples:?}");
    assert!(samples.iter().all(|x| x["max_util_pct"] == 0));
    assert_eq!(samples[0]["t_ms"].as_i64().unwrap(), since);
    // The run began after detection armed (the job's first sample, when
    // the GPU was still used).
    let armed = stopped["armed_at_ms"].as_i64().unwrap();
    assert!(since > armed, "armed at {armed}, idle from {since}");
    // The warning went out before the stop, both through the outbox.
    let kinds: Vec<String> = events(&env, id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["idle_warned", "idle_stopped"]);
    let (_, body) = &events(&env, id)[0];
    assert!(
        body["detail"].as_str().unwrap().contains("will be stopped"),
        "{body}"
    );
    // The reason is at the end of the job's log.
    wait_for(Duration::from_secs(10), || {
        logs(&env, &url, id).contains("stopped for idling")
    });
    // And the process is gone: its GPU is free again.
    let second = submit(&env, &url, &["--gpus", "1", "--idle", "off", "--", "true"]);
    wait_state(&url, second, "succeeded", Duration::from_secs(20));
}

#[test]
fn reading_data_and_exempt_jobs_are_not_stopped_an_idle_sleeper_is() {
    let env = Env::new();
    // No trace: every GPU at 0 %. Busy means 10 % of a core or 1 MiB/s.
    // GPU 4 has 20 GB held at 0 % from the start (a foreign process's).
    let (_d, _a, url) = lab(
        &env,
        "[idle]\nwindow = \"2s\"\nbusy_cpu = 10\nbusy_io = \"1MiB\"\nwarn_before = \"0s\"\nexempt_tag = \"keep\"\n",
        (6, "A100-80GB"),
        Some("version = 1\nprocesses = \"environment\"\n[[gpu]]\nindex = 4\npoints = [[0, 0, 20000, 60]]\n"),
    );
    let idle = ["--idle", "2s:5%:stop", "--idle-grace", "0s"];
    let submit_with = |extra: &[&str], cmd: &[&str]| {
        let mut a = vec!["--gpus", "1"];
        a.extend_from_slice(extra);
        a.push("--");
        a.extend_from_slice(cmd);
        submit(&env, &url, &a)
    };
    // Reads (and writes) gigabytes a second for 6 s with 0 % GPU.
    let reader = submit_with(
        &idle,
        &[
            "sh",
            "-c",
            "timeout --foreground 6 dd if=/dev/zero of=/dev/null bs=64k 2>/dev/null; true",
        ],
    );
    let sleeper = submit_with(&idle, &["sleep", "60"]);
    let off = submit_with(&["--idle", "off", "--idle-grace", "0s"], &["sleep", "5"]);
    let mut tagged = idle.to_vec();
    tagged.extend(["--tag", "keep"]);
    let exempt = submit_with(&tagged, &["sleep", "5"]);
    // Notify only: the job keeps running, `ps` says it is idle.
    let notified = submit_with(
        &["--idle", "1s:5%:notify", "--idle-grace", "0s"],
        &["sleep", "60"],
    );
    let t0 = Instant::now();
    wait_state(&url, sleeper, "idle_stopped", Duration::from_secs(20));
    // The others outlive the sleeper's window and end by themselves.
    assert_eq!(job(&url, reader)["state"], "running");
    let a = &attempts(&url, reader)[0];
    assert_eq!(a["idle"]["phase"], "busy", "{a:#}");
    for id in [reader, off, exempt] {
        let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
        let a = &attempts(&url, id)[0];
        assert!(a.get("idle_evidence").is_none(), "job {id}: {j:#}");
    }
    assert!(t0.elapsed() >= Duration::from_secs(4));
    // The notified job runs on, and `ps` says so.
    assert_eq!(job(&url, notified)["state"], "running");
    assert_eq!(
        events(&env, notified)
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["idle_warned"]
    );
    let ps = env.ok(&["ps", "--server", &url]);
    let line = ps
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{notified} ")))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        line.contains("owner notified") && line.contains("idle "),
        "{line}"
    );
    let sleeper_line = ps
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{sleeper} ")))
        .unwrap();
    assert!(sleeper_line.contains("idle_stopped"), "{sleeper_line}");
    // A foreign process on GPU 5 (not in any job's process group) is
    // named with its user; GPU 4's memory held at 0 % is flagged.
    let uuids = crate::support::jobs::gpu_uuids(&url, 6);
    let mut foreign = std::process::Command::new("sleep")
        .arg("30")
        .env("TRAINYARD_GPU_UUIDS", &uuids[5])
        .spawn()
        .unwrap();
    let mut out = String::new();
    wait_for(Duration::from_secs(10), || {
        out = env.ok(&["gpus", "--server", &url]);
        out.contains(&format!("pid {}", foreign.id()))
    });
    let _ = foreign.kill();
    let _ = foreign.wait();
    let gpu5 = out
        .lines()
        .find(|l| l.contains(&format!("pid {}", foreign.id())))
        .unwrap();
    assert!(gpu5.contains("FOREIGN") && gpu5.contains(" ("), "{gpu5}");
    let gpu4 = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("4"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(gpu4.contains("memory held, idle"), "{out}");
    env.ok(&["cancel", "--server", &url, &notified.to_string()]);
    // Exempt jobs have no idle status at all.
    assert!(attempts(&url, off)[0].get("idle").is_none());
    assert!(attempts(&url, exempt)[0].get("idle").is_none());
    assert!(events(&env, reader)
        .iter()
        .all(|(k, _)| !k.starts_with("idle")));
}

#[test]
fn requeue_puts_the_job_back_without_counting_a_failure() {
    let env = Env::new();
    let (_d, _a, url) = lab(
        &env,
        "[idle]\nwarn_before = \"0s\"\n",
        (1, "A100-80GB"),
        None,
    );
    // One attempt allowed: a failure would end the job.
    let id = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--max-attempts",
            "1",
            "--idle",
            "1s:5%:requeue",
            "--idle-grace",
            "0s",
            "--",
            "sleep",
            "60",
        ],
    );
    // Requeued, given GPUs again and started: attempt 2 runs.
    wait_for(Duration::from_secs(20), || {
        let a = attempts(&url, id);
        a.len() >= 2 && a[1]["state"] == "running"
    });
    let j = job(&url, id);
    assert_ne!(j["state"], "failed");
    let a = attempts(&url, id);
    assert_eq!(a[0]["state"], "idle_stopped");
    assert_eq!(a[0]["idle_evidence"][0]["decision"], "requeued");
    assert!(a[0]["error"]
        .as_str()
        .unwrap()
        .contains("requeued for idling"));
    // The event says the job was requeued, and the job is not over.
    let ev = events(&env, id);
    assert_eq!(ev[0].0, "idle_stopped");
    assert_eq!(ev[0].1["state"], "queued");
    assert!(ev.iter().all(|(k, _)| k != "job_failed"));
    env.ok(&["cancel", "--server", &url, &id.to_string()]);
}

#[test]
fn bad_idle_values_are_refused_naming_the_flag() {
    let env = Env::new();
    for (args, want) in [
        (
            vec!["--idle", "30m:5%:kill"],
            "--idle: unknown action \"kill\"",
        ),
        (
            vec!["--idle", "30m:150%"],
            "--idle: \"150%\" is not a utilization threshold",
        ),
        (vec!["--idle", "soon"], "--idle: \"soon\" is not a duration"),
        (
            vec!["--idle-grace", "later"],
            "--idle-grace: \"later\" is not a duration",
        ),
    ] {
        let mut a = vec!["submit", "--server", "http://127.0.0.1:9"];
        a.extend(args);
        a.extend(["--", "true"]);
        let e = env.fail(&a);
        assert!(e.contains(want), "{a:?}: {e}");
    }
    // A spec file says which field.
    let spec = env.path("job.toml");
    std::fs::write(&spec, "command = [\"true\"]\nidle = \"2s:5%:halt\"\n").unwrap();
    let e = env.fail(&[
        "submit",
        "--server",
        "http://127.0.0.1:9",
        "-f",
        spec.to_str().unwrap(),
    ]);
    assert!(e.contains("idle: unknown action \"halt\""), "{e}");
    // A bad [idle] stops the daemon naming the file and the field.
    std::fs::create_dir_all(&env.home).unwrap();
    std::fs::write(
        env.home.join("config.toml"),
        "[idle]\nwindow = \"a while\"\n",
    )
    .unwrap();
    let e = env.fail(&["up", "--port", "0", "--no-agent"]);
    assert!(
        e.contains("config.toml") && e.contains("idle.window"),
        "{e}"
    );
}
