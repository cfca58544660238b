//! The job system end to end: real `trainyard up` and `trainyard agent`
//! processes on loopback with fake GPUs, driven through the CLI and the HTTP
//! API.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::jobs::{job, logs, submit, wait_state};
use crate::support::{free_port, get_json, http, wait_for, write, Env};

#[test]
fn jobs_get_best_fit_gpus_in_nvml_order_and_their_logs() {
    let env = Env::new();
    let (_d, url) = env.up(
        "up",
        &[
            "--fake-gpus",
            "2xA100-80GB,1xRTX4090-24GB",
            "--agent-name",
            "ws",
        ],
    );
    // Best fit: a small job takes the 24 GB card (NVML index 2), a 40 GB job an A100.
    let small = submit(&env, &url, &["--gpus", "1", "--arg", "lr=1e-3", "--", "sh", "-c",
        "echo visible=$CUDA_VISIBLE_DEVICES order=$CUDA_DEVICE_ORDER uuids=$TRAINYARD_GPU_UUIDS args=\"$*\"", "x"]);
    let j = wait_state(&url, small, "succeeded", Duration::from_secs(20));
    assert_eq!(j["agent"], "ws");
    let out = logs(&env, &url, small);
    // Fake UUIDs carry the agent's name and the first digits of its id.
    let id = std::fs::read_to_string(env.home.join("agent/ws/id")).unwrap();
    assert_eq!(
        out.trim(),
        format!(
            "visible=2 order=PCI_BUS_ID uuids=GPU-fake-ws-{}-2 args=--lr 1e-3",
            &id.trim()[..8]
        ),
        "{out}"
    );
    let big = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--gpu-mem",
            "40GB",
            "--",
            "sh",
            "-c",
            "echo $CUDA_VISIBLE_DEVICES",
        ],
    );
    wait_state(&url, big, "succeeded", Duration::from_secs(20));
    assert_eq!(logs(&env, &url, big).trim(), "0");

    // A job no host can fit waits with a reason that says why.
    let huge = submit(&env, &url, &["--gpus", "4", "--", "true"]);
    wait_for(Duration::from_secs(10), || {
        job(&url, huge)["reason"].as_str().is_some()
    });
    let ps = env.ok(&["ps", "--server", &url]);
    assert!(ps.contains("no agent has 4 GPUs (at most 3 on ws)"), "{ps}");
    env.ok(&["cancel", "--server", &url, &huge.to_string()]);

    // A missing program fails the attempt with the reason in its log.
    let bad = submit(&env, &url, &["--", "/no/such/train.py"]);
    let j = wait_state(&url, bad, "failed", Duration::from_secs(20));
    assert!(
        j["reason"].as_str().unwrap().contains("/no/such/train.py"),
        "{j}"
    );
    assert!(logs(&env, &url, bad).contains("cannot start \"/no/such/train.py\""));

    // Invalid specs are rejected naming the field, and nothing is queued.
    let before = get_json(&url, "/api/v1/jobs", None)
        .as_array()
        .unwrap()
        .len();
    let e = env.fail(&[
        "submit",
        "--server",
        &url,
        "--gpu-mem",
        "lots",
        "--",
        "true",
    ]);
    assert!(e.contains("--gpu-mem"), "{e}");
    let (status, body) = http(
        &url,
        "POST",
        "/api/v1/jobs",
        Some(&env.token()),
        r#"{"jobs":[{"command":["true"],"gpus":{"count":1,"modle":"A100"}}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("modle"), "{body}");
    let token = env.token();
    let (status, body) = http(&url, "POST", "/api/v1/jobs", Some(&token), "{not json");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        get_json(&url, "/api/v1/jobs", None)
            .as_array()
            .unwrap()
            .len(),
        before
    );

    // Sweeps expand to a grid; --after orders jobs.
    let ids = env.json(&[
        "submit",
        "--server",
        &url,
        "--sweep",
        "lr=1,2",
        "--sweep",
        "seed=7,8",
        "--",
        "sh",
        "-c",
        "echo \"$*\"",
        "x",
    ]);
    let ids: Vec<u64> = ids["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    let after = submit(&env, &url, &["--after", &ids[3].to_string(), "--", "true"]);
    let mut seen = Vec::new();
    for id in &ids {
        wait_state(&url, *id, "succeeded", Duration::from_secs(20));
        seen.push(logs(&env, &url, *id).trim().to_string());
    }
    assert_eq!(
        seen,
        [
            "--lr 1 --seed 7",
            "--lr 1 --seed 8",
            "--lr 2 --seed 7",
            "--lr 2 --seed 8"
        ]
    );
    wait_state(&url, after, "succeeded", Duration::from_secs(20));

    // The OpenAPI document is served.
    let doc = get_json(&url, "/api/v1/openapi.json", None);
    assert!(doc["paths"]["/api/v1/jobs"]["post"].is_object());
}

#[test]
fn cancel_kills_the_whole_process_group_and_timeouts_stop_jobs() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB", "--grace", "1s"]);
    let pidfile = env.path("grandchild.pid");
    let id = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--shell",
            "--",
            &format!(
                "trap '' TERM; sleep 300 & echo $! > {}; echo started; wait",
                pidfile.display()
            ),
        ],
    );
    wait_state(&url, id, "running", Duration::from_secs(20));
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    let out = env.ok(&["cancel", "--server", &url, &id.to_string()]);
    assert!(out.contains("cancelled"), "{out}");
    wait_for(Duration::from_secs(10), || !alive(pid));
    // The GPU is free again: the next job runs.
    let next = submit(&env, &url, &["--gpus", "1", "--", "true"]);
    wait_state(&url, next, "succeeded", Duration::from_secs(20));
    assert_eq!(job(&url, id)["state"], "cancelled");
    assert!(logs(&env, &url, id).contains("started"));

    let slow = submit(&env, &url, &["--timeout", "1s", "--", "sleep", "60"]);
    let j = wait_state(&url, slow, "failed", Duration::from_secs(20));
    assert!(j["reason"].as_str().unwrap().contains("timed out"), "{j}");
    // Retry puts it back with one more attempt.
    env.ok(&["retry", "--server", &url, &slow.to_string()]);
    wait_state(&url, slow, "failed", Duration::from_secs(20));
    assert_eq!(job(&url, slow)["attempt_log"].as_array().unwrap().len(), 2);
}

/// Running, not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A randomized run over two agents: at no moment do two running attempts
/// hold the same GPU, checked continuously through the API and afterwards
/// from the intervals the jobs themselves recorded.
#[test]
fn no_gpu_is_ever_held_by_two_jobs() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent", "--lease", "5s"]);
    let _a = env.spawn(
        "agent-a",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "a",
            "--fake-gpus",
            "2xA100-80GB",
        ],
    );
    let _b = env.spawn(
        "agent-b",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "b",
            "--fake-gpus",
            "3xRTX4090-24GB",
        ],
    );
    wait_for(Duration::from_secs(10), || {
        get_json(&url, "/api/v1/agents", None)
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let record = env.path("intervals");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut ids = Vec::new();
    for _ in 0..24 {
        let n = rng.u32(1..=3);
        let ms = rng.u32(50..400);
        let script = format!(
            "echo start $TRAINYARD_GPU_UUIDS $(date +%s%N) >> {r}; sleep 0.{ms:03}; echo end $TRAINYARD_GPU_UUIDS $(date +%s%N) >> {r}",
            r = record.display()
        );
        ids.push(submit(
            &env,
            &url,
            &["--gpus", &n.to_string(), "--shell", "--", &script],
        ));
    }
    let end = Instant::now() + Duration::from_secs(90);
    let mut checks = 0;
    loop {
        let active = get_json(&url, "/api/v1/jobs?state=assigned,running", None);
        let mut holders: HashMap<String, u64> = HashMap::new();
        for j in active.as_array().unwrap() {
            for g in j["gpus"].as_array().unwrap() {
                let prev =
                    holders.insert(g.as_str().unwrap().to_string(), j["id"].as_u64().unwrap());
                assert!(
                    prev.is_none(),
                    "GPU {g} held by jobs {prev:?} and {}",
                    j["id"]
                );
            }
            // All GPUs of a job on one host.
            let hosts: std::collections::HashSet<&str> = j["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().rsplit_once('-').unwrap().0)
                .collect();
            assert!(hosts.len() <= 1, "{j}");
        }
        checks += 1;
        let done = get_json(&url, "/api/v1/jobs?state=succeeded", None)
            .as_array()
            .unwrap()
            .len();
        if done == ids.len() {
            break;
        }
        assert!(
            Instant::now() < end,
            "only {done} of {} jobs finished",
            ids.len()
        );
    }
    assert!(checks > 10);
    // Every GPU's recorded intervals are disjoint.
    let text = std::fs::read_to_string(&record).unwrap();
    let mut per_gpu: HashMap<String, Vec<(i64, &str)>> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let t: i64 = parts[2].parse().unwrap();
        for g in parts[1].split(',') {
            per_gpu
                .entry(g.to_string())
                .or_default()
                .push((t, parts[0]));
        }
    }
    for (g, mut ev) in per_gpu {
        ev.sort();
        let mut open = 0;
        for (_, kind) in ev {
            open += if kind == "start" { 1 } else { -1 };
            assert!(open <= 1, "GPU {g} ran two jobs at once");
        }
    }
}

/// An agent killed mid-job: after the lease the attempt is lost and the job
/// runs again on another agent.
#[test]
fn a_killed_agents_attempt_is_lost_and_rerun_elsewhere() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent", "--lease", "3s"]);
    let mut a = env.spawn(
        "agent-a",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "a",
            "--fake-gpus",
            "1xA100-80GB",
        ],
    );
    wait_for(Duration::from_secs(10), || {
        get_json(&url, "/api/v1/agents", None)
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let pidfile = env.path("job.pid");
    let id = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--max-attempts",
            "2",
            "--shell",
            "--",
            &format!(
                "echo $$ > {}; echo on $TRAINYARD_AGENT; sleep 2",
                pidfile.display()
            ),
        ],
    );
    let j = wait_state(&url, id, "running", Duration::from_secs(20));
    assert_eq!(j["agent"], "a");
    // The host dies: the agent and its job.
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let job_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    a.kill9();
    unsafe { libc::kill(-job_pid, libc::SIGKILL) };
    let _b = env.spawn(
        "agent-b",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "b",
            "--fake-gpus",
            "1xA100-80GB",
        ],
    );
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
    let attempts = j["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{j:#}");
    assert_eq!(
        (attempts[0]["agent"].as_str(), attempts[0]["state"].as_str()),
        (Some("a"), Some("lost"))
    );
    assert_eq!(
        (attempts[1]["agent"].as_str(), attempts[1]["state"].as_str()),
        (Some("b"), Some("succeeded"))
    );
    assert!(logs(&env, &url, id).contains("on b"));
}

/// Restarting the daemon keeps the queue; an agent elsewhere keeps running
/// its job and re-attaches, and its end is recorded.
#[test]
fn the_daemon_restarts_without_losing_jobs() {
    let env = Env::new();
    let port = free_port().to_string();
    let up_args = ["--no-agent", "--lease", "10s", "--port", port.as_str()];
    let (mut d, url) = env.up("up1", &up_args);
    let _a = env.spawn(
        "agent",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "a",
            "--fake-gpus",
            "1xA100-80GB",
        ],
    );
    let running = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--shell",
            "--",
            "echo first; sleep 3; echo done",
        ],
    );
    let queued = submit(&env, &url, &["--gpus", "1", "--", "echo", "second"]);
    wait_state(&url, running, "running", Duration::from_secs(20));
    d.kill9();
    let e = env.fail(&["ps", "--server", &url]);
    assert!(e.contains("cannot reach the Trainyard daemon"), "{e}");
    std::thread::sleep(Duration::from_millis(500));
    let (_d2, url2) = env.up("up2", &up_args);
    assert_eq!(url, url2);
    let j = wait_state(&url, running, "succeeded", Duration::from_secs(30));
    assert_eq!(j["attempt_log"].as_array().unwrap().len(), 1, "{j:#}");
    assert_eq!(logs(&env, &url, running), "first\ndone\n");
    wait_state(&url, queued, "succeeded", Duration::from_secs(20));
}

fn git_commit(repo: &git2::Repository, file: &str, text: &str) -> git2::Oid {
    let wd = repo.workdir().unwrap().to_path_buf();
    write(&wd.join(file), text.as_bytes());
    let mut idx = repo.index().unwrap();
    idx.add_path(Path::new(file)).unwrap();
    idx.write().unwrap();
    let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, "c", &tree, &parents)
        .unwrap()
}

#[test]
fn git_sources_and_dataset_inputs_are_prepared_on_the_agent() {
    let env = Env::new();
    let origin = env.path("origin");
    let repo = git2::Repository::init(&origin).unwrap();
    let c1 = git_commit(&repo, "train.sh", "echo training v1");
    repo.tag_lightweight("v1", &repo.find_object(c1, None).unwrap(), false)
        .unwrap();
    git_commit(&repo, "train.sh", "echo training v2");
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    let o = origin.to_str().unwrap();
    let id = submit(
        &env,
        &url,
        &[
            "--git",
            o,
            "--rev",
            "v1",
            "--shell",
            "--",
            "sh train.sh; echo commit=$TRAINYARD_GIT_COMMIT",
        ],
    );
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
    assert_eq!(logs(&env, &url, id), format!("training v1\ncommit={c1}\n"));
    // The exact commit the attempt ran is recorded on it, and `show` says it.
    assert_eq!(
        j["attempt_log"][0]["commit"],
        c1.to_string().as_str(),
        "{j:#}"
    );
    let shown = env.ok(&["show", &id.to_string(), "--server", &url]);
    assert!(shown.contains(&c1.to_string()[..10]), "{shown}");
    // The remote's HEAD (its default branch) is a rev too.
    let head = submit(
        &env,
        &url,
        &["--git", o, "--rev", "HEAD", "--shell", "--", "sh train.sh"],
    );
    wait_state(&url, head, "succeeded", Duration::from_secs(30));
    assert_eq!(logs(&env, &url, head), "training v2\n");
    let bad = submit(
        &env,
        &url,
        &["--git", o, "--rev", "no-such-rev", "--", "true"],
    );
    let j = wait_state(&url, bad, "failed", Duration::from_secs(30));
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("unknown git rev \"no-such-rev\""),
        "{j}"
    );
    assert!(logs(&env, &url, bad).contains("no-such-rev"));

    // A dataset from this host's store, checked out for the job.
    write(&env.path("mnist/train.csv"), b"1,2,3\n");
    env.ok(&["data", "add", "mnist", "--tag", "v1"]);
    let id = submit(
        &env,
        &url,
        &[
            "--input",
            "mnist@v1",
            "--shell",
            "--",
            "cat $TRAINYARD_INPUT_MNIST/train.csv",
        ],
    );
    wait_state(&url, id, "succeeded", Duration::from_secs(30));
    assert_eq!(logs(&env, &url, id), "1,2,3\n");
    let missing = submit(&env, &url, &["--input", "cifar@v9", "--", "true"]);
    let j = wait_state(&url, missing, "failed", Duration::from_secs(30));
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("dataset input cifar@v9 is not available"),
        "{j}"
    );
}

#[test]
fn a_token_is_required_and_bad_calls_change_nothing() {
    let env = Env::new();
    // On loopback too, without asking (--require-token is the default now).
    let (_d, url) = env.up("up", &["--no-agent"]);
    let health = get_json(&url, "/api/v1/health", None);
    assert_eq!(health["auth_required"], true);
    // The API version a client (the desktop app) checks before anything else.
    assert_eq!(health["api"], trainyard::api::API_VERSION);
    let (status, body) = http(
        &url,
        "POST",
        "/api/v1/jobs",
        None,
        r#"{"jobs":[{"command":["true"]}]}"#,
    );
    assert_eq!(status, 401, "{body}");
    let (status, _) = http(&url, "GET", "/api/v1/jobs", Some("wrong"), "");
    assert_eq!(status, 401);
    let (status, _) = http(&url, "GET", "/api/v1/events", None, "");
    assert_eq!(status, 401);
    // The right token works, and nothing was queued by the refused calls.
    let token = env.token();
    let jobs = get_json(&url, "/api/v1/jobs", Some(&token));
    assert_eq!(jobs.as_array().unwrap().len(), 0);
    // The CLI reads the home's token by itself; a wrong one is named.
    submit(&env, &url, &["--", "true"]);
    let o = env
        .cmd()
        .args(["ps", "--server", &url])
        .env("TRAINYARD_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused the token"));
    // An agent without the token is refused and gets no work.
    let a = env
        .cmd()
        .args(["agent", "--server", &url, "--name", "x"])
        .env("TRAINYARD_TOKEN", "nope")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let agents = get_json(&url, "/api/v1/agents", Some(&token));
    assert_eq!(agents.as_array().unwrap().len(), 0);
    drop(crate::support::Proc {
        child: a,
        log: env.path("none"),
    });
    // Attempt calls need the attempt's token.
    let (status, body) = http(
        &url,
        "POST",
        "/api/v1/jobs/1/attempts/1/finish",
        Some(&token),
        r#"{"exit_code":0}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        get_json(&url, "/api/v1/jobs/1", Some(&token))["state"],
        "queued"
    );
}

/// A 4-GPU job is not starved by 1-GPU jobs submitted after it: it reserves
/// the free GPUs of the host it waits for.
#[test]
fn a_big_job_is_not_starved_by_small_ones_behind_it() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "4xA100-80GB"]);
    let first = submit(&env, &url, &["--gpus", "1", "--", "sleep", "1"]);
    wait_state(&url, first, "running", Duration::from_secs(20));
    let big = submit(&env, &url, &["--gpus", "4", "--", "sleep", "0.2"]);
    let small: Vec<u64> = (0..4)
        .map(|_| submit(&env, &url, &["--gpus", "1", "--", "true"]))
        .collect();
    wait_for(Duration::from_secs(5), || {
        job(&url, big)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reserved"))
    });
    // While the big job waits, none of the small ones starts.
    for s in &small {
        assert_eq!(job(&url, *s)["state"], "queued");
    }
    let b = wait_state(&url, big, "succeeded", Duration::from_secs(20));
    for s in &small {
        let j = wait_state(&url, *s, "succeeded", Duration::from_secs(20));
        assert!(
            j["started_ns"].as_i64() > b["started_ns"].as_i64(),
            "small job {s} started before the big one"
        );
    }
}

/// The event stream tells a live view about a job as it moves.
#[test]
fn server_sent_events_report_job_changes() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        env.token()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let id = submit(&env, &url, &["--", "true"]);
    let mut states = Vec::new();
    while !states.contains(&"succeeded".to_string()) {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(data) = line.trim().strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            if v["type"] == "job" && v["id"] == id {
                states.push(v["state"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(
        states.first().map(String::as_str),
        Some("queued"),
        "{states:?}"
    );
    assert!(states.contains(&"running".to_string()), "{states:?}");
}
