//! Rollups, retention and queries on a clock moved by hand.

use super::*;

/// 2026-03-01 00:00:00 UTC, a whole quarter hour.
const T0: i64 = 1_772_323_200_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn gpu(i: u32) -> GpuInfo {
    GpuInfo {
        host: "h1".into(),
        uuid: format!("GPU-{i}"),
        index: i,
        model: "A100".into(),
        mem_total_mib: 81920,
    }
}

/// The scripted utilization of GPU `i` at `t`: 0 % in even minutes of
/// GPU 0, 100 % in odd ones; GPU 1 at 40 %.
fn util(i: u32, t: i64) -> u32 {
    if i == 1 {
        40
    } else if (t / MINUTE_MS) % 2 == 1 {
        100
    } else {
        0
    }
}

/// Samples every `every` ms over `[from, to)` for GPUs 0 and 1.
fn samples(from: i64, to: i64, every: i64) -> Vec<(GpuInfo, Sample)> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        for i in 0..2 {
            let u = util(i, t);
            out.push((
                gpu(i),
                Sample {
                    t_ms: t,
                    dt_ms: every as u32,
                    util_pct: Some(u),
                    mem_used_mib: 1000 + u as u64 * 10,
                    temp_c: Some(40 + u / 10),
                    power_w: Some(100 + 2 * u),
                    energy_mj: Some(((t - T0) as u64) * 100),
                    interval_energy_mj: Some(u64::from(100 + 2 * u) * every as u64),
                    others: 0,
                },
            ));
        }
        t += every;
    }
    out
}

fn open(dir: &tempfile::TempDir) -> Telemetry {
    Telemetry::open(&dir.path().join("telemetry.db"), Retention::default()).unwrap()
}

fn table(t: &Telemetry, name: &str) -> Vec<Vec<Option<i64>>> {
    let conn = t.conn();
    let sql = if name == "marks" {
        "SELECT length(name), ms FROM marks ORDER BY name".to_string()
    } else {
        format!("SELECT * FROM {name} ORDER BY 1, 2, 3, 4")
    };
    let mut st = conn.prepare(&sql).unwrap();
    let n = st.column_count();
    let rows = st
        .query_map([], |r| (0..n).map(|i| r.get::<_, Option<i64>>(i)).collect())
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

fn q(since: i64, until: i64) -> TelemetryQuery {
    TelemetryQuery {
        since_ms: since,
        until_ms: until,
        ..TelemetryQuery::default()
    }
}

#[test]
fn samples_come_back_with_the_attempt_that_held_the_gpu() {
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    let holders = [
        Holder {
            uuid: "GPU-0".into(),
            job: 7,
            attempt: 1,
            from_ms: T0 + 10_000,
            until_ms: Some(T0 + 20_000),
        },
        Holder {
            uuid: "GPU-0".into(),
            job: 7,
            attempt: 2,
            from_ms: T0 + 20_000,
            until_ms: None,
        },
    ];
    let r = t
        .ingest(&samples(T0, T0 + 30_000, 2_000), &holders, T0 + 30_000)
        .unwrap();
    assert_eq!(
        r,
        IngestReport {
            stored: 30,
            refused: 0
        }
    );
    let a = t.query(&q(T0, T0 + 30_000), T0 + 30_000).unwrap();
    assert_eq!(a.resolution, Resolution::Raw);
    assert_eq!(a.series.len(), 2);
    let s0 = &a.series[0];
    assert_eq!(
        (s0.uuid.as_str(), s0.index, s0.memory_total_mib),
        ("GPU-0", 0, 81920)
    );
    let p = &s0.points;
    assert_eq!(p.len(), 15);
    assert_eq!((p[0].job, p[0].attempt), (None, None));
    assert_eq!(
        (p[5].t_ms, p[5].job, p[5].attempt),
        (T0 + 10_000, Some(7), Some(1))
    );
    assert_eq!((p[10].job, p[10].attempt), (Some(7), Some(2)));
    assert_eq!(p[3].power_w.unwrap().mean, 100.0);
    assert_eq!(p[3].energy_mj, Some(200_000));
    // GPU 1 was never held.
    assert!(a.series[1].points.iter().all(|p| p.job.is_none()));
    // A job's samples only.
    let mut jq = q(T0, T0 + 30_000);
    jq.job = Some(7);
    let a = t.query(&jq, T0 + 30_000).unwrap();
    assert_eq!(a.series.len(), 1);
    assert_eq!(a.series[0].points.len(), 10);
    // A host, a GPU by index.
    let mut gq = q(T0, T0 + 30_000);
    gq.gpu = Some("1".into());
    gq.host = Some("h1".into());
    assert_eq!(t.query(&gq, T0 + 30_000).unwrap().series[0].uuid, "GPU-1");
    gq.host = Some("h2".into());
    assert!(t.query(&gq, T0 + 30_000).unwrap().series.is_empty());
    // A repeated sample replaces the first.
    t.ingest(&samples(T0, T0 + 2_000, 2_000), &[], T0 + 30_000)
        .unwrap();
    assert_eq!(t.counts().unwrap().0, 30);
}

#[test]
fn minutes_and_quarters_hold_min_mean_max_and_the_integrals() {
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    // 30 minutes at 2 s; GPU 0 held by job 3 from minute 7 on.
    let holders = [Holder {
        uuid: "GPU-0".into(),
        job: 3,
        attempt: 1,
        from_ms: T0 + 7 * MINUTE_MS,
        until_ms: None,
    }];
    let now = T0 + 30 * MINUTE_MS;
    t.ingest(&samples(T0, now, 2_000), &holders, now).unwrap();
    let rep = t.compact(now + 2 * MINUTE_MS).unwrap();
    // 30 minutes × 2 GPUs, and two whole quarters × (GPU 0 split at its
    // holder change in the first quarter, GPU 1).
    assert_eq!(rep.minute_rows, 60);
    assert_eq!(rep.quarter_rows, 5);
    let a = t
        .query(
            &TelemetryQuery {
                resolution: Some(Resolution::Minute),
                gpu: Some("GPU-0".into()),
                ..q(T0, now)
            },
            now + 2 * MINUTE_MS,
        )
        .unwrap();
    let p = &a.series[0].points;
    assert_eq!(p.len(), 30);
    // An odd minute: 100 % throughout.
    let m1 = &p[1];
    assert_eq!(m1.covered_ms, MINUTE_MS);
    assert_eq!(m1.used_ms, MINUTE_MS);
    assert_eq!(m1.idle_ms, 0);
    assert_eq!(m1.util_pct.unwrap().mean, 100.0);
    assert_eq!(m1.mem_used_mib.max, 2000.0);
    assert_eq!(m1.energy_mj, Some(300 * MINUTE_MS));
    // An even one: idle.
    assert_eq!((p[2].used_ms, p[2].idle_ms), (0, MINUTE_MS));
    assert_eq!(p[7].job, Some(3));
    assert_eq!(p[6].job, None);
    // The first quarter of GPU 0: 7 unheld minutes and 8 held ones, less
    // the held interval's first sample, which covers time before the
    // assignment and so counts for nobody (a hold is never given more
    // time than it held its GPU).
    let a = t
        .query(
            &TelemetryQuery {
                resolution: Some(Resolution::Quarter),
                gpu: Some("GPU-0".into()),
                ..q(T0, now)
            },
            now + 2 * MINUTE_MS,
        )
        .unwrap();
    let p = &a.series[0].points;
    assert_eq!(p.len(), 3);
    let (free, held) = (&p[0], &p[1]);
    assert_eq!((free.job, free.covered_ms), (None, 7 * MINUTE_MS));
    assert_eq!(
        (held.job, held.covered_ms),
        (Some(3), 8 * MINUTE_MS - 2_000)
    );
    // Minutes 0-6: 1, 3, 5 busy; 7-14: 7, 9, 11, 13 busy.
    assert_eq!(free.used_ms, 3 * MINUTE_MS);
    assert_eq!(free.idle_ms, 4 * MINUTE_MS);
    assert_eq!(held.used_ms, 4 * MINUTE_MS - 2_000);
    let u = held.util_pct.unwrap();
    let busy = (4 * MINUTE_MS - 2_000) as f64 / (8 * MINUTE_MS - 2_000) as f64;
    assert_eq!((u.min, u.mean, u.max), (0.0, 100.0 * busy, 100.0));
    assert_eq!(held.power_w.unwrap().max, 300.0);
    assert_eq!(
        held.energy_mj,
        Some(4 * 300 * MINUTE_MS + 4 * 100 * MINUTE_MS - 300 * 2_000)
    );
    // Totals agree across resolutions.
    let used = |r| {
        t.query(
            &TelemetryQuery {
                resolution: Some(r),
                ..q(T0, now)
            },
            now + 2 * MINUTE_MS,
        )
        .unwrap()
        .series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| (p.used_ms, p.covered_ms, p.energy_mj))
        })
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2.unwrap()))
    };
    assert_eq!(used(Resolution::Raw), used(Resolution::Minute));
    assert_eq!(used(Resolution::Raw), used(Resolution::Quarter));
    assert_eq!(used(Resolution::Raw).1, 2 * 30 * MINUTE_MS - 2_000);
}

#[test]
fn compaction_is_idempotent_and_the_same_in_one_go_or_in_steps() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (once, steps) = (open(&d1), open(&d2));
    let end = T0 + 50 * MINUTE_MS;
    // One: everything, then one compaction. Two: a batch every 10 s
    // with a compaction after each, as the daemon does.
    once.ingest(&samples(T0, end, 5_000), &[], end).unwrap();
    let mut t = T0;
    while t < end {
        steps
            .ingest(&samples(t, t + 10_000, 5_000), &[], t + 10_000)
            .unwrap();
        steps.compact(t + 10_000).unwrap();
        t += 10_000;
    }
    let later = end + 5 * MINUTE_MS;
    once.compact(later).unwrap();
    steps.compact(later).unwrap();
    for name in ["raw", "m1", "m15", "marks"] {
        assert_eq!(table(&once, name), table(&steps, name), "{name}");
    }
    // Again: nothing changes.
    let before: Vec<_> = ["m1", "m15"].iter().map(|n| table(&once, n)).collect();
    let r = once.compact(later).unwrap();
    assert_eq!((r.minute_rows, r.quarter_rows, r.deleted), (0, 0, 0));
    // A step replayed (a crash after its rows but before a later step; or
    // the watermark moved back by hand): the same rows again.
    set_mark(&once.conn(), M1_DONE, T0 + 20 * MINUTE_MS).unwrap();
    set_mark(&once.conn(), M15_DONE, T0 + 15 * MINUTE_MS).unwrap();
    let r = once.compact(later).unwrap();
    assert!(r.minute_rows > 0 && r.quarter_rows > 0);
    let after: Vec<_> = ["m1", "m15"].iter().map(|n| table(&once, n)).collect();
    assert_eq!(before, after);
}

#[test]
fn late_samples_roll_their_minute_and_quarter_up_again() {
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    let now = T0 + 40 * MINUTE_MS;
    // GPU 0's samples of minute 3 arrive late, after it was rolled up.
    let (late, early): (Vec<_>, Vec<_>) = samples(T0, T0 + 35 * MINUTE_MS, 2_000)
        .into_iter()
        .partition(|(g, s)| g.index == 0 && s.t_ms / MINUTE_MS == T0 / MINUTE_MS + 3);
    t.ingest(&early, &[], now).unwrap();
    t.compact(now).unwrap();
    let minute3 = |t: &Telemetry| {
        t.query(
            &TelemetryQuery {
                resolution: Some(Resolution::Minute),
                gpu: Some("GPU-0".into()),
                ..q(T0 + 3 * MINUTE_MS, T0 + 4 * MINUTE_MS)
            },
            now,
        )
        .unwrap()
        .series
    };
    assert!(minute3(&t).is_empty());
    let quarter0 = |t: &Telemetry| {
        t.query(
            &TelemetryQuery {
                resolution: Some(Resolution::Quarter),
                gpu: Some("GPU-0".into()),
                ..q(T0, T0 + QUARTER_MS)
            },
            now,
        )
        .unwrap()
        .series[0]
            .points[0]
            .covered_ms
    };
    assert_eq!(quarter0(&t), 14 * MINUTE_MS);
    assert_eq!(t.ingest(&late, &[], now + 1000).unwrap().stored, 30);
    t.compact(now + 1000).unwrap();
    let s = minute3(&t);
    assert_eq!(s[0].points[0].used_ms, MINUTE_MS);
    assert_eq!(quarter0(&t), QUARTER_MS);
    // Samples older than the raw retention are refused: their minute may
    // have lost its other samples already.
    let r = t.ingest(&late, &[], T0 + 2 * HOUR).unwrap();
    assert_eq!(
        r,
        IngestReport {
            stored: 0,
            refused: 30
        }
    );
}

#[test]
fn retention_keeps_an_hour_of_samples_30_days_of_minutes_and_two_years_of_quarters() {
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    // Two hours of samples at 10 s.
    let end = T0 + 2 * HOUR;
    let mut at = T0;
    while at < end {
        t.ingest(&samples(at, at + HOUR / 2, 10_000), &[], at + HOUR / 2)
            .unwrap();
        t.compact(at + HOUR / 2).unwrap();
        at += HOUR / 2;
    }
    let (raw, m1, m15) = t.counts().unwrap();
    // Raw samples older than an hour went, once rolled up.
    let oldest_raw: i64 = t
        .conn()
        .query_row("SELECT min(t) FROM raw", [], |r| r.get(0))
        .unwrap();
    assert!(oldest_raw >= end - HOUR, "{}", end - oldest_raw);
    assert!(raw <= 2 * 361, "{raw}");
    assert_eq!(m1, 2 * 119);
    assert_eq!(m15, 2 * 7);
    // Queries over old ranges still answer, from the rollups.
    let a = t.query(&q(T0, T0 + HOUR), end).unwrap();
    assert_eq!(a.resolution, Resolution::Minute);
    assert_eq!(a.series[0].points.len(), 60);
    // 31 days on: the minutes are gone, the quarters stay.
    t.compact(end + 31 * DAY).unwrap();
    let (raw, m1, m15) = t.counts().unwrap();
    assert_eq!((raw, m1), (0, 0));
    assert_eq!(m15, 2 * 8);
    let a = t.query(&q(T0, T0 + HOUR), end + 31 * DAY).unwrap();
    assert_eq!(a.resolution, Resolution::Quarter);
    assert_eq!(a.series[0].points.len(), 4);
    assert_eq!(
        a.series[0].points.iter().map(|p| p.covered_ms).sum::<i64>(),
        HOUR
    );
    // Two years on: nothing.
    t.compact(end + 731 * DAY).unwrap();
    assert_eq!(t.counts().unwrap(), (0, 0, 0));
}

#[test]
fn the_range_picks_the_resolution_and_bad_ranges_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    let now = T0 + 40 * DAY;
    let r = |since: i64, until: i64| t.query(&q(since, until), now).unwrap().resolution;
    assert_eq!(r(now - HOUR, now), Resolution::Raw);
    assert_eq!(r(now - 2 * HOUR, now - HOUR), Resolution::Minute);
    assert_eq!(r(now - DAY, now), Resolution::Minute);
    assert_eq!(r(now - 7 * DAY, now), Resolution::Quarter);
    assert_eq!(r(now - 35 * DAY, now - 34 * DAY), Resolution::Quarter);
    let e = t.query(&q(now, now - 1), now).unwrap_err().to_string();
    assert!(e.contains("must be before until"), "{e}");
}

#[test]
fn the_database_is_owner_only_and_a_newer_schema_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    let mode = std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    t.conn().pragma_update(None, "user_version", 99).unwrap();
    drop(t);
    let e = match Telemetry::open(&d.path().join("telemetry.db"), Retention::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a newer schema"),
    };
    assert!(e.contains("newer"), "{e}");
}

#[test]
fn daily_totals_follow_the_quarters_across_dst_late_samples_and_a_zone_change() {
    use jiff::tz::TimeZone;
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    let d = tempfile::tempdir().unwrap();
    let t = open(&d).with_day_zone(&berlin).unwrap();
    // 2026-03-28 00:00 UTC: Berlin springs forward the next night, so its
    // 29 March is 23 hours long.
    let start = T0 + 27 * DAY;
    let sunday = start + 23 * HOUR; // 2026-03-29 00:00 +01:00
    let monday = sunday + 23 * HOUR; // 2026-03-30 00:00 +02:00
    let tuesday = monday + DAY;
    let holders = [Holder {
        uuid: "GPU-0".into(),
        job: 5,
        attempt: 1,
        from_ms: start,
        until_ms: None,
    }];
    // GPU 0's samples of 23:50 on Monday arrive late.
    let late_minute = tuesday - 10 * MINUTE_MS;
    let is_late =
        |g: &GpuInfo, s: &Sample| g.index == 0 && s.t_ms / MINUTE_MS == late_minute / MINUTE_MS;
    let end = tuesday + 30 * MINUTE_MS;
    let mut late = Vec::new();
    let mut h = start;
    while h < end {
        let (l, on_time): (Vec<_>, Vec<_>) = samples(h, h + HOUR, 30_000)
            .into_iter()
            .filter(|(_, s)| s.t_ms < end)
            .partition(|(g, s)| is_late(g, s));
        late.extend(l);
        // The hour's first sample is an hour old by its end: ingest just
        // before (raw samples are kept for an hour).
        let now = (h + HOUR).min(end) - 1;
        t.ingest(&on_time, &holders, now).unwrap();
        t.compact(now + MINUTE_MS).unwrap();
        h += HOUR;
    }
    let now = end + MINUTE_MS;
    // Whole final days inside the range only: Sunday and Monday.
    let cover = t.day_rows(&berlin, start, end).unwrap().unwrap();
    assert_eq!((cover.from_ms, cover.to_ms), (sunday, tuesday));
    let by_day = |c: &DayCover| -> Vec<(i64, i64, i64, i64)> {
        c.rows
            .iter()
            .map(|r| {
                assert_eq!((&*r.uuid, r.job, r.attempt), ("GPU-0", 5, 1));
                (r.day_ms, r.end_ms, r.covered_ms, r.used_ms)
            })
            .collect()
    };
    // Monday lacks the late minute; GPU 0 is busy every other minute.
    let late_used = i64::from(util(0, late_minute)) * MINUTE_MS / 100;
    assert_eq!(
        by_day(&cover),
        [
            (sunday, monday, 23 * HOUR, 23 * HOUR / 2),
            (monday, tuesday, DAY - MINUTE_MS, DAY / 2 - late_used),
        ]
    );
    // The same sums as the quarters of each day.
    let conn = t.conn();
    let quarters = |a: i64, b: i64| -> (i64, i64) {
        conn.query_row(
            "SELECT sum(cov), sum(used) FROM m15 WHERE job = 5 AND t >= ?1 AND t < ?2",
            [a / QUARTER_MS, b / QUARTER_MS],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(quarters(sunday, monday), (23 * HOUR, 23 * HOUR / 2));
    drop(conn);
    // The late minute makes Monday's quarter, then Monday, roll up again.
    assert_eq!(t.ingest(&late, &holders, now).unwrap().stored, 2);
    t.compact(now + MINUTE_MS).unwrap();
    let cover = t.day_rows(&berlin, start, end).unwrap().unwrap();
    assert_eq!(by_day(&cover)[1], (monday, tuesday, DAY, DAY / 2));
    // Another zone than the table's: no answer, the caller reads quarters.
    let seoul = TimeZone::get("Asia/Seoul").unwrap();
    assert_eq!(t.day_rows(&seoul, start, end).unwrap(), None);
    // Opening with another zone rebuilds the days in it.
    drop(t);
    let t = open(&d).with_day_zone(&seoul).unwrap();
    assert!(t
        .day_rows(&seoul, start, end)
        .unwrap()
        .unwrap()
        .rows
        .is_empty());
    t.compact(now + MINUTE_MS).unwrap();
    let cover = t.day_rows(&seoul, start, end).unwrap().unwrap();
    // Seoul's days start at 15:00 UTC.
    let first = start + 15 * HOUR;
    assert_eq!((cover.from_ms, cover.to_ms), (first, first + 2 * DAY));
    assert!(by_day(&cover).iter().all(|r| r.2 == DAY && r.3 == DAY / 2));
    // A range of less than a day has no whole day in it.
    let c = t
        .day_rows(&seoul, first + HOUR, first + 5 * HOUR)
        .unwrap()
        .unwrap();
    assert!(c.from_ms >= c.to_ms && c.rows.is_empty());
}

#[test]
fn holds_learnt_late_take_their_samples_and_never_more_time_than_they_held() {
    let d = tempfile::tempdir().unwrap();
    let t = open(&d);
    let now = T0 + 20 * MINUTE_MS;
    // Ten minutes of samples arrive while no attempt is known to hold a GPU.
    t.ingest(&samples(T0, T0 + 10 * MINUTE_MS, 2_000), &[], now)
        .unwrap();
    t.compact(now).unwrap();
    // An attempt that began and ended between two batches, off the
    // sample grid: 119 s of GPU 0.
    let short = Holder {
        uuid: "GPU-0".into(),
        job: 9,
        attempt: 1,
        from_ms: T0 + 61_000,
        until_ms: Some(T0 + 180_000),
    };
    assert_eq!(t.reattribute("h1", &short).unwrap(), 59);
    // Again: nothing left to change. Another host's GPU: nothing.
    assert_eq!(t.reattribute("h1", &short).unwrap(), 0);
    assert_eq!(t.reattribute("h2", &short).unwrap(), 0);
    t.compact(now).unwrap();
    let job = |t: &Telemetry, job: i64| {
        let a = t
            .query(
                &TelemetryQuery {
                    resolution: Some(Resolution::Minute),
                    job: Some(job),
                    ..q(T0, now)
                },
                now,
            )
            .unwrap();
        a.series
            .iter()
            .flat_map(|s| &s.points)
            .map(|p| (p.covered_ms, p.used_ms + p.idle_ms))
            .fold((0, 0), |(c, u), (pc, pu)| (c + pc, u + pu))
    };
    // Its time: from its assignment to its last sample, never more than
    // it held (the minutes were rolled up again).
    assert_eq!(job(&t, 9), (117_000, 117_000));

    // An attempt whose end the daemon learns after samples from past it
    // arrived: those are given back to no one.
    let mut long = Holder {
        uuid: "GPU-1".into(),
        job: 10,
        attempt: 1,
        from_ms: T0 + 12 * MINUTE_MS,
        until_ms: None,
    };
    t.ingest(
        &samples(T0 + 12 * MINUTE_MS, T0 + 16 * MINUTE_MS, 2_000),
        std::slice::from_ref(&long),
        now,
    )
    .unwrap();
    long.until_ms = Some(T0 + 14 * MINUTE_MS);
    assert_eq!(t.reattribute("h1", &long).unwrap(), 60);
    t.compact(now).unwrap();
    assert_eq!(job(&t, 10).0, 2 * MINUTE_MS - 2_000);
}
