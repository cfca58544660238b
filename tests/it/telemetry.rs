//! GPU telemetry end to end: a scripted fake trace drives a real agent,
//! the daemon stores what it ships, and the telemetry API gives the
//! scripted values back with the job that held each GPU; `/metrics` is
//! scraped by a real Prometheus server (Debian's `prometheus` package) and
//! read back through its query API, and checked by `promtool`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::jobs::{submit, wait_state};
use crate::support::{free_port, get_json, http, raw, token_of, wait_for, Env};

/// GPU 0: 10 %, 1 GiB, 60 W for 2 s, then 90 %, 30,000 MiB, 300 W, 70 °C.
/// GPU 1 keeps the inventory's values. A GPU's processes are those whose
/// environment names it (as NVML lists CUDA processes).
const TRACE: &str = "version = 1
processes = \"environment\"
[[gpu]]
index = 0
points = [[0, 10, 1024, 60], [2, 90, 30000, 300, 70]]
";

fn telemetry(url: &str, query: &str) -> serde_json::Value {
    get_json(url, &format!("/api/v1/telemetry?{query}"), None)
}

fn points(series: &serde_json::Value) -> &Vec<serde_json::Value> {
    series["points"].as_array().expect("points")
}

#[test]
fn a_scripted_trace_comes_back_through_the_telemetry_api_with_its_job() {
    let env = Env::new();
    let trace = env.path("trace.toml");
    std::fs::write(&trace, TRACE).unwrap();
    let (_d, url) = env.up("up", &["--no-agent"]);
    let _agent = env.spawn(
        "agent",
        &[
            "agent",
            "--server",
            &url,
            "--agent-name",
            "lab1",
            "--fake-gpus",
            "2xA100-80GB",
            "--fake-gpu-trace",
            trace.to_str().unwrap(),
            "--sample-every",
            "200ms",
        ],
    );
    // Past the trace's step at 2 s, then a 1-GPU job (best fit: GPU 0,
    // the one with less free memory) runs for 2 s.
    std::thread::sleep(Duration::from_millis(2500));
    let job = submit(&env, &url, &["--gpus", "1", "--", "sleep", "2"]);
    wait_state(&url, job, "succeeded", Duration::from_secs(30));
    // A foreign process on GPU 1 (names it, as a CUDA process would use it).
    let uuids = crate::support::jobs::gpu_uuids(&url, 2);
    let mut foreign = std::process::Command::new("sleep")
        .arg("3")
        .env("TRAINYARD_GPU_UUIDS", &uuids[1])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Samples are shipped every second at this rate.
    let mut answer = serde_json::Value::Null;
    wait_for(Duration::from_secs(10), || {
        answer = telemetry(&url, "since=30s");
        answer["series"].as_array().is_some_and(|s| {
            s.len() == 2
                && points(&s[1])
                    .iter()
                    .any(|p| p["other_processes"].as_u64() > Some(0))
        })
    });
    let _ = foreign.kill();
    let _ = foreign.wait();
    assert_eq!(answer["resolution"], "raw");
    let series = answer["series"].as_array().unwrap();
    let (g0, g1) = (&series[0], &series[1]);
    assert_eq!(g0["host"], "lab1");
    assert_eq!(
        (g0["index"].as_u64(), g0["uuid"].as_str()),
        (Some(0), Some(uuids[0].as_str()))
    );
    assert_eq!(g0["model"], "Fake A100");
    assert_eq!(g0["memory_total_mib"], 81920);
    // Every sample says what the script says at its time: before the
    // step, or after it.
    let p0 = points(g0);
    assert!(p0.len() >= 20, "{}", p0.len());
    let mut before = 0;
    let mut after = 0;
    let mut stepped = false;
    for p in p0 {
        let v = (
            p["util_pct"]["mean"].as_f64().unwrap(),
            p["mem_used_mib"]["mean"].as_f64().unwrap(),
            p["power_w"]["mean"].as_f64().unwrap(),
        );
        match v {
            (10.0, 1024.0, 60.0) => before += 1,
            (90.0, 30000.0, 300.0) => {
                after += 1;
                assert_eq!(p["temp_c"]["max"], 70.0);
                // The interval's energy is the counter's increase: the
                // scripted 300 W over the interval (to the ms the two
                // clocks read apart), once the interval is past the step.
                let e = p["energy_mj"].as_i64().unwrap();
                let cov = p["covered_ms"].as_i64().unwrap();
                if stepped {
                    assert!((e - 300 * cov).abs() <= 300 * 2, "{e} mJ over {cov} ms");
                } else {
                    assert!(e > 60 * cov && e < 300 * cov, "{e} mJ over {cov} ms");
                }
                stepped = true;
            }
            other => panic!("a value the trace never had: {other:?} in {p}"),
        }
    }
    assert!(before > 0 && after > 0, "{before} {after}");
    // The job's samples name it, on GPU 0 only, from the queue's
    // assignment; its own process on the GPU is not foreign.
    let held: Vec<&serde_json::Value> = p0.iter().filter(|p| p["job"] == job).collect();
    assert!(held.len() >= 5, "{}", held.len());
    assert!(held
        .iter()
        .all(|p| p["attempt"] == 1 && p["other_processes"] == 0));
    assert!(points(g1).iter().all(|p| p["job"].is_null()));
    // GPU 1 kept the inventory's values, and saw the foreign process.
    assert!(points(g1)
        .iter()
        .all(|p| p["util_pct"]["max"] == 0.0 && p["power_w"]["max"] == 50.0));
    // By job: only its samples, over its attempt's time, without a range.
    let by_job = telemetry(&url, &format!("job={job}"));
    let s = by_job["series"].as_array().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["uuid"], uuids[0].as_str());
    assert_eq!(points(&s[0]).len(), held.len());
    let detail = get_json(&url, &format!("/api/v1/jobs/{job}"), None);
    let a = &detail["attempt_log"][0];
    let (from, until) = (
        a["assigned_ns"].as_i64().unwrap() / 1_000_000,
        a["finished_ns"].as_i64().unwrap() / 1_000_000,
    );
    for p in points(&s[0]) {
        let t = p["t_ms"].as_i64().unwrap();
        assert!(from <= t && t < until, "{from} <= {t} < {until}");
    }
    // The same history at 1-minute resolution, from the raw samples.
    let minute = telemetry(&url, "since=5m&resolution=1m&gpu=0&host=lab1");
    assert_eq!(minute["step_ms"], 60_000);
    let covered: i64 = minute["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["covered_ms"].as_i64().unwrap())
        .sum();
    let raw_covered: i64 = telemetry(&url, "since=5m&resolution=raw&gpu=0")["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["covered_ms"].as_i64().unwrap())
        .sum();
    assert_eq!(covered, raw_covered);
    // Bad parameters are named.
    let token = token_of(&url);
    for (q, want) in [
        ("since=yesterday", "since"),
        ("resolution=5m", "resolution"),
        ("since=1m&until=2m", "must be before until"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = http(
            &url,
            "GET",
            &format!("/api/v1/telemetry?{q}"),
            Some(&token),
            "",
        );
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(want), "{q}: {body}");
    }
    // The database is the home's, owner-only.
    let mode = std::fs::metadata(env.home.join("telemetry.db")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

/// A job shorter than the agent's sample batches (here 1 s inside 5 s
/// batches) is over before any batch arrives while it runs: its samples
/// are attributed to it when the daemon learns of it, and never cover more
/// time than it held its GPU.
#[test]
fn a_job_shorter_than_a_sample_batch_keeps_its_samples() {
    let env = Env::new();
    let trace = env.path("trace.toml");
    std::fs::write(&trace, TRACE).unwrap();
    let (_d, url) = env.up("up", &["--no-agent"]);
    let _agent = env.spawn(
        "agent",
        &[
            "agent",
            "--server",
            &url,
            "--agent-name",
            "lab1",
            "--fake-gpus",
            "1xA100-80GB",
            "--fake-gpu-trace",
            trace.to_str().unwrap(),
            "--sample-every",
            "1s",
        ],
    );
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let job = submit(&env, &url, &["--gpus", "1", "--", "sleep", "1.5"]);
        wait_state(&url, job, "succeeded", Duration::from_secs(30));
        jobs.push(job);
    }
    for job in jobs {
        let detail = get_json(&url, &format!("/api/v1/jobs/{job}"), None);
        let a = &detail["attempt_log"][0];
        let (from, until) = (
            a["assigned_ns"].as_i64().unwrap() / 1_000_000,
            a["finished_ns"].as_i64().unwrap() / 1_000_000,
        );
        // Every 1 s sample inside the hold: at least one of a 1.5 s job.
        let mut answer = serde_json::Value::Null;
        wait_for(Duration::from_secs(15), || {
            answer = telemetry(&url, &format!("job={job}"));
            answer["series"][0]["points"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        });
        let p = points(&answer["series"][0]);
        let covered: i64 = p.iter().map(|p| p["covered_ms"].as_i64().unwrap()).sum();
        assert!(
            covered > 0 && covered <= until - from,
            "job {job}: {covered} ms of samples over a {} ms hold",
            until - from
        );
        for p in p {
            let t = p["t_ms"].as_i64().unwrap();
            assert!(from <= t && t < until, "{from} <= {t} < {until}");
        }
    }
}

#[test]
fn a_bad_trace_file_stops_the_agent_naming_the_line() {
    let env = Env::new();
    let trace = env.path("bad.toml");
    std::fs::write(
        &trace,
        "[[gpu]]\nindex = 0\npoints = [[0, 0, 1, 1], [1, 101, 1, 1]]\n",
    )
    .unwrap();
    let err = env.fail(&[
        "agent",
        "--server",
        "http://127.0.0.1:1",
        "--fake-gpus",
        "1xA100-80GB",
        "--fake-gpu-trace",
        trace.to_str().unwrap(),
    ]);
    assert!(
        err.contains("bad.toml:3: gpu[0].points[1][1] utilization (%): 101 is out of range"),
        "{err}"
    );
    // A trace needs a fake inventory.
    let err = env.fail(&[
        "agent",
        "--server",
        "http://127.0.0.1:1",
        "--fake-gpu-trace",
        "x",
    ]);
    assert!(err.contains("--fake-gpus"), "{err}");
}

/// A Prometheus server on 127.0.0.1 scraping `targets` every second, with
/// its data in a temp dir; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> Option<PathBuf> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn start_prometheus(bin: &Path, dir: &Path, targets: &[(&str, &str)]) -> Prometheus {
    let mut cfg =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, target) in targets {
        cfg.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        ));
    }
    std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = std::process::Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_for(Duration::from_secs(30), || {
        http(&p.url, "GET", "/-/ready", None, "").0 == 200
    });
    p
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector, once `ok` holds for it.
fn prom_until(
    p: &Prometheus,
    q: &str,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(
            &p.url,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(q)),
            None,
            "",
        );
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if ok(&r) {
                return r;
            }
        }
        assert!(
            Instant::now() < end,
            "{q}: never as expected: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn metrics_are_scraped_by_a_real_prometheus_server() {
    let Some(bin) = prometheus_binary() else {
        // scripts/test (CI) installs it and requires it; plain `cargo test`
        // runs without it and says so.
        assert!(
            std::env::var_os("TRAINYARD_REQUIRE_PROMETHEUS").is_none(),
            "TRAINYARD_REQUIRE_PROMETHEUS is set but there is no prometheus binary \
             (apt-get install prometheus; scripts/setup does)"
        );
        eprintln!("SKIPPED: no prometheus binary (apt-get install prometheus; scripts/setup does)");
        return;
    };
    let env = Env::new();
    let trace = env.path("trace.toml");
    std::fs::write(
        &trace,
        "[[gpu]]\nindex = 0\npoints = [[0, 77, 4096, 250, 55]]\n",
    )
    .unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_d, url) = env.up(
        "up",
        &[
            "--fake-gpus",
            "2xH100-80GB",
            "--fake-gpu-trace",
            trace.to_str().unwrap(),
            "--metrics-bind",
            &metrics_addr,
        ],
    );
    let api = url.trim_start_matches("http://").to_string();
    let dir = env.path("prom");
    std::fs::create_dir_all(&dir).unwrap();
    let prom = start_prometheus(
        &bin,
        &dir,
        &[("trainyard", &api), ("metrics_only", &metrics_addr)],
    );
    // A job holds a GPU until told to stop (and so carries a job label).
    let stop = env.path("stop");
    let wait = format!("while [ ! -e {} ]; do sleep 0.1; done", stop.display());
    let job = submit(&env, &url, &["--gpus", "1", "--", "sh", "-c", &wait]);
    wait_state(&url, job, "running", Duration::from_secs(20));
    // `hpc_job`, as the DCGM exporter's job mapping names it (a `job` label
    // would collide with the scrape job's and be renamed).
    let held = prom_until(
        &prom,
        &format!("DCGM_FI_DEV_GPU_UTIL{{hpc_job=\"{job}\"}}"),
        |r| r.len() == 2,
    );
    assert!(held.iter().all(|r| r["metric"]["gpu"] == "0"), "{held:?}");
    std::fs::write(&stop, "").unwrap();
    wait_state(&url, job, "succeeded", Duration::from_secs(30));
    // The GPU gauges, with the DCGM exporter's labels.
    let util = prom_until(
        &prom,
        "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",job=\"trainyard\",hpc_job=\"\"}",
        |r| r.len() == 1,
    );
    let m = &util[0]["metric"];
    assert_eq!(value(&util[0]), 77.0);
    assert_eq!(m["modelName"], "Fake H100");
    assert!(m["UUID"].as_str().unwrap().starts_with("GPU-fake-"));
    assert!(!m["Hostname"].as_str().unwrap().is_empty());
    for (q, want) in [
        ("DCGM_FI_DEV_FB_USED{gpu=\"0\",job=\"trainyard\"}", 4096.0),
        (
            "DCGM_FI_DEV_FB_FREE{gpu=\"0\",job=\"trainyard\"}",
            80.0 * 1024.0 - 4096.0,
        ),
        ("DCGM_FI_DEV_GPU_TEMP{gpu=\"0\",job=\"trainyard\"}", 55.0),
        ("DCGM_FI_DEV_POWER_USAGE{gpu=\"1\",job=\"trainyard\"}", 50.0),
        ("trainyard_agents_up{job=\"metrics_only\"}", 1.0),
        ("trainyard_jobs{state=\"succeeded\",job=\"trainyard\"}", 1.0),
        (
            "trainyard_attempts_total{outcome=\"succeeded\",job=\"trainyard\"}",
            1.0,
        ),
        (
            "trainyard_submit_to_start_seconds_count{job=\"trainyard\"}",
            1.0,
        ),
    ] {
        prom_until(&prom, q, |r| r.len() == 1 && value(&r[0]) == want);
    }
    // The energy counter grows at the scripted 250 W (mJ per s).
    prom_until(
        &prom,
        "rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu=\"0\",job=\"trainyard\"}[5s])",
        |r| r.len() == 1 && (value(&r[0]) / 1000.0 - 250.0).abs() < 25.0,
    );
    // promtool: the text parses; its only complaints are the DCGM names
    // and labels kept as the DCGM exporter spells them.
    let (status, text) = http(&url, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{text}");
    let mut check = std::process::Command::new(bin.with_file_name("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "{said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with("DCGM_FI_DEV_")
                && (line.contains("'snake_case' not 'camelCase'")
                    || line.starts_with("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter metrics should have \"_total\" suffix")),
            "promtool: {line}"
        );
    }
    // Who may scrape: no token over loopback; a page of another origin
    // never, nor a name the daemon does not serve; the metrics-only
    // listener serves nothing else.
    let host = format!("Host: {api}");
    let (s, _) = raw(
        &url,
        &format!("GET /metrics HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example"),
        "",
    );
    assert_eq!(s, 403);
    let (s, _) = raw(&url, "GET /metrics HTTP/1.1\r\nHost: evil.example", "");
    assert_eq!(s, 421);
    let m_url = format!("http://{metrics_addr}");
    assert_eq!(http(&m_url, "GET", "/metrics", None, "").0, 200);
    assert_eq!(http(&m_url, "GET", "/api/v1/health", None, "").0, 404);
}
