//! Crashes and job hygiene on the agent side, with real `trainyard up` and
//! `trainyard agent` processes: an agent or daemon killed with SIGKILL
//! never lets a job's old attempt run alongside its retry (checked by a
//! thread that watches every process of the test's jobs in /proc), jobs
//! start from a clean environment, and with cgroup v2 a cancel also reaches
//! processes that left the job's process group.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::jobs::{submit, wait_state};
use crate::support::{free_port, get_json, wait_for, Env, Proc};

fn agent(env: &Env, log: &str, url: &str, extra: &[&str]) -> Proc {
    let mut a = vec![
        "agent",
        "--server",
        url,
        "--name",
        "a",
        "--fake-gpus",
        "4xA100-80GB",
        "--grace",
        "1s",
    ];
    a.extend_from_slice(extra);
    env.spawn(log, &a)
}

/// `/proc/PID/stat` state letter.
fn state(pid: &str) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

/// Watches /proc for processes whose environment has `TYTAG=<tag>` and
/// records, per job, which attempts had live processes at the same moment.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<WatchReport>>,
}

#[derive(Debug, Default)]
struct WatchReport {
    /// Moments at which one job had processes of two attempts.
    overlaps: Vec<String>,
    /// Attempts seen alive per job.
    seen: BTreeMap<String, BTreeSet<String>>,
    samples: u64,
}

impl Watch {
    fn start(tag: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let needle = format!("TYTAG={tag}");
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rep = WatchReport::default();
            let t0 = Instant::now();
            while !s2.load(Ordering::Relaxed) {
                let mut alive: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = e.file_name().to_string_lossy().to_string();
                    if !pid.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                        continue;
                    };
                    let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
                    if !vars.contains(&needle.as_bytes()) {
                        continue;
                    }
                    if matches!(state(&pid), None | Some('Z') | Some('X')) {
                        continue;
                    }
                    let var = |name: &str| {
                        vars.iter()
                            .find_map(|v| v.strip_prefix(format!("{name}=").as_bytes()))
                            .map(|v| String::from_utf8_lossy(v).to_string())
                            .unwrap_or_default()
                    };
                    alive
                        .entry(var("TRAINYARD_JOB_ID"))
                        .or_default()
                        .insert(var("TRAINYARD_ATTEMPT"));
                }
                for (job, attempts) in &alive {
                    if attempts.len() > 1 {
                        rep.overlaps.push(format!(
                            "{:?}: job {job} attempts {attempts:?} alive together",
                            t0.elapsed()
                        ));
                    }
                    rep.seen
                        .entry(job.clone())
                        .or_default()
                        .extend(attempts.iter().cloned());
                }
                rep.samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            rep
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("watch thread")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Kill every process of the test's jobs (for a failing test's clean-up).
fn kill_tagged(tag: &str) {
    let needle = format!("TYTAG={tag}");
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                if let Ok(p) = pid.parse::<i32>() {
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
    }
}

struct KillTagged(String);
impl Drop for KillTagged {
    fn drop(&mut self) {
        kill_tagged(&self.0);
    }
}

/// A job whose first attempt works for a long time and whose later
/// attempts finish at once; every attempt notes its start in `marks`.
fn submit_long(env: &Env, url: &str, tag: &str, marks: &std::path::Path) -> u64 {
    let script = format!(
        "echo \"start $TRAINYARD_JOB_ID $TRAINYARD_ATTEMPT $$\" >> {m}; \
         if [ \"$TRAINYARD_ATTEMPT\" = 1 ]; then sleep 60; else sleep 0.3; fi",
        m = marks.display()
    );
    let tag_env = format!("TYTAG={tag}");
    submit(
        env,
        url,
        &[
            "--gpus",
            "1",
            "--max-attempts",
            "2",
            "--env",
            &tag_env,
            "--shell",
            "--",
            &script,
        ],
    )
}

/// The PIDs of attempt 1 of each job, from the marks file.
fn first_attempt_pids(marks: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(marks)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() == 4 && f[2] == "1").then(|| f[3].parse().ok())?
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    !matches!(state(&pid.to_string()), None | Some('Z') | Some('X'))
}

/// An agent killed with SIGKILL while four jobs run leaves their processes
/// behind; the restarted agent stops them before it takes new work, so the
/// retries never run alongside them (process-group fallback: --no-cgroup).
#[test]
fn a_restarted_agent_stops_what_its_killed_run_left_before_new_work() {
    let env = Env::new();
    let tag = format!("agent-restart-{}", std::process::id());
    let _cleanup = KillTagged(tag.clone());
    let (_d, url) = env.up("up", &["--no-agent", "--lease", "3s"]);
    let mut a1 = agent(&env, "agent1", &url, &["--no-cgroup"]);
    let marks = env.path("marks");
    let watch = Watch::start(&tag);
    let ids: Vec<u64> = (0..4)
        .map(|_| submit_long(&env, &url, &tag, &marks))
        .collect();
    for &id in &ids {
        wait_state(&url, id, "running", Duration::from_secs(20));
    }
    wait_for(Duration::from_secs(10), || {
        first_attempt_pids(&marks).len() == 4
    });
    let old = first_attempt_pids(&marks);
    assert!(old.iter().all(|&p| alive(p)));
    let records = env.home.join("agent/a/attempts");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 4);
    a1.kill9();
    // Orphans: the jobs outlive their agent.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        old.iter().all(|&p| alive(p)),
        "the jobs died with the agent"
    );
    let mut a2 = agent(&env, "agent2", &url, &["--no-cgroup"]);
    for &id in &ids {
        let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
        let attempts = j["attempt_log"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{j:#}");
        let first = &attempts[0];
        assert_ne!(first["state"], "running", "{j:#}");
    }
    let rep = watch.finish();
    assert!(rep.samples > 10);
    assert!(rep.overlaps.is_empty(), "{:#?}", rep.overlaps);
    assert!(old.iter().all(|&p| !alive(p)), "an old attempt still runs");
    assert_eq!(rep.seen.len(), 4, "{rep:?}");
    // Everything was reported: no record is left.
    wait_for(Duration::from_secs(10), || {
        std::fs::read_dir(&records).map_or(true, |d| d.count() == 0)
    });
    let log = a2.stderr();
    assert!(log.contains("left attempts; stopping them"), "{log}");
    assert!(log.contains("process groups only"), "{log}");
    a2.term();
}

/// The daemon killed with SIGKILL and kept down longer than the lease: the
/// agent stops its attempts itself before the lease ends, so when the
/// daemon comes back and requeues them, no job runs twice at once.
#[test]
fn an_agent_without_its_daemon_stops_jobs_before_the_lease_ends() {
    let env = Env::new();
    let tag = format!("daemon-down-{}", std::process::id());
    let _cleanup = KillTagged(tag.clone());
    let port = free_port().to_string();
    let up_args = ["--no-agent", "--lease", "3s", "--port", port.as_str()];
    let (mut d, url) = env.up("up1", &up_args);
    let mut a = agent(&env, "agent", &url, &[]);
    let marks = env.path("marks");
    let watch = Watch::start(&tag);
    let ids: Vec<u64> = (0..3)
        .map(|_| submit_long(&env, &url, &tag, &marks))
        .collect();
    for &id in &ids {
        wait_state(&url, id, "running", Duration::from_secs(20));
    }
    wait_for(Duration::from_secs(10), || {
        first_attempt_pids(&marks).len() == 3
    });
    let old = first_attempt_pids(&marks);
    d.kill9();
    let down = Instant::now();
    // Within the lease the jobs keep running (a short outage loses nothing).
    std::thread::sleep(Duration::from_millis(1200));
    assert!(old.iter().all(|&p| alive(p)), "jobs stopped too early");
    // By 0.8 of the lease they are gone.
    wait_for(Duration::from_secs(3), || old.iter().all(|&p| !alive(p)));
    assert!(
        down.elapsed() < Duration::from_millis(2900),
        "{:?}",
        down.elapsed()
    );
    std::thread::sleep(Duration::from_millis(4000).saturating_sub(down.elapsed()));
    let (_d2, url2) = env.up("up2", &up_args);
    assert_eq!(url, url2);
    for &id in &ids {
        let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
        assert_eq!(j["attempt_log"].as_array().unwrap().len(), 2, "{j:#}");
    }
    let rep = watch.finish();
    assert!(rep.overlaps.is_empty(), "{:#?}", rep.overlaps);
    assert_eq!(rep.seen.len(), 3, "{rep:?}");
    let log = a.stderr();
    assert!(log.contains("the lease could not be renewed"), "{log}");
    a.term();
}

/// Jobs see a clean environment: the base set, the agent's pass-through
/// patterns, their own `--env` and Trainyard's variables; never the daemon
/// token, even when a pattern names it, nor other secrets of the agent.
#[test]
fn jobs_start_from_a_clean_environment() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    let token = env.token();
    let mut c = env.cmd();
    c.args([
        "agent",
        "--server",
        &url,
        "--name",
        "a",
        "--fake-gpus",
        "1xA100-80GB",
        "--pass-env",
        "TRAINYARD_*",
    ])
    .env("RUST_LOG", "info")
    .env("TRAINYARD_TOKEN", &token)
    .env("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    .env("WANDB_API_KEY", "wandb-secret-value")
    .env("UNLISTED_SETTING", "unlisted-value")
    .env("HF_HOME", "/hf/home")
    .env("HTTPS_PROXY", "http://proxy:3128")
    .env("LC_ALL", "C")
    .env("TRAINYARD_PASS_ENV", "IGNORED_WHEN_FLAGS_ARE_GIVEN")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(env.path("agent.stderr")).unwrap());
    let mut a = Proc {
        child: c.spawn().unwrap(),
        log: env.path("agent.stderr"),
    };
    let id = submit(
        &env,
        &url,
        &["--gpus", "1", "--env", "OWN=mine", "--", "env"],
    );
    wait_state(&url, id, "succeeded", Duration::from_secs(20));
    let out = env.ok(&["logs", "--server", &url, &id.to_string()]);
    let vars: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    for (k, v) in [
        ("OWN", "mine"),
        ("LC_ALL", "C"),
        ("CUDA_VISIBLE_DEVICES", "0"),
        ("TRAINYARD_JOB_ID", id.to_string().as_str()),
        ("TRAINYARD_ATTEMPT", "1"),
        ("TRAINYARD_AGENT", "a"),
    ] {
        assert_eq!(vars.get(k), Some(&v), "{k} in {out}");
    }
    assert!(vars.contains_key("PATH"), "{out}");
    // TRAINYARD_* passes the agent's other TRAINYARD_ variables, not the token.
    assert!(vars.contains_key("TRAINYARD_HOME"), "{out}");
    for k in [
        "TRAINYARD_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "WANDB_API_KEY",
        "UNLISTED_SETTING",
        "HF_HOME",
        "HTTPS_PROXY",
    ] {
        assert!(!vars.contains_key(k), "{k} leaked into the job: {out}");
    }
    assert!(!out.contains(&token), "the daemon token leaked: {out}");
    a.term();

    // TRAINYARD_PASS_ENV (comma separated) when no flag is given.
    let mut c = env.cmd();
    c.args([
        "agent",
        "--server",
        &url,
        "--name",
        "b",
        "--fake-gpus",
        "1xRTX4090-24GB",
    ])
    .env("TRAINYARD_TOKEN", &token)
    .env("HF_HOME", "/hf/home")
    .env("HTTPS_PROXY", "http://proxy:3128")
    .env("TRAINYARD_PASS_ENV", "HF_*,*_PROXY,TRAINYARD_TOKEN")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(env.path("agent-b.stderr")).unwrap());
    let mut b = Proc {
        child: c.spawn().unwrap(),
        log: env.path("agent-b.stderr"),
    };
    // Agent a is gone but within its lease: the job must go to b.
    wait_for(Duration::from_secs(20), || {
        get_json(&url, "/api/v1/agents", None)
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "b")
    });
    let id = submit(
        &env,
        &url,
        &["--gpus", "1", "--gpu-model", "RTX4090", "--", "env"],
    );
    wait_state(&url, id, "succeeded", Duration::from_secs(20));
    let out = env.ok(&["logs", "--server", &url, &id.to_string()]);
    assert!(out.contains("HF_HOME=/hf/home\n"), "{out}");
    assert!(out.contains("HTTPS_PROXY=http://proxy:3128\n"), "{out}");
    assert!(!out.contains("TRAINYARD_TOKEN"), "{out}");
    assert!(!out.contains(&token), "{out}");
    b.term();
    // A pattern that is not a name is refused at start.
    let e = env.fail(&["agent", "--server", &url, "--pass-env", "A=B"]);
    assert!(e.contains("bad --pass-env pattern \"A=B\""), "{e}");
}

/// With cgroup v2, cancel kills a grandchild that left the job's process
/// group with setsid; without it (--no-cgroup) the process group is still
/// stopped. Skipped, with a message, where cgroup v2 is not writable.
#[test]
fn cancel_reaches_a_setsid_grandchild_through_the_cgroup() {
    if let Err(e) = trainyard::agent::cgroup::Cgroups::detect() {
        eprintln!(
            "SKIPPED cancel_reaches_a_setsid_grandchild_through_the_cgroup: needs a writable cgroup v2 ({e})"
        );
        return;
    }
    let env = Env::new();
    let tag = format!("setsid-{}", std::process::id());
    let _cleanup = KillTagged(tag.clone());
    let (d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB", "--grace", "1s"]);
    let pidfile = env.path("escaped.pid");
    let tag_env = format!("TYTAG={tag}");
    let script = format!(
        "setsid sleep 300 & echo $! > {}; sleep 300",
        pidfile.display()
    );
    let id = submit(
        &env,
        &url,
        &["--gpus", "1", "--env", &tag_env, "--shell", "--", &script],
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
    // It really left the group (and the session).
    let sid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = sid.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(f[3], pid.to_string(), "setsid did not make a new session");
    env.ok(&["cancel", "--server", &url, &id.to_string()]);
    wait_for(Duration::from_secs(10), || !alive(pid));
    assert!(
        d.stderr().contains("one cgroup v2 per attempt"),
        "{}",
        d.stderr()
    );
    // No cgroup of this daemon's agent is left behind.
    let base = trainyard::agent::cgroup::Cgroups::detect().unwrap();
    let prefix = format!("trainyard-{}-", d.pid());
    wait_for(Duration::from_secs(5), || {
        std::fs::read_dir(base.base())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(&prefix))
    });
}

/// `trainyard up` killed with SIGKILL takes its embedded agent with it, not
/// the jobs that agent ran. Restarted after the lease, it stops them before
/// its server starts, so the requeued jobs, which another agent takes at
/// once, never run alongside them (they take 1.5 s to exit on SIGTERM).
#[test]
fn a_restarted_daemon_stops_its_embedded_agents_jobs_before_serving() {
    let env = Env::new();
    let tag = format!("up-restart-{}", std::process::id());
    let _cleanup = KillTagged(tag.clone());
    let port = free_port().to_string();
    let up_args = [
        "--lease",
        "2s",
        "--port",
        port.as_str(),
        "--agent-name",
        "emb",
        "--fake-gpus",
        "2xA100-80GB",
        "--grace",
        "3s",
    ];
    let (mut d, url) = env.up("up1", &up_args);
    let marks = env.path("marks");
    let watch = Watch::start(&tag);
    let script = format!(
        "echo \"start $TRAINYARD_JOB_ID $TRAINYARD_ATTEMPT $$\" >> {m}; \
         trap 'sleep 1.5; exit 1' TERM; \
         if [ \"$TRAINYARD_ATTEMPT\" = 1 ]; then sleep 60 & wait; else sleep 0.3; fi",
        m = marks.display()
    );
    let tag_env = format!("TYTAG={tag}");
    let ids: Vec<u64> = (0..2)
        .map(|_| {
            submit(
                &env,
                &url,
                &[
                    "--gpus",
                    "1",
                    "--max-attempts",
                    "2",
                    "--env",
                    &tag_env,
                    "--shell",
                    "--",
                    &script,
                ],
            )
        })
        .collect();
    for &id in &ids {
        assert_eq!(
            wait_state(&url, id, "running", Duration::from_secs(20))["agent"],
            "emb"
        );
    }
    wait_for(Duration::from_secs(10), || {
        first_attempt_pids(&marks).len() == 2
    });
    let old = first_attempt_pids(&marks);
    // Another host, ready to take whatever is requeued.
    let mut b = env.spawn(
        "agent-b",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "b",
            "--fake-gpus",
            "2xA100-80GB",
        ],
    );
    d.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        old.iter().all(|&p| alive(p)),
        "the jobs died with the daemon"
    );
    let (mut d2, _) = env.up("up2", &up_args);
    assert!(
        old.iter().all(|&p| !alive(p)),
        "an orphan outlived the restart"
    );
    for &id in &ids {
        let j = wait_state(&url, id, "succeeded", Duration::from_secs(30));
        assert_eq!(j["attempt_log"].as_array().unwrap().len(), 2, "{j:#}");
    }
    let rep = watch.finish();
    assert!(rep.overlaps.is_empty(), "{:#?}", rep.overlaps);
    assert_eq!(rep.seen.len(), 2, "{rep:?}");
    b.term();
    d2.term();
}
