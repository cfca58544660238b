//! The SLURM backend against a real single-node cluster (slurmctld +
//! slurmd from Debian's slurm-wlm, started by `support::slurm`): jobs
//! submitted with `submit --on`, followed by the daemon's batched polls,
//! cancelled with scancel, ended by a time limit, requeued after a node
//! failure, re-attached after a daemon restart, marked unreachable while
//! the controller is down, and overflow from a saturated LAN agent.
//!
//! `sacct` needs slurmdbd + MariaDB, which these tests do not start: the
//! follower reads final states from `squeue -t all` (kept `MinJobAge`
//! = 300 s), which covers every case here.

use std::time::{Duration, Instant};

use crate::support::jobs::{job, logs, submit, wait_state};
use crate::support::slurm::Slurm;
use crate::support::{get_json, Env, Proc};

fn setup(agent: &[&str]) -> (Env, Slurm, Proc, String) {
    let env = Env::new();
    let slurm = Slurm::start(&env);
    let mut args = vec![];
    args.extend_from_slice(agent);
    let (d, url) = env.up("up", &args);
    env.ok(&[
        "cluster",
        "add",
        "hpc",
        "--slurm",
        "--partition",
        "debug",
        "--gres-type",
        "A100=a100",
        "--dir",
        &slurm.jobs_dir(),
        "--server",
        &url,
    ]);
    (env, slurm, d, url)
}

fn slurm_id(slurm: &Slurm, url: &str, id: u64) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(url, id);
        if let Some(r) = j["reason"].as_str() {
            for prefix in ["submitted as SLURM job ", "running as SLURM job "] {
                if let Some(rest) = r.strip_prefix(prefix) {
                    return rest.split(' ').next().unwrap_or("").to_string();
                }
            }
        }
        // The reason moves on once SLURM runs it: find it by name instead.
        let out = slurm.cmd("squeue", &["-h", "-t", "all", "-O", "JobID:|,Name:|"]);
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = l.split('|').collect();
            if f.len() > 1 && f[1].starts_with(&format!("ty-{id}-")) {
                return f[0].trim().to_string();
            }
        }
        assert!(Instant::now() < end, "job {id} never got a SLURM id: {j:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file below `dir`, tolerating files that come and go (slurmctld
/// rewrites its state files as it runs).
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn cluster_add_ls_test_rm() {
    let (env, slurm, _d, url) = setup(&["--no-agent"]);
    let ls = env.json(&["cluster", "ls", "--server", &url]);
    assert_eq!(ls[0]["name"], "hpc");
    assert_eq!(ls[0]["partition"], "debug");
    assert_eq!(ls[0]["gres_types"]["A100"], "a100");

    let t = env.json(&["cluster", "test", "hpc", "--server", &url]);
    assert_eq!(t["ok"], true, "{t:#}");
    let gpus = t["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "gpus")
        .unwrap()
        .clone();
    assert!(
        gpus["detail"].as_str().unwrap().contains("4x a100"),
        "{gpus}"
    );

    // The pool, from sinfo.
    let pools = get_json(&url, "/api/v1/clusters/pools", None);
    assert_eq!(pools[0]["pool"]["partition"], "debug", "{pools}");
    assert_eq!(pools[0]["pool"]["gpus_total"], 4, "{pools}");
    let table = env.ok(&["gpus", "--server", &url]);
    assert!(
        table.contains("slurm:hpc") && table.contains("partition debug (up), 4x a100: 4 idle"),
        "{table}"
    );

    // A partition that does not exist fails the test, naming it.
    env.ok(&[
        "cluster",
        "add",
        "bad",
        "--slurm",
        "--partition",
        "nope",
        "--server",
        &url,
    ]);
    let err = env.fail(&["cluster", "test", "bad", "--server", &url]);
    assert!(err.contains("some checks failed"), "{err}");
    let o = env.run(&["--json", "cluster", "test", "bad", "--server", &url]);
    assert!(
        !o.status.success(),
        "a failed check exits non-zero with --json too"
    );
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["ok"], false);
    assert!(t.to_string().contains("no partition \\\"nope\\\""), "{t}");

    // Bad input: a clear error, nothing stored.
    let err = env.fail(&[
        "cluster",
        "add",
        "x",
        "--slurm",
        "--gres-type",
        "A100",
        "--server",
        &url,
    ]);
    assert!(err.contains("gres_types"), "{err}");
    let err = env.fail(&["cluster", "add", "hpc", "--slurm", "--server", &url]);
    assert!(err.contains("exists"), "{err}");
    let err = env.fail(&["submit", "--server", &url, "--on", "nope", "--", "true"]);
    assert!(err.contains("no cluster \"nope\""), "{err}");

    env.ok(&["cluster", "rm", "bad", "--server", &url]);
    let ls = env.json(&["cluster", "ls", "--server", &url]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    drop(slurm);
}

#[test]
fn jobs_run_fail_and_are_cancelled_on_slurm() {
    let (env, slurm, _d, url) = setup(&["--no-agent"]);
    // Only the CLI has the value (the daemon started before).
    env.vars
        .borrow_mut()
        .push(("TY_SECRET_TOKEN".into(), "hunter2-value".into()));
    let ok = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--gpus",
            "2",
            "--gpu-model",
            "A100",
            "--env",
            "GREETING=hello there",
            "--secret-env",
            "TY_SECRET_TOKEN",
            "--shell",
            "--",
            "echo \"$GREETING gpus=$CUDA_VISIBLE_DEVICES job=$TRAINYARD_JOB_ID\"; \
             test \"${TY_SECRET_TOKEN%-value}\" = hunter2 && echo secret-ok",
        ],
    );
    let failing = submit(
        &env,
        &url,
        &["--on", "hpc", "--shell", "--", "echo bye; exit 3"],
    );
    let long = submit(&env, &url, &["--on", "hpc", "--", "sleep", "300"]);

    let j = wait_state(&url, ok, "succeeded", Duration::from_secs(60));
    assert_eq!(j["agent"], "slurm:hpc", "{j:#}");
    let out = logs(&env, &url, ok);
    assert!(
        out.contains(&format!("hello there gpus=0,1 job={ok}")),
        "{out}"
    );
    assert!(out.contains("secret-ok"), "{out}");

    let j = wait_state(&url, failing, "failed", Duration::from_secs(60));
    assert_eq!(j["exit_code"], 3, "{j:#}");
    assert!(logs(&env, &url, failing).contains("bye"));

    // The secret value is nowhere on disk in the cluster's job directory
    // (the batch scripts and outputs) nor in the spec the API returns.
    let mut scripts = 0;
    for f in files(&slurm.dir) {
        let text = std::fs::read(&f).unwrap_or_default();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "script" {
            scripts += 1;
        }
        if f.starts_with(slurm.jobs_dir()) || name == "script" {
            assert!(
                !String::from_utf8_lossy(&text).contains("hunter2-value"),
                "secret in {}",
                f.display()
            );
        }
    }
    assert!(scripts > 0, "SLURM keeps the batch scripts it was given");
    assert!(!job(&url, ok).to_string().contains("hunter2-value"));

    // Cancel: the daemon runs scancel; SLURM reports the job cancelled.
    wait_state(&url, long, "running", Duration::from_secs(60));
    let sid = slurm_id(&slurm, &url, long);
    env.ok(&["cancel", "--server", &url, &long.to_string()]);
    assert_eq!(job(&url, long)["state"], "cancelled");
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        let o = slurm.cmd("squeue", &["-h", "-t", "all", "-j", &sid, "-o", "%T"]);
        let st = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if st == "CANCELLED" {
            break;
        }
        assert!(
            Instant::now() < end,
            "SLURM job {sid} is {st}, not cancelled"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(job(&url, long)["state"], "cancelled");
}

#[test]
fn a_time_limit_ends_the_job_as_slurm_says() {
    let (env, _slurm, _d, url) = setup(&["--no-agent"]);
    let id = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--timeout",
            "1m",
            "--shell",
            "--",
            "trap 'echo got-usr1' USR1; echo started; sleep 200 & wait; sleep 200",
        ],
    );
    let j = wait_state(&url, id, "failed", Duration::from_secs(180));
    let detail = get_json(&url, &format!("/api/v1/jobs/{id}"), None);
    let err = detail["attempt_log"][0]["error"].as_str().unwrap_or("");
    assert!(err.contains("TIMEOUT"), "{detail:#}");
    assert!(logs(&env, &url, id).contains("started"), "{j:#}");
}

#[test]
fn a_node_failure_requeues_per_the_jobs_attempts() {
    let (env, mut slurm, _d, url) = setup(&["--no-agent"]);
    let marker = env.path("attempts");
    let id = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--max-attempts",
            "2",
            "--shell",
            "--",
            &format!(
                "echo \"attempt $TRAINYARD_ATTEMPT\" >> {m}; \
                 if [ \"$TRAINYARD_ATTEMPT\" = 1 ]; then sleep 300; fi; echo finished",
                m = marker.display()
            ),
        ],
    );
    wait_state(&url, id, "running", Duration::from_secs(60));
    let sid = slurm_id(&slurm, &url, id);
    // The node fails: slurmd and the job's step daemons die.
    slurm.kill_slurmd();
    for pid in slurm.step_pids(&sid) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // SLURM notices after SlurmdTimeout (10 s) and ends it NODE_FAIL; the
    // daemon records a failed attempt and submits attempt 2, which waits
    // for the node.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(&url, id);
        if j["attempts"] == 2 {
            break;
        }
        assert!(Instant::now() < end, "no second attempt: {j:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    slurm.start_slurmd();
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(120));
    assert_eq!(j["attempts"], 2);
    let detail = get_json(&url, &format!("/api/v1/jobs/{id}"), None);
    let first = &detail["attempt_log"][0];
    assert_eq!(first["state"], "failed", "{detail:#}");
    assert!(
        first["error"].as_str().unwrap().contains("NODE_FAIL"),
        "{detail:#}"
    );
    assert!(logs(&env, &url, id).contains("finished"));
}

#[test]
fn the_daemon_reattaches_after_a_restart_and_never_invents_a_state() {
    let env = Env::new();
    let mut slurm = Slurm::start(&env);
    let (mut d, url) = env.up("up", &["--no-agent"]);
    env.ok(&[
        "cluster",
        "add",
        "hpc",
        "--slurm",
        "--dir",
        &slurm.jobs_dir(),
        "--server",
        &url,
    ]);
    let go = env.path("go");
    let id = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--shell",
            "--",
            &format!(
                "echo before; while [ ! -e {g} ]; do sleep 0.2; done; echo after",
                g = go.display()
            ),
        ],
    );
    wait_state(&url, id, "running", Duration::from_secs(60));
    let sid = slurm_id(&slurm, &url, id);

    // The daemon dies mid-job and comes back (another port): it finds the
    // job by its SLURM id.
    d.kill9();
    let (mut d2, url2) = env.up("up2", &["--no-agent"]);
    assert_eq!(job(&url2, id)["state"], "running");

    // The controller goes away: the job stays running, marked unreachable.
    slurm.stop_ctld();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(&url2, id);
        assert_eq!(j["state"], "running", "{j:#}");
        if j["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cluster unreachable"))
        {
            break;
        }
        assert!(Instant::now() < end, "never marked unreachable: {j:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let ls = env.json(&["cluster", "ls", "--server", &url2]);
    assert!(ls[0]["unreachable"].is_string(), "{ls:#}");

    // Back: the job finishes and is seen.
    slurm.start_ctld(false);
    std::fs::write(&go, "").unwrap();
    let j = wait_state(&url2, id, "succeeded", Duration::from_secs(150));
    assert_eq!(j["attempts"], 1, "one attempt, never resubmitted: {j:#}");
    let out = logs(&env, &url2, id);
    assert!(out.contains("before") && out.contains("after"), "{out}");
    let o = slurm.cmd("squeue", &["-h", "-t", "all", "-o", "%i"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        sid,
        "exactly one SLURM job"
    );
    d2.term();
}

#[test]
fn a_lan_job_overflows_to_the_cluster() {
    let (env, _slurm, _d, url) = setup(&["--fake-gpus", "1xA100-80GB"]);
    let hog = submit(&env, &url, &["--gpus", "1", "--", "sleep", "120"]);
    wait_state(&url, hog, "running", Duration::from_secs(30));
    let id = submit(
        &env,
        &url,
        &[
            "--gpus",
            "1",
            "--gpu-model",
            "A100",
            "--overflow-after",
            "2s",
            "--shell",
            "--",
            "echo overflowed gpus=$CUDA_VISIBLE_DEVICES",
        ],
    );
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(60));
    assert_eq!(j["agent"], "slurm:hpc", "{j:#}");
    assert!(logs(&env, &url, id).contains("overflowed gpus=0"));
    assert_eq!(job(&url, hog)["state"], "running");
    env.ok(&["cancel", "--server", &url, &hog.to_string()]);
}
