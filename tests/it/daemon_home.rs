//! One daemon per home, agents that say whether the daemon took them, and
//! logs that carry no terminal colour codes into files (field-test issue).

use std::time::Duration;

use crate::support::{get_json, wait_for, Env};

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
    let token_file = env.path("token");
    std::fs::write(&token_file, env.token()).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
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
