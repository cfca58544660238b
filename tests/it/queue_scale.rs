//! The queue at lab scale, end to end with the real binary: a 100,000-job
//! sweep in one small request, the job list page by page, request limits
//! that say what to do, retention of finished jobs and capped logs, GPU
//! indices in `ps`, `show`, and requests no agent can ever satisfy.

use std::time::Duration;

use crate::support::{get_json, http, token_of, wait_for, Env};

/// An HTTP request with the daemon's token: (status, lower-cased head, body).
fn call(url: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token_of(url),
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send head");
    // The daemon may answer (413) before it has read a body over its limit:
    // write from another thread while this one reads the answer.
    let mut w = s.try_clone().expect("clone the socket");
    let body_bytes = body.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body_bytes);
    });
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

fn job_ids(body: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v.as_array()
        .expect("an array of jobs")
        .iter()
        .map(|j| j["id"].as_u64().expect("id"))
        .collect()
}

#[test]
fn a_100000_job_sweep_is_one_small_request_and_the_list_comes_in_pages() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    // 1,000 x 100 combinations. Sent as 100,000 specs this was a 413 after
    // 2 MB; now the CLI sends the template and the grid.
    let a: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let b: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let out = env.ok(&[
        "submit",
        "--server",
        &url,
        "--sweep",
        &format!("a={}", a.join(",")),
        "--sweep",
        &format!("b={}", b.join(",")),
        "--tag",
        "big",
        "--gpus",
        "1",
        "--",
        "true",
    ]);
    assert_eq!(out.trim(), "submitted 100000 jobs: 1-100000");
    let last = get_json(&url, "/api/v1/jobs/100000", None);
    assert_eq!(last["spec"]["args"]["a"], "999");
    assert_eq!(last["spec"]["args"]["b"], "99");

    // The default page, its cursor and the total.
    let (status, head, body) = call(&url, "GET", "/api/v1/jobs", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(job_ids(&body), (1..=500).collect::<Vec<_>>());
    assert_eq!(header(&head, "x-trainyard-total"), Some("100000"));
    let next = header(&head, "x-trainyard-next-cursor").expect("a next cursor");
    assert!(
        header(&head, "link").is_some_and(|l| l.contains("rel=\"next\"")),
        "{head}"
    );
    let (_, head2, body2) = call(
        &url,
        "GET",
        &format!("/api/v1/jobs?limit=3&tag=big&cursor={next}"),
        "",
    );
    assert_eq!(job_ids(&body2), vec![501, 502, 503]);
    assert!(header(&head2, "x-trainyard-next-cursor").is_some());
    // The last page has no cursor.
    let (_, head3, body3) = call(&url, "GET", "/api/v1/jobs?q=100000", "");
    assert_eq!(job_ids(&body3), vec![100000]);
    assert_eq!(header(&head3, "x-trainyard-next-cursor"), None);
    // Limits and bad cursors are refused, naming the parameter.
    let (status, _, body) = call(&url, "GET", "/api/v1/jobs?limit=5001", "");
    assert_eq!(status, 400);
    assert!(body.contains("limit: 5001"), "{body}");
    let (status, _, body) = call(&url, "GET", "/api/v1/jobs?order=finished&cursor=q.0.1", "");
    assert_eq!(status, 400);
    assert!(body.contains("cursor"), "{body}");
    let counts = get_json(&url, "/api/v1/jobs/counts", None);
    assert_eq!(counts["queued"], 100000, "{counts}");

    // `ps` shows the first 100 of them and says how many more there are.
    let ps = env.ok(&["ps", "--server", &url]);
    assert_eq!(
        ps.lines().filter(|l| l.contains(" queued ")).count(),
        100,
        "{ps}"
    );
    assert!(ps.contains("(99900 more jobs not shown"), "{ps}");
}

#[test]
fn requests_over_a_limit_say_which_limit_and_what_to_do() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    // 33 MiB of spelled-out jobs: over POST /jobs' 32 MiB.
    let one = r#"{"command": ["true"], "args": {"pad": "PAD"}},"#.replace("PAD", &"x".repeat(1000));
    let n = (33 << 20) / one.len() + 1;
    let body = format!(r#"{{"jobs": [{}]}}"#, one.repeat(n).trim_end_matches(','));
    let (status, _, answer) = call(&url, "POST", "/api/v1/jobs", &body);
    assert_eq!(status, 413, "{answer}");
    let e: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error");
    assert_eq!(e["error"]["code"], "payload_too_large");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("32 MiB") && msg.contains("sweep"), "{msg}");
    // Any other route: axum's 2 MiB, explained the same way.
    let (status, _, answer) = call(
        &url,
        "POST",
        "/api/v1/agents/a/heartbeat",
        &format!(r#"{{"version": "{}"}}"#, "x".repeat(3 << 20)),
    );
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("payload_too_large") && answer.contains("2 MiB"),
        "{answer}"
    );
    // A sweep over the batch limit is refused before anything is stored.
    let big: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let out = env.fail(&[
        "submit",
        "--server",
        &url,
        "--sweep",
        &format!("a={}", big.join(",")),
        "--sweep",
        &format!("b={}", big.join(",")),
        "--",
        "true",
    ]);
    assert!(out.contains("1000000 is over the limit of 250000"), "{out}");
    assert_eq!(get_json(&url, "/api/v1/jobs/counts", None)["queued"], 0);
}

#[test]
fn retention_forgets_old_finished_jobs_and_logs_keep_their_tail() {
    let env = Env::new();
    let (_d, url) = env.up(
        "up",
        &[
            "--fake-gpus",
            "1xA100-80GB",
            "--keep-jobs",
            "2",
            "--retention-every",
            "200ms",
            "--max-log-size",
            "1MiB",
        ],
    );
    let submit = |args: &[&str]| -> u64 {
        let mut a = vec!["submit", "--server", &url];
        a.extend_from_slice(args);
        env.json(&a)["ids"][0].as_u64().expect("id")
    };
    let finished = |id: u64| {
        get_json(&url, &format!("/api/v1/jobs/{id}"), None)["state"]
            .as_str()
            .is_some_and(|s| s == "succeeded")
    };
    // About 2.9 MB of output through a 1 MiB cap.
    let chatty = submit(&["--shell", "--", "seq 1 400000"]);
    wait_for(Duration::from_secs(60), || finished(chatty));
    let log = env.ok(&["logs", "--server", &url, &chatty.to_string()]);
    let first = log.lines().next().unwrap();
    assert!(
        first.starts_with("[trainyard: the first ")
            && first.contains("bytes of this log were dropped"),
        "{first}"
    );
    assert!(log.ends_with("399999\n400000\n"), "the tail is kept");
    let on_disk = env
        .home
        .join(format!("logs/{chatty}/1.log"))
        .metadata()
        .expect("the daemon's copy")
        .len();
    assert!(on_disk <= (1 << 20) + 200, "{on_disk} bytes on disk");

    // Only the 2 most recently finished jobs stay, with their logs.
    let ids: Vec<u64> = (0..3)
        .map(|_| submit(&["--gpus", "1", "--", "echo", "kept"]))
        .collect();
    // One GPU: they run in order, so the last one ending means all ended
    // (the first may already be forgotten).
    wait_for(Duration::from_secs(30), || finished(ids[2]));
    let gone = |id: u64| {
        let path = format!("/api/v1/jobs/{id}");
        http(&url, "GET", &path, Some(&token_of(&url)), "").0 == 404
    };
    // Their logs go with them (just after the rows).
    wait_for(Duration::from_secs(10), || {
        gone(chatty) && gone(ids[0]) && !env.home.join(format!("logs/{chatty}")).exists()
    });
    assert!(finished(ids[1]) && finished(ids[2]));
    assert!(env.home.join(format!("logs/{}/1.log", ids[2])).exists());
}

#[test]
fn ps_and_show_name_gpu_indices_and_an_impossible_request_says_so() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--fake-gpus", "2xA100-80GB", "--agent-name", "vm"]);
    let submit = |args: &[&str]| -> u64 {
        let mut a = vec!["submit", "--server", &url];
        a.extend_from_slice(args);
        env.json(&a)["ids"][0].as_u64().expect("id")
    };
    let pair = submit(&["--gpus", "2", "--name", "pair", "--", "true"]);
    wait_for(Duration::from_secs(30), || {
        get_json(&url, &format!("/api/v1/jobs/{pair}"), None)["state"] == "succeeded"
    });
    let ps = env.ok(&["ps", "--server", &url]);
    let line = ps
        .lines()
        .find(|l| l.contains("pair"))
        .expect("the job in ps");
    assert!(line.contains("vm:0,1"), "{ps}");
    let show = env.ok(&["show", "--server", &url, &pair.to_string()]);
    assert!(show.contains("state        succeeded"), "{show}");
    let attempt = show
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .expect("attempt 1");
    assert!(
        attempt.contains("vm:0,1") && attempt.contains("succeeded"),
        "{show}"
    );

    // No agent has an H100: the reason says so, not "waiting for GPUs".
    let h100 = submit(&["--gpus", "1", "--gpu-model", "H100", "--", "true"]);
    wait_for(Duration::from_secs(10), || {
        get_json(&url, &format!("/api/v1/jobs/{h100}"), None)["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no agent has an H100"))
    });
    // Two 1-GPU jobs behind a running 2-GPU job: waiting, not impossible.
    let busy = submit(&["--gpus", "2", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(30), || {
        get_json(&url, &format!("/api/v1/jobs/{busy}"), None)["state"] == "running"
    });
    let one = submit(&["--gpus", "1", "--", "true"]);
    wait_for(Duration::from_secs(10), || {
        get_json(&url, &format!("/api/v1/jobs/{one}"), None)["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("waiting for GPUs"))
    });
    let show = env.ok(&["show", "--server", &url, &h100.to_string()]);
    assert!(show.contains("reason       no agent has an H100"), "{show}");
    env.ok(&[
        "cancel",
        "--server",
        &url,
        &busy.to_string(),
        &one.to_string(),
        &h100.to_string(),
    ]);
}
