//! What a web page (or another local user) can do to a daemon on loopback:
//! the attacks of the security review as raw HTTP requests, each refused
//! before any handler runs, and nothing changed afterwards.

use crate::support::{get_json, raw, Env};

fn jobs(url: &str) -> Vec<serde_json::Value> {
    get_json(url, "/api/v1/jobs", None)
        .as_array()
        .expect("jobs")
        .clone()
}

#[test]
fn cross_site_forms_and_dns_rebinding_change_nothing() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent"]);
    let addr = url.trim_start_matches("http://").to_string();
    let token = env.token();
    let marker = env.path("pwned");
    let victim = env.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("secret.txt"), "data").unwrap();

    // One legitimate job to cancel, so a refused cancel is visible.
    let (status, body) = raw(
        &url,
        &format!(
            "POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"
        ),
        r#"{"jobs":[{"command":["sleep","600"]}]}"#,
    );
    assert_eq!(status, 201, "{body}");

    // A job that would prove the attack ran, padded the way an HTML form
    // with enctype="text/plain" pads its one field.
    let job = format!(
        r#"{{"jobs":[{{"command":["touch","{}"]}}],"x":"="}}"#,
        marker.display()
    );
    let snap = format!(r#"{{"path":"{}","x":"="}}"#, victim.display());
    let evil = "http://evil.example";
    // (what, request head, body, expected status)
    let attacks: Vec<(&str, String, String, u16)> = vec![
        (
            "form post, text/plain, foreign Origin",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            job.clone(),
            403,
        ),
        (
            "form post, no Origin, Sec-Fetch-Site: cross-site",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain"),
            job.clone(),
            403,
        ),
        (
            "a page on another localhost port (same-site)",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://127.0.0.1:1\r\nSec-Fetch-Site: same-site\r\nContent-Type: application/json"),
            job.clone(),
            403,
        ),
        (
            "sandboxed page (Origin: null)",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nOrigin: null\r\nContent-Type: application/json"),
            job.clone(),
            403,
        ),
        (
            "form post without browser headers (another local user, curl)",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain"),
            job.clone(),
            401,
        ),
        (
            "JSON without the token",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            job.clone(),
            401,
        ),
        (
            "text/plain even with the token",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            job.clone(),
            415,
        ),
        (
            "unknown top-level key, with the token",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
            job.clone(),
            400,
        ),
        (
            "DNS rebinding: submit under the page's own name",
            format!("POST /api/v1/jobs HTTP/1.1\r\nHost: evil.example:{}\r\nOrigin: http://evil.example:{}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json", port(&addr), port(&addr)),
            format!(r#"{{"jobs":[{{"command":["touch","{}"]}}]}}"#, marker.display()),
            421,
        ),
        (
            "snapshot of any directory, form post",
            format!("POST /api/v1/datasets/stolen/snapshot HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            snap.clone(),
            403,
        ),
        (
            "snapshot, text/plain with the token",
            format!("POST /api/v1/datasets/stolen/snapshot HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            snap.clone(),
            415,
        ),
        (
            "cancel, form post",
            format!("POST /api/v1/jobs/1/cancel HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            String::new(),
            403,
        ),
        (
            "cancel, no content type, with the token",
            format!("POST /api/v1/jobs/1/cancel HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}"),
            String::new(),
            415,
        ),
        (
            "tag, form post, foreign Origin",
            format!("POST /api/v1/jobs/1/tags HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            r#"{"add":["ignore-usage"],"x":"="}"#.to_string(),
            403,
        ),
        (
            "tag, text/plain, with the token",
            format!("POST /api/v1/jobs/1/tags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            r#"{"add":["ignore-usage"]}"#.to_string(),
            415,
        ),
        (
            "tag, unknown key, with the token",
            format!("POST /api/v1/jobs/1/tags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
            r#"{"add":["ignore-usage"],"x":"="}"#.to_string(),
            400,
        ),
        (
            "run tag, form post, foreign Origin",
            format!("POST /api/v1/runs/usage001/tags HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            r#"{"add":["ignore-usage"]}"#.to_string(),
            403,
        ),
        (
            "run tag, text/plain, with the token",
            format!("POST /api/v1/runs/usage001/tags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            r#"{"add":["ignore-usage"]}"#.to_string(),
            415,
        ),
        (
            "run tag, no token",
            format!("POST /api/v1/runs/usage001/tags HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            r#"{"add":["ignore-usage"]}"#.to_string(),
            401,
        ),
        (
            "run tag, unknown key, with the token",
            format!("POST /api/v1/runs/usage001/tags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
            r#"{"add":["ignore-usage"],"x":"="}"#.to_string(),
            400,
        ),
        (
            "samples, no token",
            format!("POST /api/v1/agents/evil/samples HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            r#"{"agent_id":"x","sent_ms":0,"dropped":0,"samples":[]}"#.to_string(),
            401,
        ),
        (
            "DNS rebinding: read the usage",
            format!("GET /api/v1/usage HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {token}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "cross-site read of the usage",
            format!("GET /api/v1/usage HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nSec-Fetch-Site: cross-site"),
            String::new(),
            403,
        ),
        (
            "a job's runs without the token",
            format!("GET /api/v1/jobs/1/runs HTTP/1.1\r\nHost: {addr}"),
            String::new(),
            401,
        ),
        (
            "cross-site read of a run's jobs",
            format!("GET /api/v1/runs/plain001/jobs HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nSec-Fetch-Site: cross-site\r\nAuthorization: Bearer {token}"),
            String::new(),
            403,
        ),
        (
            "DNS rebinding: scrape the metrics",
            format!("GET /metrics HTTP/1.1\r\nHost: evil.example:{}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "DNS rebinding: read the jobs",
            format!("GET /api/v1/jobs HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {token}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "DNS rebinding: read the UI",
            format!("GET / HTTP/1.1\r\nHost: evil.example:{}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "no Host header",
            "GET /api/v1/jobs HTTP/1.0".to_string(),
            String::new(),
            421,
        ),
        (
            "a route whose path ends in /health",
            format!("GET /api/v1/runs/health HTTP/1.1\r\nHost: {addr}"),
            String::new(),
            401,
        ),
        (
            "cross-site form adding a watch (snapshots a victim's directory)",
            format!("POST /api/v1/watches HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            r#"{"path":"/tmp","snapshot":"evil"}"#.to_string(),
            403,
        ),
        (
            "adding a watch without the token",
            format!("POST /api/v1/watches HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            r#"{"path":"/tmp","snapshot":"evil"}"#.to_string(),
            401,
        ),
        (
            "adding a watch as text/plain, with the token",
            format!("POST /api/v1/watches HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            r#"{"path":"/tmp","snapshot":"evil"}"#.to_string(),
            415,
        ),
        (
            "adding a watch with an unknown key, with the token",
            format!("POST /api/v1/watches HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
            r#"{"path":"/tmp","snapshot":"evil","x":1}"#.to_string(),
            400,
        ),
        (
            "DNS rebinding: read the watch log",
            format!("GET /api/v1/watches/log HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {token}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "cross-site pause of a watch",
            format!("POST /api/v1/watches/1/pause HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nSec-Fetch-Site: cross-site\r\nAuthorization: Bearer {token}"),
            String::new(),
            403,
        ),
        (
            "removing a watch without the token",
            format!("DELETE /api/v1/watches/1 HTTP/1.1\r\nHost: {addr}"),
            String::new(),
            401,
        ),
        (
            "cross-site form adding a notification sink (posts events elsewhere)",
            format!("POST /api/v1/notify/sinks HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            r#"{"name":"evil","kind":"webhook","url":"http://evil.example/x"}"#.to_string(),
            403,
        ),
        (
            "adding a notification sink without the token",
            format!("POST /api/v1/notify/sinks HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            r#"{"name":"evil","kind":"webhook","url":"http://evil.example/x"}"#.to_string(),
            401,
        ),
        (
            "DNS rebinding: list the notification sinks",
            format!("GET /api/v1/notify/sinks HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {token}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "removing a notification sink as a simple request",
            format!("DELETE /api/v1/notify/sinks/x HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            String::new(),
            415,
        ),
        (
            "cross-site form adding a cluster (would run commands over ssh)",
            format!("POST /api/v1/clusters HTTP/1.1\r\nHost: {addr}\r\nOrigin: {evil}\r\nContent-Type: text/plain"),
            r#"{"name":"evil","ssh":"x@evil.example"}"#.to_string(),
            403,
        ),
        (
            "adding a cluster without the token",
            format!("POST /api/v1/clusters HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            r#"{"name":"evil","ssh":"x@evil.example"}"#.to_string(),
            401,
        ),
        (
            "adding a cluster as text/plain",
            format!("POST /api/v1/clusters HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            r#"{"name":"evil","ssh":"x@evil.example"}"#.to_string(),
            415,
        ),
        (
            "adding a cluster with an unknown key",
            format!("POST /api/v1/clusters HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
            r#"{"name":"evil","sshh":"x@evil.example"}"#.to_string(),
            400,
        ),
        (
            "adding a cluster whose ssh target is an ssh option",
            format!("POST /api/v1/clusters HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
            r#"{"name":"evil","ssh":"-oProxyCommand=touch /tmp/x"}"#.to_string(),
            400,
        ),
        (
            "DNS rebinding: list the clusters",
            format!("GET /api/v1/clusters HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {token}", port(&addr)),
            String::new(),
            421,
        ),
        (
            "testing a cluster without the token (runs commands)",
            format!("POST /api/v1/clusters/x/test HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json"),
            String::new(),
            401,
        ),
        (
            "removing a cluster as a simple request",
            format!("DELETE /api/v1/clusters/x HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain"),
            String::new(),
            415,
        ),
        (
            "the cluster pools without the token",
            format!("GET /api/v1/clusters/pools HTTP/1.1\r\nHost: {addr}"),
            String::new(),
            401,
        ),
        (
            "the event stream without the token",
            format!("GET /api/v1/events HTTP/1.1\r\nHost: {addr}"),
            String::new(),
            401,
        ),
    ];
    let mut failed = Vec::new();
    for (what, head, body, want) in &attacks {
        let (status, answer) = raw(&url, head, body);
        if status != *want {
            failed.push(format!("{what}: got {status}, want {want}: {answer}"));
        }
    }
    assert!(
        failed.is_empty(),
        "attacks not refused as expected:\n{}",
        failed.join("\n")
    );

    // Refusals say why.
    let (_, answer) = raw(
        &url,
        &format!("POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"),
        &job,
    );
    assert!(answer.contains("unknown field `x`"), "{answer}");
    let (_, answer) = raw(
        &url,
        &format!(
            "GET /api/v1/jobs HTTP/1.1\r\nHost: evil.example:1\r\nAuthorization: Bearer {token}"
        ),
        "",
    );
    assert!(answer.contains("--allow-host"), "{answer}");

    // Nothing changed: the one legitimate job, still queued; no dataset.
    let all = jobs(&url);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["state"], "queued");
    assert_eq!(all[0]["spec"]["tags"], serde_json::json!([]), "{all:?}");
    assert!(get_json(&url, "/api/v1/datasets", None)
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!marker.exists());
    assert_eq!(
        get_json(&url, "/api/v1/notify/sinks", None),
        serde_json::json!([]),
        "no notification sink was added"
    );
    assert_eq!(
        get_json(&url, "/api/v1/watches", None),
        serde_json::json!([]),
        "no watch was added"
    );
    assert_eq!(
        get_json(&url, "/api/v1/clusters", None),
        serde_json::json!([]),
        "no cluster was added"
    );

    // What is allowed still works: health without a token, the UI's own
    // origin, loopback names, the CLI with the home's token.
    let (status, _) = raw(
        &url,
        &format!(
            "GET /api/v1/health HTTP/1.1\r\nHost: localhost:{}",
            port(&addr)
        ),
        "",
    );
    assert_eq!(status, 200);
    let (status, body) = raw(
        &url,
        &format!(
            "POST /api/v1/jobs/1/cancel HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"
        ),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(jobs(&url)[0]["state"], "cancelled");
    let (status, _) = raw(
        &url,
        &format!("GET / HTTP/1.1\r\nHost: [::1]:{}", port(&addr)),
        "",
    );
    assert_eq!(status, 200);
    env.ok(&["ps", "--server", &url]);
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').expect("host:port").1
}

#[test]
fn allowed_host_names_are_served_and_ui_prints_a_login_address() {
    let env = Env::new();
    let (_d, url) = env.up("up", &["--no-agent", "--allow-host", "gpu-box.lab"]);
    let addr = url.trim_start_matches("http://").to_string();
    let token = env.token();
    let (status, body) = raw(
        &url,
        &format!(
            "GET /api/v1/jobs HTTP/1.1\r\nHost: GPU-BOX.lab:{}\r\nAuthorization: Bearer {token}",
            port(&addr)
        ),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = raw(
        &url,
        &format!(
            "GET /api/v1/jobs HTTP/1.1\r\nHost: other.lab:{}\r\nAuthorization: Bearer {token}",
            port(&addr)
        ),
        "",
    );
    assert_eq!(status, 421);

    // `trainyard ui` prints the login address for the home's daemon.
    let printed = env.ok(&["ui"]);
    assert_eq!(printed.trim(), format!("{url}/#token={token}"));
    let v = env.json(&["ui"]);
    assert_eq!(v["url"], format!("{url}/#token={token}"));
    // Without a token it says where one comes from.
    let o = env
        .cmd()
        .args(["ui", "--server", &url, "--home"])
        .arg(env.path("empty-home"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TRAINYARD_TOKEN"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
