//! A synthetic year of GPU telemetry through the daemon's rollup path, on
//! a simulated clock: `scripts/bench-usage` runs it and prints the figures.
//!
//! Each simulated GPU is sampled every `--every` seconds (utilization,
//! memory, power and temperature wandering as a training job's would, jobs
//! taking GPUs for a few hours at a time), ingested a minute at a time with
//! its holders, and compacted every ten simulated minutes, exactly as the
//! daemon does. Then it reports the database's size per table and per
//! GPU-year, the CPU time per ingested sample, and the steady state of the
//! retention (raw: an hour at 2 s; minutes: 30 days; quarters: 2 years).
//!
//! Usage: cargo run --example telemetry_year -- [--gpus 4] [--days 365] [--every 10]

use std::time::Instant;

use trainyard::telemetry::{GpuInfo, Holder, Retention, Sample, Telemetry, MINUTE_MS};

fn arg(name: &str, default: i64) -> i64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split(' ').collect();
    let ticks: f64 = rest[11].parse::<f64>().unwrap() + rest[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let gpus = arg("--gpus", 4);
    let days = arg("--days", 365);
    let every_ms = arg("--every", 10) * 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("telemetry.db");
    let t = Telemetry::open(&path, Retention::default()).expect("open");
    let t0: i64 = 1_767_225_600_000; // 2026-01-01 UTC
    let end = t0 + days * 86_400_000;
    let infos: Vec<GpuInfo> = (0..gpus)
        .map(|i| GpuInfo {
            host: format!("node{}", i / 8),
            uuid: format!("GPU-{i:04}"),
            index: (i % 8) as u32,
            model: "NVIDIA H100 80GB HBM3".into(),
            mem_total_mib: 81_559,
        })
        .collect();
    // A deterministic pseudo-random walk.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut energy = vec![0u64; gpus as usize];
    let mut holders: Vec<Holder> = Vec::new();
    let mut next_job = 1i64;
    let (mut samples, mut ingest_cpu, mut compact_cpu) = (0u64, 0f64, 0f64);
    let wall = Instant::now();
    let mut now = t0;
    while now < end {
        // A minute of samples.
        let mut batch = Vec::new();
        for (i, g) in infos.iter().enumerate() {
            // Jobs: each GPU changes hands every 2-8 hours, idle between.
            let held = holders
                .iter()
                .any(|h| h.uuid == g.uuid && h.until_ms.is_none_or(|u| u > now));
            if !held && rnd() % 720 == 0 {
                let len = (2 + rnd() % 7) as i64 * 3_600_000;
                holders.push(Holder {
                    uuid: g.uuid.clone(),
                    job: next_job,
                    attempt: 1,
                    from_ms: now,
                    until_ms: Some(now + len),
                });
                next_job += 1;
            }
            let mut s = now;
            while s < now + MINUTE_MS {
                let busy = holders.iter().any(|h| {
                    h.uuid == g.uuid && h.from_ms <= s && h.until_ms.is_none_or(|u| s < u)
                });
                let util = if busy {
                    60 + (rnd() % 41) as u32
                } else {
                    (rnd() % 3) as u32
                };
                let power = 70 + util * 6 + (rnd() % 20) as u32;
                energy[i] += u64::from(power) * every_ms as u64;
                batch.push((
                    g.clone(),
                    Sample {
                        t_ms: s,
                        dt_ms: every_ms as u32,
                        util_pct: Some(util),
                        mem_used_mib: if busy { 40_000 + rnd() % 30_000 } else { 0 },
                        temp_c: Some(35 + util / 2),
                        power_w: Some(power),
                        energy_mj: Some(energy[i]),
                        interval_energy_mj: Some(u64::from(power) * every_ms as u64),
                        others: 0,
                    },
                ));
                s += every_ms;
            }
        }
        now += MINUTE_MS;
        samples += batch.len() as u64;
        let c = cpu_s();
        t.ingest(&batch, &holders, now).expect("ingest");
        ingest_cpu += cpu_s() - c;
        if (now - t0) % (10 * MINUTE_MS) == 0 {
            let c = cpu_s();
            t.compact(now).expect("compact");
            compact_cpu += cpu_s() - c;
            holders.retain(|h| h.until_ms.is_none_or(|u| u > now - 2 * 3_600_000));
        }
    }
    t.compact(now).expect("compact");
    t.checkpoint().expect("checkpoint");
    let (raw, m1, m15) = t.counts().expect("counts");
    let tables = t.table_bytes().expect("dbstat");
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let bytes = |name: &str| {
        tables
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, b)| *b)
    };
    let per_row = |name: &str, rows: u64| bytes(name) as f64 / rows.max(1) as f64;
    println!("simulated: {gpus} GPUs x {days} days, a sample every {} s: {samples} samples, {:.1} s wall", every_ms / 1000, wall.elapsed().as_secs_f64());
    println!("rows now: raw {raw}, 1-minute {m1}, 15-minute {m15}");
    for (name, b) in &tables {
        println!("  table {name}: {:.1} MiB", *b as f64 / 1048576.0);
    }
    println!(
        "bytes per row: raw {:.1}, 1-minute {:.1}, 15-minute {:.1}",
        per_row("raw", raw),
        per_row("m1", m1),
        per_row("m15", m15)
    );
    println!("file after {days} days: {:.1} MiB", file as f64 / 1048576.0);
    // Steady state: an hour of raw samples at 2 s, 30 days of minutes,
    // two years of quarters (one row per GPU per bucket; more where a GPU
    // changed hands within a bucket, as measured here).
    let split1 = m1 as f64 / (gpus as f64 * 30.0 * 1440.0);
    let split15 = m15 as f64 / (gpus as f64 * days as f64 * 96.0);
    let per_gpu_raw = 1800.0 * per_row("raw", raw);
    let per_gpu_m1 = 30.0 * 1440.0 * split1 * per_row("m1", m1);
    let per_gpu_m15_year = 365.0 * 96.0 * split15 * per_row("m15", m15);
    let year = per_gpu_raw + per_gpu_m1 + per_gpu_m15_year;
    let steady = per_gpu_raw + per_gpu_m1 + 2.0 * per_gpu_m15_year;
    println!(
        "per GPU after a year: {:.2} MiB (raw {:.2}, 1-minute {:.2}, 15-minute {:.2})",
        year / 1048576.0,
        per_gpu_raw / 1048576.0,
        per_gpu_m1 / 1048576.0,
        per_gpu_m15_year / 1048576.0
    );
    println!(
        "a 64-GPU lab after a year: {:.0} MiB; at steady state (two years of quarters): {:.0} MiB",
        64.0 * year / 1048576.0,
        64.0 * steady / 1048576.0
    );
    println!(
        "cpu: ingest {:.2} us per sample, compaction {:.2} us per sample",
        ingest_cpu * 1e6 / samples as f64,
        compact_cpu * 1e6 / samples as f64
    );
}
