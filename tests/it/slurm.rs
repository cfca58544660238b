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

#[test]
fn an_array_sweep() {
    let (env, slurm, _d, url) = setup(&["--no-agent"]);
    let spans = env.path("spans");
    let script = format!(
        "echo \"task x=$2 gpus=$CUDA_VISIBLE_DEVICES job=$TRAINYARD_JOB_ID array=$SLURM_ARRAY_TASK_ID\"; \
         echo \"$(date +%s%N) 1\" >> {s}; sleep 2; echo \"$(date +%s%N) -1\" >> {s}; \
         [ \"$2\" != 3 ] || exit 3",
        s = spans.display()
    );
    let out = env.json(&[
        "submit",
        "--server",
        &url,
        "--on",
        "hpc",
        "--gpus",
        "1",
        "--gpu-model",
        "A100",
        "--sweep",
        "x=0,1,2,3,4",
        "--max-parallel",
        "2",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ]);
    let ids: Vec<u64> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    for (x, id) in ids.iter().enumerate() {
        let want = if x == 3 { "failed" } else { "succeeded" };
        let j = wait_state(&url, *id, want, Duration::from_secs(120));
        assert_eq!(j["agent"], "slurm:hpc", "{j:#}");
        if x == 3 {
            assert_eq!(j["exit_code"], 3, "{j:#}");
        }
        // Each array task ran its own job: its value, its id, a GPU.
        let log = logs(&env, &url, *id);
        assert!(
            log.contains(&format!("task x={x} gpus="))
                && log.contains(&format!("job={id} array={x}")),
            "job {id}: {log}"
        );
        assert!(!log.contains("gpus= "), "no GPU for job {id}: {log}");
    }

    // ONE sbatch: the five tasks of one array, throttled to 2, and no
    // other SLURM job.
    let o = slurm.cmd(
        "squeue",
        &["-h", "-r", "-t", "all", "-O", "JobArrayID:|,Name:|"],
    );
    let rows: Vec<(String, String)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    assert_eq!(rows.len(), 5, "{rows:?}");
    let base = rows[0].0.split('_').next().unwrap().to_string();
    let mut tasks: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    tasks.sort();
    assert_eq!(
        tasks,
        (0..5).map(|i| format!("{base}_{i}")).collect::<Vec<_>>()
    );
    let name = format!("ty-sweep-{}-{}", ids[0], ids[4]);
    assert!(rows.iter().all(|r| r.1 == name), "{rows:?}");
    let show = slurm.cmd("scontrol", &["show", "job", &format!("{base}_0")]);
    let show = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(show.contains("ArrayTaskThrottle=2"), "{show}");

    // Never more than 2 at once.
    let mut ev: Vec<(u128, i32)> = std::fs::read_to_string(&spans)
        .unwrap()
        .lines()
        .map(|l| {
            let (t, d) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), d.parse().unwrap())
        })
        .collect();
    ev.sort_by_key(|e| (e.0, e.1));
    let (mut now, mut most) = (0, 0);
    for (_, d) in ev {
        now += d;
        most = most.max(now);
    }
    assert!((1..=2).contains(&most), "{most} tasks ran at once");
}

/// SLURM's accounting (`sacct`, through slurmdbd and MariaDB started by
/// the test) gives each cluster attempt's allocation: `AllocTRES`
/// gres/gpu × elapsed, from SLURM's start — not the time it waited in
/// SLURM's queue — and `trainyard usage` counts exactly that, under the
/// host `slurm:hpc`.
#[test]
fn cluster_gpu_hours_come_from_sacct() {
    let env = Env::new();
    let slurm = Slurm::start_with_accounting(&env);
    let (_d, url) = env.up("up", &["--no-agent"]);
    env.ok(&[
        "cluster",
        "add",
        "hpc",
        "--slurm",
        "--gres-type",
        "A100=a100",
        "--dir",
        &slurm.jobs_dir(),
        "--server",
        &url,
    ]);
    // `big` takes all four GPUs; `small` waits in SLURM's queue for it.
    let big = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--project",
            "big",
            "--gpus",
            "4",
            "--",
            "sleep",
            "4",
        ],
    );
    let small = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--project",
            "small",
            "--gpus",
            "2",
            "--",
            "sleep",
            "2",
        ],
    );
    for id in [big, small] {
        wait_state(&url, id, "succeeded", Duration::from_secs(90));
    }
    let sid = |id| slurm_id(&slurm, &url, id);
    let (sbig, ssmall) = (sid(big), sid(small));
    let elapsed = |s: &str| -> f64 {
        let o = slurm.cmd(
            "sacct",
            &["-X", "-P", "-n", "-j", s, "--format=ElapsedRaw,AllocTRES"],
        );
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let (e, tres) = out.trim().split_once('|').unwrap_or(("", ""));
        assert!(tres.contains("gres/gpu="), "sacct: {out}");
        e.parse().unwrap_or_else(|_| panic!("sacct: {out:?}"))
    };

    let end = Instant::now() + Duration::from_secs(90);
    let (r, eb, es) = loop {
        let r = env.json(&[
            "usage", "--server", &url, "--by", "project", "--since", "today",
        ]);
        let got = |p: &str| {
            r["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|row| row["key"] == serde_json::json!([p]))
                .and_then(|row| row["allocated_gpu_h"].as_f64())
                .map(|h| (h * 3600.0 * 1000.0).round() / 1000.0)
        };
        let (eb, es) = (elapsed(&sbig), elapsed(&ssmall));
        if got("big") == Some(4.0 * eb) && got("small") == Some(2.0 * es) {
            break (r, eb, es);
        }
        assert!(
            Instant::now() < end,
            "usage never matched sacct (big {eb} s × 4, small {es} s × 2): {r:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(eb >= 4.0 && es >= 2.0, "{eb} {es}");
    // `small` waited for `big` in SLURM's queue: that wait is not counted.
    let j = job(&url, small);
    let a = &j["attempt_log"][0];
    let seen_s = (a["finished_ns"].as_i64().unwrap_or(0) - a["assigned_ns"].as_i64().unwrap_or(0))
        as f64
        / 1e9;
    assert!(
        seen_s > es + 2.0,
        "small should have waited for big (held {es} s, {seen_s} s from submission): {j:#}"
    );
    let hosts = env.json(&[
        "usage", "--server", &url, "--by", "host", "--since", "today",
    ]);
    let row = hosts["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == serde_json::json!(["slurm:hpc"]))
        .unwrap_or_else(|| panic!("no slurm:hpc row: {hosts:#}"));
    assert_eq!(row["jobs"], 2, "{hosts:#}");
    let total =
        (hosts["total"]["allocated_gpu_h"].as_f64().unwrap() * 3600.0 * 1000.0).round() / 1000.0;
    assert_eq!(total, 4.0 * eb + 2.0 * es, "{r:#}");
}

/// A job's dataset inputs are pulled on the node by the cluster's own
/// `trainyard` (`data pull NAME@REF` from the lab's remote, here a
/// directory remote, into a Trainyard home of the node's own), after a
/// check that it is this version; without the binary the job fails
/// saying so.
#[test]
fn dataset_inputs_are_pulled_on_the_node() {
    let (env, _slurm, _d, url) = setup(&["--no-agent"]);
    let data = env.path("imagenet");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "pixels from the lab\n").unwrap();
    env.ok(&[
        "data",
        "add",
        data.to_str().unwrap(),
        "--name",
        "imagenet",
        "--tag",
        "v1",
    ]);
    let bucket = env.path("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let remote = format!("file://{}", bucket.display());
    env.ok(&["remote", "add", "lab", &remote, "--default"]);
    env.ok(&["data", "push", "imagenet@v1"]);
    // The node's Trainyard home knows the remote, not the dataset.
    let node_home = env.path("node-home");
    let o = env
        .cmd()
        .env("TRAINYARD_HOME", &node_home)
        .args(["remote", "add", "lab", &remote, "--default"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_trainyard"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    let home_env = format!("TRAINYARD_HOME={}", node_home.display());
    let ok = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--input",
            "imagenet@v1",
            "--env",
            &home_env,
            "--env",
            &format!("PATH={bin_dir}:/usr/bin:/bin"),
            "--shell",
            "--",
            "echo \"in $TRAINYARD_INPUT_IMAGENET\"; cat \"$TRAINYARD_INPUT_IMAGENET/hello.txt\"",
        ],
    );
    let j = wait_state(&url, ok, "succeeded", Duration::from_secs(90));
    let out = logs(&env, &url, ok);
    assert!(out.contains("pixels from the lab"), "{j:#}\n{out}");
    assert!(out.contains(&format!("/inputs/{ok}-1/imagenet")), "{out}");

    // No trainyard on the node's PATH: a clear failure, before the command.
    let bare = submit(
        &env,
        &url,
        &[
            "--on",
            "hpc",
            "--input",
            "imagenet@v1",
            "--env",
            &home_env,
            "--env",
            "PATH=/usr/bin:/bin",
            "--",
            "echo",
            "ran-anyway",
        ],
    );
    wait_state(&url, bare, "failed", Duration::from_secs(90));
    let out = logs(&env, &url, bare);
    assert!(out.contains("no trainyard binary is on the PATH"), "{out}");
    assert!(!out.contains("ran-anyway"), "{out}");
}
