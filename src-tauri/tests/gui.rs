//! The GUI tests, run by `cargo test --workspace` (what `scripts/test` and CI
//! run): the web UI in Debian's Chromium against a real daemon
//! (`tests/e2e/run.mjs`), and this desktop app driven over WebDriver through
//! `tauri-driver` + `WebKitWebDriver` under Xvfb (`tests/desktop/webdriver.mjs`).
//!
//! They live in this package because they need what only it needs (webkit,
//! a display server, browsers), so `cargo test` of the core stays headless;
//! and because one `cargo test --workspace` then builds the daemon binary,
//! this binary and every test with one feature resolution: building the
//! desktop separately would compile much of the dependency graph twice.
//! A missing tool fails the test with the package to install, never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One browser at a time: both tests start daemons and browsers, and on a
/// 2-core CI machine running them together only invites timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("src-tauri is in the repository")
        .to_path_buf()
}

fn need(tool: &str, hint: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: {hint} (scripts/test lists what the GUI tests need)"
    );
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{what} failed:\n{text}");
}

/// The daemon binary, built by the same `cargo test --workspace` (the core's
/// integration tests need it) next to this package's binary.
fn daemon_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_trainyard-desktop")).with_file_name("trainyard");
    assert!(
        p.exists(),
        "{} is missing: run the GUI tests with `cargo test --workspace` (or scripts/test), which builds it",
        p.display()
    );
    p
}

/// The wandb-compatible test server (the core's `examples/wandb_server`),
/// built by the same `cargo test --workspace`, that the UI syncs runs to.
fn wandb_server_bin() -> PathBuf {
    let p = daemon_bin().with_file_name("examples").join("wandb_server");
    assert!(
        p.exists(),
        "{} is missing: run the GUI tests with `cargo test --workspace` (or scripts/test), which builds it",
        p.display()
    );
    p
}

#[test]
fn web_ui_in_chromium() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    need("node", "install Node.js 20");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: apt-get install chromium (or set CHROMIUM)"
    );
    let e2e = repo().join("tests/e2e");
    if !e2e.join("node_modules/playwright-core").exists() {
        need("npm", "install Node.js 20 with npm");
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&e2e),
            "npm ci in tests/e2e",
        );
    }
    run(
        Command::new("node")
            .args(["--test", "unit.test.mjs"])
            .current_dir(&e2e),
        "the UI's unit tests",
    );
    run(
        Command::new("node")
            .arg("run.mjs")
            .env("TRAINYARD_BIN", daemon_bin())
            .env("TRAINYARD_WANDB_SERVER", wandb_server_bin())
            .current_dir(&e2e),
        "the web UI end-to-end tests",
    );
}

#[test]
fn desktop_app_over_webdriver() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    need("node", "install Node.js 20");
    need("xvfb-run", "apt-get install xvfb xauth");
    need("WebKitWebDriver", "apt-get install webkit2gtk-driver");
    need("tauri-driver", "cargo install tauri-driver --locked");
    need("dbus-run-session", "apt-get install dbus-daemon");
    need("gnome-keyring-daemon", "apt-get install gnome-keyring");
    // The lab token goes to a real Secret Service: gnome-keyring on a
    // session bus of the test's own, its keyrings in a temp directory,
    // unlocked with a throwaway password (as on a headless CI machine).
    let keyrings = std::env::temp_dir().join(format!("trainyard-keyrings-{}", std::process::id()));
    std::fs::create_dir_all(&keyrings).expect("a temp dir for the keyrings");
    run(
        Command::new("dbus-run-session")
            .args([
                "--",
                "sh",
                "-c",
                "printf test | gnome-keyring-daemon --unlock --components=secrets >/dev/null \
                 && exec xvfb-run -a node tests/desktop/webdriver.mjs",
            ])
            .env("XDG_DATA_HOME", &keyrings)
            .env("TRAINYARD_DESKTOP_TOKEN_STORE", "keyring")
            .env(
                "TRAINYARD_DESKTOP_BIN",
                env!("CARGO_BIN_EXE_trainyard-desktop"),
            )
            .current_dir(repo()),
        "the desktop WebDriver test",
    );
    let _ = std::fs::remove_dir_all(&keyrings);
}
