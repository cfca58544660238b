//! `trainyard service install|uninstall|status`: the units it writes pass
//! `systemd-analyze verify` (Debian's systemd), flags are checked with the
//! CLI's own parser, no secret gets into a unit; and `trainyard up` under
//! the notify protocol says READY=1 only once it answers, to a listener
//! the test binds as systemd would (`$NOTIFY_SOCKET`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use crate::support::{http, Env};

fn verify(unit: &Path) {
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze not found: apt-get install systemd (scripts/setup does)");
    // Only what it says of this unit counts: a machine where systemd is
    // not running may add notes about itself.
    let err = String::from_utf8_lossy(&out.stderr);
    let about_unit = err
        .lines()
        .any(|l| l.contains("trainyard") || l.contains(unit.to_str().unwrap_or_default()));
    assert!(
        out.status.success() && !about_unit,
        "systemd-analyze verify {}: {}{}",
        unit.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn units_verify_and_carry_checked_flags_but_no_secret() {
    let env = Env::new();
    let units = env.path("units");
    let dir = units.to_str().unwrap();
    // The daemon, as a system unit run by a named user.
    let r = env.json(&[
        "service",
        "install",
        "--unit-dir",
        dir,
        "--run-as",
        "tester",
        "up",
        "--bind",
        "0.0.0.0",
        "--allow-host",
        "gpu box",
        "--no-agent",
        "--keep-for",
        "30d",
    ]);
    let up = units.join("trainyard-up.service");
    assert_eq!(r["path"], up.to_str().unwrap());
    assert_eq!(r["started"], false);
    let text = std::fs::read_to_string(&up).unwrap();
    let bin = env!("CARGO_BIN_EXE_trainyard");
    assert!(
        text.contains(&format!(
            "ExecStart={bin} --home {} up --bind 0.0.0.0 --allow-host \"gpu box\" --no-agent --keep-for 30d\n",
            env.home.display()
        )),
        "{text}"
    );
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "After=network-online.target",
        "User=tester",
        "Environment=NO_COLOR=1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert_eq!(
        std::fs::metadata(&up).unwrap().permissions().mode() & 0o777,
        0o644
    );
    verify(&up);

    // An agent, as a user unit: its token from a 0600 file given relative
    // to here, which the unit names absolutely (a service runs in /).
    let token = env.path("agent.token");
    std::fs::write(&token, "s3cret-token-value\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = env.fail(&[
        "service",
        "install",
        "--user",
        "--unit-dir",
        dir,
        "agent",
        "--server",
        "http://lab:7171",
        "--token-file",
        "agent.token",
    ]);
    assert!(err.contains("agent.token") && err.contains("644"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&[
        "service",
        "install",
        "--user",
        "--unit-dir",
        dir,
        "agent",
        "--server",
        "http://lab:7171",
        "--token-file",
        "agent.token",
        "--fake-gpus",
        "1xA100-80GB",
    ]);
    let agent = units.join("trainyard-agent.service");
    let text = std::fs::read_to_string(&agent).unwrap();
    assert!(
        text.contains(&format!("--token-file {}", token.display())),
        "{text}"
    );
    assert!(
        !text.contains("s3cret") && !text.contains("User="),
        "{text}"
    );
    assert!(text.contains("WantedBy=default.target"), "{text}");
    verify(&agent);

    // Bad flags fail now, not at boot; nothing is written.
    for (args, want) in [
        (vec!["up", "--bogus"], "--bogus"),
        (vec!["up", "--port", "http"], "--port"),
        (
            vec!["agent", "--server", "http://lab:7171", "--token", "abc"],
            "--token-file",
        ),
        (vec!["agent", "--token-file", "agent.token"], "--server"),
    ] {
        let mut a = vec!["service", "install", "--unit-dir", dir];
        a.extend(args.iter());
        let err = env.fail(&a);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(&units).unwrap().count(), 2);
    // `--home` anywhere is the CLI's global flag: the unit's home.
    env.ok(&[
        "service",
        "install",
        "--unit-dir",
        dir,
        "up",
        "--home",
        "/srv/lab",
    ]);
    let text = std::fs::read_to_string(&up).unwrap();
    assert!(
        text.contains(&format!("ExecStart={bin} --home /srv/lab up\n")),
        "{text}"
    );

    // Status, then uninstall.
    let s = env.json(&["service", "status", "--unit-dir", dir]);
    assert_eq!(s[0]["installed"], true);
    assert_eq!(s[1]["installed"], true);
    assert!(s[1]["exec_start"]
        .as_str()
        .unwrap()
        .contains(" agent --server"));
    env.ok(&["service", "uninstall", "--unit-dir", dir, "up"]);
    assert!(!up.exists());
    let err = env.fail(&["service", "uninstall", "--unit-dir", dir, "up"]);
    assert!(err.contains("no trainyard-up.service unit"), "{err}");
}

#[test]
fn up_tells_systemd_it_is_ready_once_it_answers_and_when_it_stops() {
    let env = Env::new();
    let sock_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    for round in 0..2 {
        let log = env.path(&format!("up{round}.stderr"));
        let mut child = env
            .cmd()
            .args(["up", "--port", "0", "--no-agent"])
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification ({e}): {}",
                std::fs::read_to_string(&log).unwrap()
            )
        });
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
        let url = msg
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=listening on "))
            .unwrap_or_else(|| panic!("no URL in {msg}"))
            .to_string();
        // Ready means answering: no wait, no retry. The second time, systemd
        // stops it at once: the stop must be as clean.
        if round == 0 {
            assert_eq!(http(&url, "GET", "/api/v1/health", None, "").0, 200);
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification after SIGTERM ({e}): {}",
                std::fs::read_to_string(&log).unwrap()
            )
        });
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
        assert!(child.wait().unwrap().success());
    }
}
