//! Notifications against a real daemon and real HTTP receivers on
//! 127.0.0.1 started here: a webhook that fails twice then accepts gets
//! exactly one delivery; a daemon killed with notifications pending sends
//! each once after its restart; Slack, Discord and ntfy payloads have their
//! shapes and limits (checked by the receiver); a webhook URL never shows
//! in `notify ls`, the daemon's log or an error; bad `[notify.*]` config
//! stops the daemon naming the field.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::jobs::{submit, wait_state};
use crate::support::{wait_for, write, Env, Proc};

/// A secret path part of every webhook URL here: it must never be printed.
const SECRET: &str = "T0SECRET/B1SECRET/hookpathsecret42";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    /// The status it answered.
    status: u16,
}

/// An HTTP receiver on 127.0.0.1: answers each request with the next
/// status of `plan`, then 200 once the plan is used up.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    plan: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    fn start(plan: &[u16]) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(plan.iter().rev().copied().collect::<Vec<_>>()));
        let (g, p) = (got.clone(), plan.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let (g, p) = (g.clone(), p.clone());
                std::thread::spawn(move || {
                    let _ = serve(&mut s, &g, &p);
                });
            }
        });
        Receiver { port, got, plan }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| (200..300).contains(&g.status))
            .collect()
    }

    /// Answer the next requests with these statuses (then 200).
    fn set_plan(&self, plan: &[u16]) {
        *self.plan.lock().unwrap() = plan.iter().rev().copied().collect();
    }
}

fn serve(
    s: &mut std::net::TcpStream,
    got: &Mutex<Vec<Got>>,
    plan: &Mutex<Vec<u16>>,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let status = plan.lock().unwrap().pop().unwrap_or(200);
    got.lock().unwrap().push(Got {
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status,
    });
    let text = if status == 200 { "ok" } else { "try later" };
    write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    s.flush()
}

/// A daemon with fast retries (100 ms, doubling) and one fake GPU.
fn up(env: &Env, name: &str, extra: &[&str]) -> (Proc, String) {
    let mut a = vec!["--fake-gpus", "1xA100-80GB", "--notify-retry", "100ms"];
    if !extra.contains(&"--notify-tries") {
        a.extend(["--notify-tries", "6"]);
    }
    a.extend_from_slice(extra);
    env.up(name, &a)
}

fn notify_log(env: &Env, url: &str) -> Vec<Value> {
    env.json(&["notify", "log", "--server", url, "--limit", "1000"])["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone()
}

#[test]
fn a_webhook_that_fails_twice_gets_exactly_one_delivery_and_never_shows_its_url() {
    let env = Env::new();
    let rx = Receiver::start(&[500, 503]);
    let (mut d, url) = up(&env, "up", &[]);
    let hook = rx.url(&format!("/hook/{SECRET}"));
    let out = env.ok(&[
        "notify",
        "add",
        "team",
        "--webhook",
        &hook,
        "--events",
        "job_succeeded,job_failed",
        "--server",
        &url,
    ]);
    assert!(!out.contains(SECRET), "{out}");
    let id = submit(&env, &url, &["--name", "hello", "--", "true"]);
    wait_state(&url, id, "succeeded", Duration::from_secs(60));
    wait_for(Duration::from_secs(30), || !rx.accepted().is_empty());
    // Three tries, the third accepted; then nothing more (6 tries allowed).
    wait_for(Duration::from_secs(10), || {
        notify_log(&env, &url)
            .iter()
            .any(|x| x["state"] == "delivered" && x["attempts"] == 3)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let got = rx.got();
    assert_eq!(
        got.iter().map(|g| g.status).collect::<Vec<_>>(),
        [500, 503, 200],
        "{got:#?}"
    );
    assert_eq!(rx.accepted().len(), 1);
    let b = &got[2].body;
    assert_eq!(got[2].path, format!("/hook/{SECRET}"));
    assert_eq!(b["kind"], "job_succeeded");
    assert_eq!(b["event"]["job"], id);
    assert_eq!(b["event"]["name"], "hello");
    assert_eq!(b["event"]["user"], "tester");
    assert_eq!(b["link"], format!("{url}/#/queue/{id}"));
    assert!(b["title"].as_str().unwrap().contains("succeeded"));
    // The same event id on every try, and an idempotency key.
    assert!(got.iter().all(|g| g.body["id"] == b["id"]));
    let key = got[2]
        .headers
        .iter()
        .find(|(k, _)| k == "idempotency-key")
        .map(|(_, v)| v.clone());
    assert_eq!(key, Some(format!("trainyard-{}-team", b["id"])));

    // The log shows the two failures' last error, and no URL path.
    let log = env.ok(&["notify", "log", "--server", &url]);
    assert!(
        log.contains("job_succeeded") && log.contains("delivered"),
        "{log}"
    );
    let ls = env.ok(&["notify", "ls", "--server", &url]);
    let ls_json = env.ok(&["--json", "notify", "ls", "--server", &url]);
    assert!(
        ls.contains("team") && ls.contains("http://127.0.0.1"),
        "{ls}"
    );

    // A digest sink: listed with its period, and no events one by one.
    env.ok(&[
        "notify",
        "add",
        "lead",
        "--webhook",
        &hook,
        "--digest",
        "weekly",
        "--server",
        &url,
    ]);
    let listed = env.json(&["notify", "ls", "--server", &url]);
    let lead = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "lead")
        .unwrap()
        .clone();
    assert_eq!(lead["digest"], "weekly");
    assert_eq!(lead["events"], serde_json::json!([]));
    assert!(env
        .ok(&["notify", "ls", "--server", &url])
        .contains("weekly"));
    let bad = env.fail(&[
        "notify",
        "add",
        "x",
        "--webhook",
        &hook,
        "--digest",
        "hourly",
        "--server",
        &url,
    ]);
    assert!(bad.contains("--digest") && bad.contains("hourly"), "{bad}");
    env.ok(&["notify", "rm", "lead", "--server", &url]);

    // A test message goes to that sink alone and is delivered.
    let t = env.ok(&["notify", "test", "team", "--server", &url]);
    assert!(t.contains("delivered"), "{t}");
    let last = rx.accepted().pop().unwrap();
    assert_eq!(last.body["kind"], "test");

    // A sink whose receiver refuses everything: dead after its tries, and
    // `notify test` fails saying so, without the URL's path.
    let dead = Receiver::start(&[500; 20]);
    env.ok(&[
        "notify",
        "add",
        "dead",
        "--webhook",
        &dead.url(&format!("/x/{SECRET}")),
        "--events",
        "agent_lost",
        "--server",
        &url,
    ]);
    let err = env.fail(&["notify", "test", "dead", "--wait", "20s", "--server", &url]);
    assert!(
        err.contains("dead after 6 tries") && err.contains("HTTP 500"),
        "{err}"
    );
    // Nothing listening (port 1: no test binds it, unlike a port freed
    // for the occasion): the transport's error, scheme and host only.
    let closed = 1;
    env.ok(&[
        "notify",
        "add",
        "gone",
        "--webhook",
        &format!("http://127.0.0.1:{closed}/x/{SECRET}"),
        "--events",
        "agent_lost",
        "--server",
        &url,
    ]);
    let gone = env.fail(&["notify", "test", "gone", "--wait", "20s", "--server", &url]);
    assert!(
        gone.contains(&format!("POST http://127.0.0.1:{closed}/…"))
            && gone.to_lowercase().contains("connect"),
        "{gone}"
    );
    assert!(!gone.contains(SECRET), "{gone}");
    env.ok(&["notify", "rm", "gone", "--server", &url]);
    let dead_letters = env.json(&["notify", "log", "--state", "dead", "--server", &url]);
    assert_eq!(dead_letters["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(dead.got().len(), 6);

    // Bad sinks are refused naming the flag, without the secret.
    let e = env.fail(&[
        "notify",
        "add",
        "x",
        "--slack",
        &format!("ftp://hooks.slack.com/{SECRET}"),
        "--server",
        &url,
    ]);
    assert!(e.contains("--slack") && e.contains("http or https"), "{e}");
    let e2 = env.fail(&[
        "notify",
        "add",
        "x",
        "--webhook",
        &hook,
        "--events",
        "job_faild",
        "--server",
        &url,
    ]);
    assert!(e2.contains("--events") && e2.contains("job_faild"), "{e2}");
    let e3 = env.fail(&[
        "notify",
        "add",
        "team",
        "--webhook",
        &hook,
        "--server",
        &url,
    ]);
    assert!(e3.contains("exists already"), "{e3}");
    let e4 = env.fail(&["notify", "rm", "nosuch", "--server", &url]);
    assert!(e4.contains("no notification sink named"), "{e4}");
    env.ok(&["notify", "rm", "dead", "--server", &url]);
    assert!(!env.ok(&["notify", "ls", "--server", &url]).contains("dead"));

    d.term();
    let stderr = d.stderr();
    assert!(
        stderr.contains("notification not delivered; will retry"),
        "{stderr}"
    );
    for text in [&out, &log, &ls, &ls_json, &t, &err, &e, &e2, &e3, &stderr] {
        assert!(!text.contains(SECRET), "the webhook URL leaked: {text}");
        assert!(!text.contains("hookpathsecret"), "{text}");
    }
    // Nor in the API's answers.
    let api = serde_json::to_string(&dead_letters).unwrap();
    assert!(!api.contains(SECRET));
}

#[test]
fn pending_notifications_survive_a_killed_daemon_and_go_out_once() {
    let env = Env::new();
    // Refuses everything until told otherwise.
    let rx = Receiver::start(&[503; 1000]);
    let (mut d, url) = up(&env, "up1", &["--notify-tries", "50"]);
    env.ok(&[
        "notify",
        "add",
        "hook",
        "--webhook",
        &rx.url("/h"),
        "--events",
        "job_succeeded,job_failed",
        "--server",
        &url,
    ]);
    let ids: Vec<u64> = (0..3)
        .map(|i| submit(&env, &url, &["--", "sh", "-c", &format!("exit {}", i % 2)]))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let want = if i % 2 == 0 { "succeeded" } else { "failed" };
        wait_state(&url, *id, want, Duration::from_secs(60));
    }
    wait_for(Duration::from_secs(20), || {
        let log = notify_log(&env, &url);
        log.len() == 3
            && log
                .iter()
                .all(|x| x["state"] == "pending" && x["attempts"].as_u64().unwrap() >= 1)
    });
    // A crash: no chance to flush anything.
    d.kill9();
    let refused = rx.got().len();
    assert!(refused >= 3, "{refused}");
    assert!(rx.accepted().is_empty());
    rx.set_plan(&[]);

    let (mut d2, url2) = up(&env, "up2", &["--notify-tries", "50"]);
    wait_for(Duration::from_secs(30), || rx.accepted().len() >= 3);
    wait_for(Duration::from_secs(10), || {
        notify_log(&env, &url2)
            .iter()
            .all(|x| x["state"] == "delivered")
    });
    std::thread::sleep(Duration::from_millis(1000));
    let accepted = rx.accepted();
    let mut jobs: Vec<u64> = accepted
        .iter()
        .map(|g| g.body["event"]["job"].as_u64().unwrap())
        .collect();
    jobs.sort();
    assert_eq!(
        jobs, ids,
        "each job's notification exactly once: {accepted:#?}"
    );
    let kinds: Vec<&str> = accepted
        .iter()
        .map(|g| g.body["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "job_failed").count(), 1);
    d2.term();
}

/// Characters of a JSON string.
fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

#[test]
fn slack_discord_and_ntfy_get_their_own_shapes_within_limits() {
    let env = Env::new();
    let rx = Receiver::start(&[]);
    let (mut d, url) = up(&env, "up", &["--ui-url", "http://gpu1.lab:7171/"]);
    for (name, flag, path) in [
        ("s", "--slack", format!("/slack/{SECRET}")),
        ("dc", "--discord", format!("/discord/{SECRET}")),
        ("n", "--ntfy", "/ntfy/lab-jobs".to_string()),
    ] {
        env.ok(&[
            "notify",
            "add",
            name,
            flag,
            &rx.url(&path),
            "--events",
            "job_failed",
            "--server",
            &url,
        ]);
    }
    env.ok(&[
        "notify",
        "add",
        "n9",
        "--ntfy",
        &rx.url("/ntfy/urgent"),
        "--events",
        "job_failed",
        "--priority",
        "5",
        "--server",
        &url,
    ]);
    // A long name, output that is not ours, a failure: every sink gets it.
    let name = format!("train <detr> & @everyone {}", "x".repeat(150));
    let id = submit(&env, &url, &["--name", &name, "--", "sh", "-c", "exit 3"]);
    wait_state(&url, id, "failed", Duration::from_secs(60));
    wait_for(Duration::from_secs(30), || rx.accepted().len() >= 4);
    let link = format!("http://gpu1.lab:7171/#/queue/{id}");
    let by_path = |p: &str| {
        rx.accepted()
            .into_iter()
            .filter(|g| g.path.starts_with(p))
            .collect::<Vec<_>>()
    };

    let slack = by_path("/slack/");
    assert_eq!(slack.len(), 1);
    let s = &slack[0].body;
    assert!(chars(&s["text"]) <= 3000);
    let blocks = s["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "header");
    assert!(chars(&blocks[0]["text"]["text"]) <= 150);
    for b in &blocks[1..] {
        assert_eq!(b["type"], "section");
        assert_eq!(b["text"]["type"], "mrkdwn");
        assert!(chars(&b["text"]["text"]) <= 3000);
    }
    let all = serde_json::to_string(s).unwrap();
    assert!(
        all.contains(&format!("<{link}|Open in Trainyard>")),
        "{all}"
    );
    assert!(all.contains("exit code") && all.contains('3'));

    let discord = by_path("/discord/");
    assert_eq!(discord.len(), 1);
    let p = &discord[0].body;
    assert!(chars(&p["content"]) <= 2000);
    assert_eq!(p["allowed_mentions"]["parse"], serde_json::json!([]));
    let e = &p["embeds"][0];
    assert_eq!(e["url"], link);
    assert!(chars(&e["title"]) <= 256 && chars(&e["description"]) <= 4096);
    let total: usize = chars(&e["title"])
        + chars(&e["description"])
        + chars(&e["footer"]["text"])
        + e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert!(chars(&f["value"]) <= 1024 && chars(&f["name"]) <= 256);
                chars(&f["name"]) + chars(&f["value"])
            })
            .sum::<usize>();
    assert!(total <= 6000, "{total}");

    // ntfy: JSON to the server's root with the topic, priority, click link.
    let ntfy = by_path("/ntfy/");
    assert_eq!(ntfy.len(), 2);
    for g in &ntfy {
        assert_eq!(g.path, "/ntfy/", "published to the root");
        let b = &g.body;
        assert_eq!(b["click"], link);
        assert!(b["message"].as_str().unwrap().len() <= 4096);
        assert!(b["title"]
            .as_str()
            .unwrap()
            .contains(&format!("Job {id} failed")));
        match b["topic"].as_str().unwrap() {
            "lab-jobs" => assert_eq!(b["priority"], 4, "failures are high by default"),
            "urgent" => assert_eq!(b["priority"], 5),
            t => panic!("topic {t}"),
        }
    }
    d.term();
    assert!(!d.stderr().contains(SECRET));
}

/// Start `up` expecting it to fail at once; its stderr.
fn up_fails(env: &Env, extra_env: &[(&str, &str)]) -> String {
    let mut c = env.cmd();
    c.args(["up", "--port", "0", "--no-agent"]);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success());
            let mut e = String::new();
            child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            assert!(
                !env.home.join("daemon.json").exists(),
                "the daemon wrote daemon.json"
            );
            return e;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("the daemon started on a bad config");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `trainyard up --no-agent` with extra environment variables; waits
/// until it serves.
fn up_with_env(env: &Env, vars: &[(&str, &str)]) -> (Proc, String) {
    let log = env.path("up-env.stderr");
    let mut c = env.cmd();
    c.args(["--json", "up", "--port", "0", "--no-agent"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in vars {
        c.env(k, v);
    }
    let mut p = Proc {
        child: c.spawn().expect("spawn"),
        log,
    };
    let mut line = String::new();
    BufReader::new(p.child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("daemon did not start ({e}): {}", p.stderr()));
    let url = v["url"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(10), || {
        crate::support::http(&url, "GET", "/api/v1/health", None, "").0 == 200
    });
    (p, url)
}

#[test]
fn bad_notify_config_stops_the_daemon_naming_the_field() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    std::fs::create_dir_all(&env.home).unwrap();
    let cfg = env.home.join("config.toml");
    let secret_url = format!("https://hooks.slack.com/services/{SECRET}");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("[notify.team]\nkind = \"slack\"\nurl = \"{secret_url}\"\nevents = [\"job_failed\", \"job_faild\"]\n"),
            vec!["notify.team.events", "unknown event \"job_faild\"", "job_failed"],
        ),
        (
            format!("[notify.team]\nkind = \"webhook\"\nurl = \"htp:/{SECRET}\"\n"),
            vec!["notify.team.url", "not a usable URL"],
        ),
        (
            "[notify.team]\nkind = \"discord\"\nevents = [\"job_failed\"]\n".to_string(),
            vec!["notify.team", "no URL given"],
        ),
        (
            "[notify.team]\nkind = \"ntfy\"\nurl_env = \"TY_TEST_UNSET_NTFY\"\n".to_string(),
            vec!["notify.team.url_env", "TY_TEST_UNSET_NTFY"],
        ),
        (
            "[notify.team]\nkind = \"teams\"\n".to_string(),
            vec!["unknown variant `teams`", "config.toml"],
        ),
        (
            format!("[notify.team]\nkind = \"slack\"\nurl = \"{secret_url}\"\nchannel = \"x\"\n"),
            vec!["unknown field `channel`"],
        ),
        (
            format!("[notify.team]\nkind = \"ntfy\"\nurl = \"{secret_url}\"\npriority = 7\n"),
            vec!["notify.team.priority", "between 1"],
        ),
        (
            format!("[notify.team]\nkind = \"slack\"\nurl = \"{secret_url}\"\ndigest = \"hourly\"\n"),
            vec!["unknown variant `hourly`", "daily", "weekly"],
        ),
    ];
    for (text, wants) in &cases {
        write(&cfg, text.as_bytes());
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = up_fails(&env, &[]);
        for w in wants {
            assert!(e.contains(w), "{text}: want {w:?} in: {e}");
        }
        assert!(e.contains("config.toml"), "{e}");
        assert!(!e.contains(SECRET), "{e}");
    }
    // A literal URL in a config others can read is refused...
    write(
        &cfg,
        format!("[notify.team]\nkind = \"slack\"\nurl = \"{secret_url}\"\n").as_bytes(),
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = up_fails(&env, &[]);
    assert!(
        e.contains("notify.team.url") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(!e.contains(SECRET), "{e}");
    // ...and read from the environment it is fine: the daemon starts and
    // lists the sink, showing scheme and host only.
    write(
        &cfg,
        b"[notify.team]\nkind = \"slack\"\nurl_env = \"TY_TEST_SLACK\"\nevents = [\"job_failed\"]\nprojects = [\"detr\"]\n",
    );
    let (mut d, url) = up_with_env(&env, &[("TY_TEST_SLACK", &secret_url)]);
    let ls = env.json(&["notify", "ls", "--server", &url]);
    assert_eq!(ls[0]["name"], "team");
    assert_eq!(ls[0]["origin"], "config");
    assert_eq!(ls[0]["url"], "https://hooks.slack.com/…");
    assert_eq!(ls[0]["projects"], serde_json::json!(["detr"]));
    assert!(!ls.to_string().contains(SECRET));
    let e = env.fail(&["notify", "rm", "team", "--server", &url]);
    assert!(e.contains("defined in config.toml"), "{e}");
    d.term();
    assert!(!d.stderr().contains(SECRET));
}

#[test]
fn a_silent_agent_is_reported_lost_once() {
    let env = Env::new();
    let rx = Receiver::start(&[]);
    let (mut d, url) = env.up(
        "up",
        &["--no-agent", "--lease", "2s", "--notify-retry", "100ms"],
    );
    env.ok(&[
        "notify",
        "add",
        "ops",
        "--webhook",
        &rx.url("/ops"),
        "--events",
        "agent_lost",
        "--server",
        &url,
    ]);
    let mut a = env.spawn(
        "agent",
        &[
            "agent",
            "--server",
            &url,
            "--name",
            "a1",
            "--fake-gpus",
            "1xA100-80GB",
        ],
    );
    wait_for(Duration::from_secs(20), || {
        env.json(&["agents", "--server", &url])
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x["name"] == "a1"))
    });
    a.kill9();
    wait_for(Duration::from_secs(20), || !rx.accepted().is_empty());
    // Several scheduling passes later, still one.
    std::thread::sleep(Duration::from_millis(1500));
    let got = rx.accepted();
    assert_eq!(got.len(), 1, "{got:#?}");
    let b = &got[0].body;
    assert_eq!(b["kind"], "agent_lost");
    assert_eq!(b["event"]["agent"], "a1");
    assert_eq!(b["link"], format!("{url}/#/gpus"));
    d.term();
}

/// The bodies a receiver accepted at paths starting with `p`.
fn accepted_at(rx: &Receiver, p: &str) -> Vec<Value> {
    rx.accepted()
        .into_iter()
        .filter(|g| g.path.starts_with(p))
        .map(|g| g.body)
        .collect()
}

/// Digests on a clock the test moves (the daemon in-process, its agent
/// running real jobs on a fake GPU, webhook receivers started here): no
/// digest before its period ends; one per (sink, period) when it does,
/// through the outbox (a refused first try is retried, not resent); none
/// again after a restart; and the periods that ended while the daemon was
/// down are digested when it is back, each once.
#[test]
fn digests_come_once_per_period_and_survive_restarts() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicI64, Ordering};
    use trainyard::daemon::Daemon;
    use trainyard::notify::digest::{period_of, Every};
    use trainyard::queue::{JobId, JobSpec, JobState};

    let env = Env::new();
    let home = trainyard::Home::at(&env.home);
    home.ensure().unwrap();
    let rx = Receiver::start(&[]);
    let cfg = home.config_path();
    write(
        &cfg,
        format!(
            "[usage]\ntimezone = \"UTC\"\n\n\
             [notify.daily]\nkind = \"webhook\"\nurl = \"{}\"\ndigest = \"daily\"\n\n\
             [notify.weekly]\nkind = \"webhook\"\nurl = \"{}\"\ndigest = \"weekly\"\nevents = [\"job_failed\"]\n",
            rx.url(&format!("/daily/{SECRET}")),
            rx.url("/weekly"),
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();

    let clock = Arc::new(AtomicI64::new(trainyard::db::now_ns()));
    let config = || {
        let c = clock.clone();
        let mut config = crate::support::inproc_daemon(
            &home,
            Some(trainyard::agent::Setup {
                name: Some("digest1".into()),
                fake_gpus: Some("1xA100-80GB".into()),
                grace: Duration::from_secs(1),
                ..Default::default()
            }),
        );
        config.server.notify = trainyard::notify::send::Settings {
            backoff: trainyard::notify::Backoff {
                first: Duration::from_millis(100),
                ..Default::default()
            },
            digest_every: Duration::from_millis(50),
            clock: trainyard::notify::send::Clock::from_fn(move || c.load(Ordering::SeqCst)),
            ..Default::default()
        };
        config
    };
    let utc = jiff::tz::TimeZone::UTC;
    let today = period_of(Every::Daily, clock.load(Ordering::SeqCst), &utc).unwrap();
    let week = period_of(Every::Weekly, clock.load(Ordering::SeqCst), &utc).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wait = |what: &str, f: &mut dyn FnMut() -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < end, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Day one: a job succeeds on the GPU, one fails, one is cancelled.
    let allocated = rt.block_on(async {
        let d = Daemon::start(config()).await.unwrap();
        let c = d.client();
        let spec = |j: &str| JobSpec::parse(j).unwrap();
        let ok = c
            .submit(vec![spec(
                r#"{"command": ["sleep", "1"], "gpus": {"count": 1}, "project": "detr"}"#,
            )])
            .await
            .unwrap()[0];
        let bad = c
            .submit(vec![spec(r#"{"command": ["false"], "project": "detr"}"#)])
            .await
            .unwrap()[0];
        let slow = c
            .submit(vec![spec(r#"{"command": ["sleep", "600"]}"#)])
            .await
            .unwrap()[0];
        let state = |id: JobId| {
            let c = c.clone();
            async move { c.job(id).await.unwrap().job.state }
        };
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while state(ok).await != JobState::Succeeded || state(bad).await != JobState::Failed {
            assert!(std::time::Instant::now() < end, "the jobs did not end");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.cancel(slow).await.unwrap();
        // The day's allocated GPU-hours, as `GET /usage` counts them.
        let u = c
            .usage(&[
                ("since", today.label.clone()),
                ("until", today.label.clone()),
                ("timezone", "UTC".into()),
            ])
            .await
            .unwrap();
        // The weekly sink asked for failures one by one too.
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !accepted_at(&rx, "/weekly")
            .iter()
            .any(|b| b["kind"] == "job_failed")
        {
            assert!(std::time::Instant::now() < end, "no job_failed event");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let passes run on a clock still inside the day.
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.stop().await.unwrap();
        u.total.allocated_gpu_h
    });
    assert!(allocated > 0.0, "the GPU job was allocated: {allocated}");
    assert!(
        accepted_at(&rx, "/daily/").is_empty(),
        "no digest before the day ends"
    );

    // Midnight passes: the daily digest of day one, once, after one retry
    // (the receiver refuses the first request).
    rx.set_plan(&[503]);
    clock.store(today.end_ns + 1_000_000_000, Ordering::SeqCst);
    rt.block_on(async {
        let d = Daemon::start(config()).await.unwrap();
        wait("the daily digest", &mut || {
            !accepted_at(&rx, "/daily/").is_empty()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.stop().await.unwrap();
    });
    let daily = accepted_at(&rx, "/daily/");
    assert_eq!(daily.len(), 1, "{daily:#?}");
    let refused = rx.got().iter().filter(|g| g.status == 503).count();
    assert_eq!(refused, 1, "the first try was refused and retried");
    let b = &daily[0];
    assert_eq!(b["kind"], "digest");
    let dg = &b["event"]["digest"];
    assert_eq!(dg["period"]["label"], today.label.as_str());
    assert_eq!(dg["period"]["every"], "daily");
    assert_eq!(
        (&dg["succeeded"], &dg["failed"], &dg["cancelled"]),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{dg:#}"
    );
    let gpu_h = dg["gpu_hours"].as_f64().unwrap();
    assert!(
        (gpu_h - allocated).abs() < 1e-9,
        "digest {gpu_h} GPU-h, usage {allocated}"
    );
    let title = b["title"].as_str().unwrap();
    assert!(
        title.starts_with(&format!(
            "Daily digest {}: 1 job done, 1 failed, 1 cancelled",
            today.label
        )),
        "{title}"
    );
    assert!(b["link"].as_str().unwrap().ends_with("/#/usage"));
    // The weekly sink asked for failures one by one too.
    let failed: Vec<Value> = accepted_at(&rx, "/weekly")
        .into_iter()
        .filter(|b| b["kind"] == "job_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");

    // A restart on the same clock sends nothing again.
    rt.block_on(async {
        let d = Daemon::start(config()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        d.stop().await.unwrap();
    });
    assert_eq!(accepted_at(&rx, "/daily/").len(), 1, "no digest twice");

    // Down until the week is over: each day since, and the week, once.
    clock.store(week.end_ns + 3_600_000_000_000, Ordering::SeqCst);
    let days_left = (week.end_ns - today.end_ns) / (24 * 3_600_000_000_000);
    rt.block_on(async {
        let d = Daemon::start(config()).await.unwrap();
        wait("the week's digests", &mut || {
            accepted_at(&rx, "/daily/").len() as i64 == 1 + days_left
                && accepted_at(&rx, "/weekly").len() == 2
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.stop().await.unwrap();
    });
    let daily = accepted_at(&rx, "/daily/");
    let labels: Vec<&str> = daily
        .iter()
        .map(|b| b["event"]["digest"]["period"]["label"].as_str().unwrap())
        .collect();
    let mut unique = labels.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), labels.len(), "each day once: {labels:?}");
    assert_eq!(labels.len() as i64, 1 + days_left, "{labels:?}");
    // The days after day one ended no job.
    for b in &daily[1..] {
        assert_eq!(b["event"]["digest"]["succeeded"], 0);
        assert_eq!(b["event"]["digest"]["gpu_hours"], 0.0);
    }
    let weekly: Vec<Value> = accepted_at(&rx, "/weekly")
        .into_iter()
        .filter(|b| b["kind"] == "digest")
        .collect();
    assert_eq!(weekly.len(), 1, "{weekly:#?}");
    let wd = &weekly[0]["event"]["digest"];
    assert_eq!(wd["period"]["label"], week.label.as_str());
    assert_eq!(
        (&wd["succeeded"], &wd["failed"], &wd["cancelled"]),
        (&Value::from(1), &Value::from(1), &Value::from(1))
    );
    // The outbox's log agrees: every digest delivered, none pending.
    let o = trainyard::notify::Outbox::open(&home.queue_path()).unwrap();
    let log = o.log(None, 1000).unwrap();
    let digests: Vec<_> = log.iter().filter(|x| x.kind == "digest").collect();
    assert_eq!(digests.len() as i64, 1 + days_left + 1);
    assert!(digests
        .iter()
        .all(|x| x.state == trainyard::notify::DeliveryState::Delivered));
}
