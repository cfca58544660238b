//! One daemon per home, agents that say whether the daemon took them, and
//! logs that carry no terminal colour codes into files (field-test issue).

use std::time::Duration;

use crate::support::{get_json, wait_for, Env};

/// The daemon's token copied to a 0600 file, as a LAN agent gets it.
fn token_file(env: &Env) -> std::path::PathBuf {
    let f = env.path("token");
    std::fs::write(&f, env.token()).unwrap();
    set_mode(&f, 0o600);
    f
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

#[test]
fn a_second_daemon_on_one_home_is_refused_naming_the_first() {
    let env = Env::new();
    let (mut first, url) = env.up("up", &["--no-agent"]);
    let o = env.run(&["up", "--port", "0", "--no-agent"]);
    assert!(!o.status.success(), "a second daemon started");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&url), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    // The first still serves, and its daemon.json was not overwritten.
    assert_eq!(
        get_json(&url, "/api/v1/health", None)["auth_required"],
        true
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.home.join("daemon.json")).unwrap())
            .unwrap();
    assert_eq!(file["url"], url.as_str());
    // A killed daemon leaves its lock to the kernel: the next one starts.
    first.kill9();
    let (_second, url2) = env.up("up2", &["--no-agent"]);
    assert_eq!(
        get_json(&url2, "/api/v1/health", None)["auth_required"],
        true
    );
}

#[test]
fn an_agent_says_connected_only_once_its_token_is_taken() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    let other_home = env.path("agent-home");
    // No token at all (a home of its own, no TRAINYARD_TOKEN).
    let o = env
        .cmd()
        .args(["agent", "--server", &url, "--agent-name", "lab1", "--home"])
        .arg(&other_home)
        .env_remove("TRAINYARD_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("connected"), "{err}");
    assert!(err.contains("none was sent"), "{err}");
    assert!(err.contains("--token-file"), "{err}");
    // A wrong one.
    let o = env
        .cmd()
        .args(["agent", "--server", &url, "--agent-name", "lab1", "--home"])
        .arg(&other_home)
        .env("TRAINYARD_TOKEN", "not-the-token")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("connected"), "{err}");
    assert!(err.contains("the token is wrong"), "{err}");
    // The right one, from a file of its own.
    let token_file = token_file(&env);
    let token_arg = token_file.to_str().unwrap().to_string();
    let home_arg = other_home.to_str().unwrap().to_string();
    let agent = env.spawn(
        "agent",
        &[
            "agent",
            "--server",
            &url,
            "--agent-name",
            "lab1",
            "--token-file",
            &token_arg,
            "--home",
            &home_arg,
        ],
    );
    wait_for(Duration::from_secs(10), || {
        agent.stderr().contains("agent lab1 connected")
    });
}

#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let env = Env::new();
    // `env.up` sends stderr (RUST_LOG=info) to a file.
    let (mut d, _url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    d.term();
    let log = d.stderr();
    assert!(log.contains("daemon listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in a log file: {log:?}");
    assert!(log.contains("trainyard ui"), "{log}");
}

#[test]
fn two_agents_cannot_share_a_name_and_fake_gpus_are_unique_per_agent() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent", "--lease", "3s"]);
    let token_file = token_file(&env);
    let tf = token_file.to_str().unwrap().to_string();
    let agent = |home: &str, log: &str| {
        let h = env.path(home).to_str().unwrap().to_string();
        env.spawn(
            log,
            &[
                "agent",
                "--server",
                &url,
                "--agent-name",
                "vm",
                "--token-file",
                &tf,
                "--fake-gpus",
                "1xA100-80GB",
                "--home",
                &h,
            ],
        )
    };
    // Two cloned servers: same name, each with its own home (identity).
    let mut first = agent("server-a", "agent-a");
    wait_for(Duration::from_secs(10), || {
        get_json(&url, "/api/v1/agents", None)
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let uuid_a = get_json(&url, "/api/v1/agents", None)[0]["report"]["gpus"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut second = agent("server-b", "agent-b");
    let status = second.child.wait().unwrap();
    assert!(!status.success(), "a second live agent took the name");
    let err = second.stderr();
    assert!(err.contains("taken by a live agent"), "{err}");
    assert!(err.contains("--agent-name"), "{err}");
    // The first kept its GPUs.
    let agents = get_json(&url, "/api/v1/agents", None);
    assert_eq!(agents[0]["report"]["gpus"][0]["uuid"], uuid_a.as_str());
    // In one home, a second agent of the same name is refused at once.
    let o = env
        .cmd()
        .args([
            "agent",
            "--server",
            &url,
            "--agent-name",
            "vm",
            "--token-file",
            &tf,
            "--home",
        ])
        .arg(env.path("server-a"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already runs from the Trainyard home"),
        "{err}"
    );
    // Once the first is gone for a lease, the name is free; the newcomer
    // has GPUs of its own (UUIDs from its identity, not the name).
    first.kill9();
    std::thread::sleep(Duration::from_millis(3500));
    let _b = agent("server-b", "agent-b2");
    wait_for(Duration::from_secs(10), || {
        let a = get_json(&url, "/api/v1/agents", None);
        a[0]["report"]["gpus"][0]["uuid"]
            .as_str()
            .is_some_and(|u| u != uuid_a)
    });
    // A restarted agent keeps its identity (and so its GPU UUIDs).
    let id_b = std::fs::read_to_string(env.path("server-b/agent/vm/id")).unwrap();
    assert_eq!(id_b.trim().len(), 32);
}

#[test]
fn secret_env_reaches_the_job_and_nothing_else() {
    use crate::support::jobs::{logs, wait_state};
    let env = Env::new();
    let (d, url) = env.up("up", &["--fake-gpus", "1xA100-80GB"]);
    let file = env.path("keys.env");
    std::fs::write(&file, "# lab keys\nexport HF_TOKEN='file-secret-41'\n").unwrap();
    let f = file.to_str().unwrap();
    // An env file others can read is refused.
    set_mode(&file, 0o644);
    let o = env
        .cmd()
        .args(["submit", "--server", &url, "--env-file", f, "--", "true"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
    set_mode(&file, 0o600);
    // A --secret-env that is not set says so.
    let o = env
        .cmd()
        .args([
            "submit",
            "--server",
            &url,
            "--secret-env",
            "NOT_SET_ANYWHERE",
            "--",
            "true",
        ])
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT_SET_ANYWHERE is not set"));

    let o = env
        .cmd()
        .args([
            "--json",
            "submit",
            "--server",
            &url,
            "--secret-env",
            "MY_API_KEY",
            "--env-file",
            f,
            "--env",
            "PLAIN=visible",
            "--shell",
            "--",
            "echo \"$MY_API_KEY $HF_TOKEN\" > got.txt; echo done",
        ])
        .env("MY_API_KEY", "env-secret-17")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["ids"][0]
        .as_u64()
        .unwrap();
    let j = wait_state(&url, id, "succeeded", Duration::from_secs(20));
    assert_eq!(logs(&env, &url, id), "done\n");
    // The job's working directory is the submitter's (this test's temp dir).
    assert_eq!(
        std::fs::read_to_string(env.tmp.path().join("got.txt")).unwrap(),
        "env-secret-17 file-secret-41\n"
    );
    // The job got them; no answer, listing, `show`, `ps` or log has them.
    assert_eq!(j["spec"]["secret_env"]["MY_API_KEY"], "<secret>", "{j}");
    assert_eq!(j["spec"]["env"]["PLAIN"], "visible");
    let seen = [
        j.to_string(),
        get_json(&url, "/api/v1/jobs", None).to_string(),
        env.ok(&["show", &id.to_string(), "--server", &url]),
        env.ok(&["ps", "--server", &url]),
        env.ok(&["--json", "show", &id.to_string(), "--server", &url]),
        d.stderr(),
    ];
    for text in &seen {
        assert!(!text.contains("env-secret-17"), "secret shown: {text}");
        assert!(!text.contains("file-secret-41"), "secret shown: {text}");
    }
    assert!(seen[2].contains("MY_API_KEY"), "{}", seen[2]);
}

/// The daemon boots in-process, as the desktop shell runs it: its local
/// agent runs a job, and `stop` ends things in order, the agent first, so
/// the job it stops is reported to a server that still listens; then the
/// server, which removes its daemon.json. A second start on the same home
/// meanwhile is refused and takes no agent identity.
#[test]
fn the_daemon_runs_in_process_and_stops_in_order() {
    use trainyard::daemon::Daemon;
    use trainyard::queue::{JobSpec, JobState, Queue};
    let env = Env::new();
    let home = trainyard::Home::at(&env.home);
    home.ensure().unwrap();
    let config = |agent: bool| {
        crate::support::inproc_daemon(
            &home,
            agent.then(|| trainyard::agent::Setup {
                name: Some("inproc".into()),
                fake_gpus: Some("1xA100-80GB".into()),
                grace: Duration::from_secs(1),
                ..Default::default()
            }),
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let d = Daemon::start(config(true)).await.unwrap();
        assert_eq!(d.agent_name(), Some("inproc"));
        assert_eq!(env.token(), d.token().expose());
        // The serving task writes daemon.json as it starts.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let file: serde_json::Value = loop {
            let parsed = std::fs::read_to_string(home.daemon_file_path())
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if let Some(v) = parsed {
                break v;
            }
            assert!(std::time::Instant::now() < deadline, "no daemon.json");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(file["url"], d.url());
        // One daemon per home, and the second takes no agent identity.
        let e = Daemon::start(config(true)).await.err().expect("refused");
        assert!(e.to_string().contains(d.url()), "{e}");

        let client = d.client();
        let spec = JobSpec::parse(r#"{"command": ["sleep", "60"], "gpus": {"count": 1}}"#).unwrap();
        let id = client.submit(vec![spec]).await.unwrap()[0];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client.job(id).await.unwrap().job.state != JobState::Running {
            assert!(std::time::Instant::now() < deadline, "the job never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d.stop().await.unwrap();
        id
    });
    assert!(!home.daemon_file_path().exists());
    // The agent's report of the stopped job reached the queue.
    let q = Queue::open(&home.queue_path()).unwrap();
    let attempts = q.attempts(id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].finished_ns.is_some(), "{attempts:?}");
    assert_ne!(q.get(id).unwrap().state, JobState::Running);
}

/// A workstation lends its GPUs to a lab daemon, as the desktop's "lend
/// this computer's GPUs to the lab" does: its daemon stops its local agent
/// (the local job it ran is reported ended, not lost), the same agent
/// identity joins the lab daemon over HTTP with the lab's token and runs a
/// lab job on the workstation's GPU; taking the GPUs back stops the lent
/// agent and starts the local agent again. Jobs an agent stops because it
/// is stopping go back to their queue, their attempt not counted.
#[test]
fn a_workstation_lends_its_gpus_to_a_lab_daemon_and_takes_them_back() {
    use trainyard::agent::{Handle, Setup};
    use trainyard::client::Client;
    use trainyard::daemon::{Daemon, AGENT_STOP_LIMIT};
    use trainyard::queue::{JobSpec, JobState};
    let desk = Env::new();
    let lab = Env::new();
    let (desk_home, lab_home) = (
        trainyard::Home::at(&desk.home),
        trainyard::Home::at(&lab.home),
    );
    desk_home.ensure().unwrap();
    lab_home.ensure().unwrap();
    let setup = Setup {
        name: Some("workstation".into()),
        fake_gpus: Some("1xRTX4090-24GB".into()),
        grace: Duration::from_secs(1),
        ..Default::default()
    };
    let config = crate::support::inproc_daemon;
    async fn until_state(c: &Client, id: trainyard::queue::JobId, want: &[JobState]) -> JobState {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = c.job(id).await.unwrap().job.state;
            if want.contains(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} stayed {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let gpu = || JobSpec::parse(r#"{"command": ["sleep", "60"], "gpus": {"count": 1}}"#).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut d = Daemon::start(config(&desk_home, Some(setup.clone())))
            .await
            .unwrap();
        let l = Daemon::start(config(&lab_home, None)).await.unwrap();
        let local = d.client();
        let local_job = local.submit(vec![gpu()]).await.unwrap()[0];
        until_state(&local, local_job, &[JobState::Running]).await;

        // Lend: the local agent stops (its job is reported), then the same
        // identity serves the lab, with the lab's token.
        assert!(d.stop_agent().await);
        assert_eq!(d.agent_name(), None);
        // Not a failure: the agent left, the job is queued again.
        until_state(&local, local_job, &[JobState::Queued]).await;
        let detail = local.job(local_job).await.unwrap();
        let why = detail.attempt_log[0].error.clone().unwrap_or_default();
        assert!(why.contains("shut down"), "{why}");
        let home = desk_home.clone();
        let s = setup.clone();
        let ready = tokio::task::spawn_blocking(move || s.prepare_again(&home))
            .await
            .unwrap()
            .unwrap();
        let lent = Handle::spawn(ready, Client::new(l.url(), Some(l.token().clone())));
        assert_eq!(lent.server(), l.url());
        let labc = l.client();
        let lab_job = labc.submit(vec![gpu()]).await.unwrap()[0];
        until_state(&labc, lab_job, &[JobState::Running]).await;
        let agents = labc.agents().await.unwrap();
        let a = agents
            .iter()
            .find(|a| a.name == "workstation")
            .expect("the lent agent is in the lab's pool");
        assert!(a.alive);
        assert_eq!(a.report.gpus.len(), 1);
        assert_eq!(a.held.len(), 1, "the lab job holds the workstation's GPU");
        // Meanwhile the workstation's own queue waits: no local agent.
        assert_ne!(
            local.job(local_job).await.unwrap().job.state,
            JobState::Running
        );

        // Take the GPUs back: the lab hears its job ended, the local agent
        // returns and the local job runs again.
        lent.stop(AGENT_STOP_LIMIT).await;
        // The lab heard: its job waits for another agent.
        assert_eq!(labc.job(lab_job).await.unwrap().job.state, JobState::Queued);
        d.start_agent(setup.clone()).await.unwrap();
        assert_eq!(d.agent_name(), Some("workstation"));
        // Its second attempt runs, though the job allows one: the stopped
        // one did not count.
        until_state(&local, local_job, &[JobState::Running]).await;
        assert_eq!(local.job(local_job).await.unwrap().job.attempts, 2);
        l.stop().await.unwrap();
        d.stop().await.unwrap();
    });
}
