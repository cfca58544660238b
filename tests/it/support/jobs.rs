//! Helpers for tests that drive the queue through a daemon `Env::up`
//! started: read a job, wait for a state, submit with the CLI, read a log.

use std::time::{Duration, Instant};

use super::{get_json, Env};

/// `GET /jobs/{id}` (with the daemon's token).
pub fn job(url: &str, id: u64) -> serde_json::Value {
    get_json(url, &format!("/api/v1/jobs/{id}"), None)
}

/// Wait until job `id` is in `state`; panics with the job on timeout.
pub fn wait_state(url: &str, id: u64, state: &str, limit: Duration) -> serde_json::Value {
    let end = Instant::now() + limit;
    loop {
        let j = job(url, id);
        if j["state"] == state {
            return j;
        }
        assert!(
            Instant::now() < end,
            "job {id} never reached {state}: {j:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `trainyard submit --server URL ARGS…`; the first job id.
pub fn submit(env: &Env, url: &str, args: &[&str]) -> u64 {
    let mut a = vec!["submit", "--server", url];
    a.extend_from_slice(args);
    env.json(&a)["ids"][0].as_u64().expect("id")
}

/// `trainyard logs ID` of the latest attempt.
pub fn logs(env: &Env, url: &str, id: u64) -> String {
    env.ok(&["logs", "--server", url, &id.to_string()])
}

/// The UUIDs of the first agent's GPUs, once it has reported `n` of them
/// (panics after 10 s).
pub fn gpu_uuids(url: &str, n: usize) -> Vec<String> {
    let mut uuids: Vec<String> = Vec::new();
    super::wait_for(Duration::from_secs(10), || {
        let a = get_json(url, "/api/v1/agents", None);
        uuids = a[0]["report"]["gpus"]
            .as_array()
            .map(|g| {
                g.iter()
                    .map(|g| g["uuid"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        uuids.len() == n
    });
    uuids
}
