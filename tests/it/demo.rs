//! `trainyard demo`: one command gives a daemon on a throwaway home with
//! fake GPUs, the sample dataset in two versions, the bundled wandb runs
//! and jobs in every state; the user's own home is left alone, and the
//! throwaway one is gone after Ctrl-C (SIGTERM here).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::Env;

#[test]
fn the_demo_shows_every_part_and_cleans_up() {
    let env = Env::new();
    let log = env.path("demo.stderr");
    let mut child = env
        .cmd()
        .args(["--json", "demo", "--no-open"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{e}: {line}{}", std::fs::read_to_string(&log).unwrap()));
    let home = PathBuf::from(v["home"].as_str().unwrap());
    assert!(home
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("trainyard-demo-"));
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(v["runs"], 3);
    let cli = |args: &[&str]| -> serde_json::Value {
        let o = env
            .cmd()
            .env("TRAINYARD_HOME", &home)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // Every state a job can show, with the reason the queued one waits.
    let want = [
        ("eval checkpoint", "failed"),
        ("prepare-data", "succeeded"),
        ("train resnet18", "running"),
        ("train resnet50", "queued"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ps = cli(&["ps", "--all"]);
        let mut states: Vec<(String, String)> = ps
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["spec"]["name"].as_str().unwrap().to_string(),
                    j["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        states.sort();
        if states
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .eq(want)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs: {states:?}\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Fake GPUs, named so.
    let gpus = cli(&["gpus"]).to_string();
    assert_eq!(gpus.matches("Fake A100").count(), 2, "{gpus}");
    assert!(gpus.contains("Fake RTX4090"), "{gpus}");
    // The dataset's two versions, tagged; the runs.
    let log_json = cli(&["data", "log", "sample"]).to_string();
    assert!(
        log_json.contains("\"v1\"") && log_json.contains("\"v2\""),
        "{log_json}"
    );
    let runs = cli(&["runs", "ls"]).to_string();
    for id in ["demo0001", "demo0002", "demo0003"] {
        assert!(runs.contains(id), "{runs}");
    }
    // The user's own home got none of it.
    assert!(!env.home.join("queue.db").exists());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!home.exists(), "the throwaway home is deleted");
}
