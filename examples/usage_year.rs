//! A synthetic year of a GPU lab in a Trainyard home, for timing the usage
//! report: `scripts/bench-usage` builds it, starts `trainyard up` on it and
//! times `trainyard usage --by user --daily` over the year.
//!
//! Nodes of 8 GPUs run batches of jobs (1, 2, 4 or 8 GPUs each, an hour to
//! half a day, users and projects drawn from a small lab) back to back, a
//! little idle time between batches. The jobs go through the queue's own
//! API (submit, assign, start, finish, a few failing and retried), and
//! their times are then moved onto the simulated year in one transaction
//! (the queue takes its clock from the system). Every GPU is sampled every
//! `--every` seconds with the attempt holding it, ingested an hour at a
//! time and compacted as the daemon does, so the telemetry database has the
//! rows of a real year (quarter-hour rollups per GPU and holder; a sparser
//! sample than the agents' 2 s changes only the raw and minute rows, which
//! retention keeps for an hour and 30 days).
//!
//! Usage: cargo run --example usage_year -- HOME [--gpus 64] [--days 365] [--every 300]

use std::time::Instant;

use rusqlite::params;
use trainyard::queue::{JobSpec, Queue};
use trainyard::telemetry::{GpuInfo, Holder, Retention, Sample, Telemetry};
use trainyard::Home;

fn arg(name: &str, default: i64) -> i64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const USERS: &[&str] = &[
    "alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];
const PROJECTS: &[&str] = &["vision", "llm", "speech", "rl", "bio", "default"];

/// One simulated attempt on one node.
struct Sim {
    user: usize,
    project: usize,
    gpus: Vec<usize>,
    from_ms: i64,
    to_ms: i64,
    fails: bool,
    /// Mean utilization, percent (some jobs hold GPUs idle).
    util: u32,
}

fn main() {
    let home_dir = std::env::args()
        .nth(1)
        .expect("usage: usage_year HOME [--gpus N]");
    let gpus = arg("--gpus", 64) as usize;
    let days = arg("--days", 365);
    let every_ms = arg("--every", 300) * 1000;
    let home = Home::at(std::path::Path::new(&home_dir));
    home.ensure().expect("create the home");
    let now = jiff::Timestamp::now().as_millisecond();
    let end = now - now.rem_euclid(HOUR_MS);
    let t0 = end - days * DAY_MS;

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };

    // The year's schedule, node by node.
    let nodes = gpus.div_ceil(8);
    let mut sims: Vec<Sim> = Vec::new();
    for node in 0..nodes {
        let first = node * 8;
        let here: Vec<usize> = (first..gpus.min(first + 8)).collect();
        let mut t = t0 + rnd(4 * HOUR_MS as u64) as i64;
        while t < end {
            let k = [1usize, 2, 4, 8][rnd(4) as usize].min(here.len());
            let mut batch_end = t;
            for chunk in here.chunks(k) {
                let len = HOUR_MS + rnd(11 * HOUR_MS as u64) as i64;
                let to = (t + len).min(end);
                sims.push(Sim {
                    user: rnd(USERS.len() as u64) as usize,
                    project: rnd(PROJECTS.len() as u64) as usize,
                    gpus: chunk.to_vec(),
                    from_ms: t,
                    to_ms: to,
                    fails: rnd(20) == 0,
                    util: if rnd(6) == 0 { 2 } else { 40 + rnd(60) as u32 },
                });
                batch_end = batch_end.max(to);
            }
            t = batch_end + rnd(2 * HOUR_MS as u64) as i64;
        }
    }
    let uuid = |g: usize| format!("GPU-{g:04}-synthetic");
    let host = |g: usize| format!("node{}", g / 8);

    // The queue: each attempt through the API, then moved onto the year.
    let clock = Instant::now();
    let queue = Queue::open(&home.queue_path()).expect("open the queue");
    let mut times: Vec<(i64, u32, i64, i64)> = Vec::with_capacity(sims.len());
    let mut holders: Vec<(usize, Holder)> = Vec::new();
    for s in &sims {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "command": ["python", "train.py"],
            "user": USERS[s.user],
            "project": PROJECTS[s.project],
            "gpus": {"count": s.gpus.len()},
            "max_attempts": 2,
        }))
        .expect("a job spec");
        let id = queue.submit(&spec).expect("submit");
        let uuids: Vec<String> = s.gpus.iter().map(|g| uuid(*g)).collect();
        let mut attempt = |from: i64, to: i64, ok: bool| {
            let a = queue
                .assign(id, &host(s.gpus[0]), &uuids, 3_600_000_000_000)
                .expect("assign");
            queue.started(&a.token, None).expect("start");
            queue
                .finish(&a.token, Some(if ok { 0 } else { 1 }), None)
                .expect("finish");
            times.push((id.0, a.attempt, from, to));
            for g in &s.gpus {
                holders.push((
                    *g,
                    Holder {
                        uuid: uuid(*g),
                        job: id.0,
                        attempt: a.attempt,
                        from_ms: from,
                        until_ms: Some(to),
                    },
                ));
            }
        };
        if s.fails {
            // A first attempt that failed a third of the way in.
            let mid = s.from_ms + (s.to_ms - s.from_ms) / 3;
            attempt(s.from_ms, mid, false);
            attempt(mid, s.to_ms, true);
        } else {
            attempt(s.from_ms, s.to_ms, true);
        }
    }
    {
        let mut conn = rusqlite::Connection::open(home.queue_path()).expect("open queue.db");
        let tx = conn.transaction().expect("begin");
        {
            let mut st = tx
                .prepare(
                    "UPDATE attempts SET assigned_ns = ?3, started_ns = ?3, finished_ns = ?4,
                        lease_until_ns = ?4 WHERE job_id = ?1 AND n = ?2",
                )
                .expect("prepare");
            let mut jobs = tx
                .prepare(
                    "UPDATE jobs SET submitted_ns = min(submitted_ns, ?2), finished_ns = ?3
                     WHERE id = ?1",
                )
                .expect("prepare");
            for (job, n, from, to) in &times {
                let ns = 1_000_000;
                st.execute(params![job, n, from * ns, to * ns])
                    .expect("move an attempt");
                jobs.execute(params![job, from * ns, to * ns])
                    .expect("move a job");
            }
        }
        tx.commit().expect("commit");
    }
    let queue_s = clock.elapsed().as_secs_f64();

    // Telemetry: every GPU sampled every `every_ms`, an hour per batch.
    let clock = Instant::now();
    let tele = Telemetry::open(&home.telemetry_path(), Retention::default()).expect("telemetry");
    let infos: Vec<GpuInfo> = (0..gpus)
        .map(|g| GpuInfo {
            host: host(g),
            uuid: uuid(g),
            index: (g % 8) as u32,
            model: "NVIDIA H100 80GB HBM3".into(),
            mem_total_mib: 81_559,
        })
        .collect();
    // Each GPU's holders in time order, and the simulated attempt's mean
    // utilization.
    let mut by_gpu: Vec<Vec<(Holder, u32)>> = vec![Vec::new(); gpus];
    {
        let mut i = 0;
        for s in &sims {
            let tries = if s.fails { 2 } else { 1 };
            for _ in 0..tries {
                for _ in &s.gpus {
                    let (g, h) = holders[i].clone();
                    by_gpu[g].push((h, s.util));
                    i += 1;
                }
            }
        }
        for v in &mut by_gpu {
            v.sort_by_key(|(h, _)| h.from_ms);
        }
    }
    let mut cursor = vec![0usize; gpus];
    let mut energy = vec![0u64; gpus];
    let mut samples = 0u64;
    let mut hour = t0;
    while hour < end {
        let next = hour + HOUR_MS;
        let mut batch: Vec<(GpuInfo, Sample)> = Vec::new();
        let mut live: Vec<Holder> = Vec::new();
        for g in 0..gpus {
            let list = &by_gpu[g];
            while cursor[g] < list.len() && list[cursor[g]].0.until_ms.unwrap_or(i64::MAX) <= hour {
                cursor[g] += 1;
            }
            let mut t = hour + every_ms;
            while t <= next {
                let held = list[cursor[g]..]
                    .iter()
                    .take_while(|(h, _)| h.from_ms < t)
                    .find(|(h, _)| h.until_ms.is_none_or(|u| t <= u));
                let util = held.map_or(0, |(_, u)| (*u + rnd(10) as u32).min(100));
                let power = 70 + util * 6;
                let de = power as u64 * every_ms as u64;
                energy[g] += de;
                batch.push((
                    infos[g].clone(),
                    Sample {
                        t_ms: t,
                        dt_ms: every_ms as u32,
                        util_pct: Some(util),
                        mem_used_mib: if held.is_some() {
                            40_000 + rnd(30_000)
                        } else {
                            0
                        },
                        temp_c: Some(35 + util / 3),
                        power_w: Some(power),
                        energy_mj: Some(energy[g]),
                        interval_energy_mj: Some(de),
                        others: 0,
                    },
                ));
                t += every_ms;
            }
            live.extend(
                list[cursor[g]..]
                    .iter()
                    .take_while(|(h, _)| h.from_ms < next)
                    .map(|(h, _)| h.clone()),
            );
        }
        samples += batch.len() as u64;
        // A sample's holder is the one whose span has it in (from, until]:
        // shift by a millisecond for holder_at's [from, until).
        let shifted: Vec<Holder> = live
            .iter()
            .map(|h| Holder {
                from_ms: h.from_ms + 1,
                until_ms: h.until_ms.map(|u| u + 1),
                ..h.clone()
            })
            .collect();
        tele.ingest(&batch, &shifted, next).expect("ingest");
        tele.compact(next + 60_000).expect("compact");
        hour = next;
    }
    tele.checkpoint().expect("checkpoint");
    let (raw, m1, m15) = tele.counts().expect("counts");
    println!(
        "{{\"gpus\": {gpus}, \"days\": {days}, \"jobs\": {}, \"attempts\": {}, \"holdings\": {}, \
         \"samples\": {samples}, \"rows\": {{\"raw\": {raw}, \"m1\": {m1}, \"m15\": {m15}}}, \
         \"queue_s\": {queue_s:.1}, \"telemetry_s\": {:.1}}}",
        sims.len(),
        times.len(),
        holders.len(),
        clock.elapsed().as_secs_f64()
    );
}
