use super::*;

const S: i64 = 1000;
const H: i64 = 3600 * S;

fn ts(s: &str) -> i64 {
    s.parse::<Timestamp>().unwrap().as_millisecond()
}

fn seoul() -> TimeZone {
    parse_zone("Asia/Seoul").unwrap()
}

fn holding(job: u64, user: &str, project: &str, tags: &[&str], start: i64, end: i64) -> Holding {
    Holding {
        holder: Holder::Job { job, attempt: 1 },
        host: "vm".into(),
        gpu: "GPU-1".into(),
        model: "A100".into(),
        user: user.into(),
        project: project.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        start_ms: start,
        end_ms: end,
    }
}

/// A sample every 2 s over [from, to) at a constant utilization and power.
fn trace(from: i64, to: i64, util: f64, power: f64) -> Vec<Sample> {
    (from..to)
        .step_by(2000)
        .map(|t| Sample {
            t_ms: t,
            util_pct: util,
            power_w: Some(power),
            energy_mj: None,
            mem_used_mib: 1000,
        })
        .collect()
}

const ALL: (i64, i64) = (i64::MIN / 4, i64::MAX / 4);

#[test]
fn a_holding_across_midnight_is_split_at_the_labs_midnight() {
    // 23:00 to 01:30 in Seoul (UTC+9) is 14:00 to 16:30 UTC.
    let (a, b) = (ts("2026-11-30T14:00:00Z"), ts("2026-11-30T16:30:00Z"));
    let h = holding(1, "ana", "p", &[], a, b);
    let samples = trace(a, b, 50.0, 200.0);
    let by_day = account(
        &h,
        &samples,
        ALL,
        &Calendar::new(seoul()),
        &Policy::default(),
    )
    .unwrap();
    let d30: Date = "2026-11-30".parse().unwrap();
    let d01: Date = "2026-12-01".parse().unwrap();
    assert_eq!(by_day.keys().copied().collect::<Vec<_>>(), vec![d30, d01]);
    assert_eq!(by_day[&d30].allocated_ms, H);
    assert_eq!(by_day[&d01].allocated_ms, 3 * H / 2);
    assert_eq!(by_day[&d30].used_ms, (H / 2) as f64);
    assert_eq!(by_day[&d01].used_ms, (3 * H / 4) as f64);
    assert_eq!(by_day[&d30].idle_ms, 0);
    // 200 W for an hour is 200 Wh = 720,000,000 mJ.
    assert_eq!(by_day[&d30].energy_mj, 200.0 * H as f64);
    // In UTC the same holding is one day.
    let utc = account(
        &h,
        &samples,
        ALL,
        &Calendar::new(TimeZone::UTC.clone()),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(utc.len(), 1);
    assert_eq!(utc.values().next().unwrap().allocated_ms, 5 * H / 2);
}

#[test]
fn a_day_with_a_dst_change_has_23_or_25_hours() {
    let berlin = parse_zone("Europe/Berlin").unwrap();
    let spring = (ts("2026-03-28T23:00:00Z"), ts("2026-03-29T22:00:00Z"));
    let h = holding(1, "ana", "p", &[], spring.0 - H, spring.1 + H);
    let by_day = account(
        &h,
        &[],
        ALL,
        &Calendar::new(berlin.clone()),
        &Policy::default(),
    )
    .unwrap();
    let d: Date = "2026-03-29".parse().unwrap();
    assert_eq!(by_day[&d].allocated_ms, 23 * H);
    let h = holding(
        1,
        "ana",
        "p",
        &[],
        ts("2026-10-24T22:00:00Z"),
        ts("2026-10-25T23:00:00Z"),
    );
    let by_day = account(
        &h,
        &[],
        ALL,
        &Calendar::new(berlin.clone()),
        &Policy::default(),
    )
    .unwrap();
    let d: Date = "2026-10-25".parse().unwrap();
    assert_eq!(by_day[&d].allocated_ms, 25 * H);
    // No samples: allocated, neither used nor idle.
    assert_eq!(by_day[&d].used_ms, 0.0);
    assert_eq!(by_day[&d].idle_ms, 0);
}

#[test]
fn idle_used_and_unknown_time_follow_the_trace() {
    let a = ts("2026-12-01T00:00:00Z");
    let h = holding(1, "ana", "p", &[], a, a + 100 * S);
    // 0-40 s busy at 90 %, 40-70 s idle at 2 %, then the agent went quiet.
    let mut s = trace(a, a + 40 * S, 90.0, 300.0);
    s.extend(trace(a + 40 * S, a + 70 * S, 2.0, 60.0));
    let u = account(
        &h,
        &s,
        ALL,
        &Calendar::new(TimeZone::UTC.clone()),
        &Policy::default(),
    )
    .unwrap();
    let u = u.values().next().unwrap();
    assert_eq!(u.allocated_ms, 100 * S);
    // The last sample (68 s) speaks for 10 s at most: to 78 s.
    assert_eq!(u.idle_ms, 38 * S);
    assert_eq!(u.used_ms, 40.0 * S as f64 * 0.9 + 38.0 * S as f64 * 0.02);
    assert_eq!(u.peak_mem_mib, 1000);
}

#[test]
fn a_sample_before_the_holding_speaks_for_its_start_and_the_window_clips() {
    let a = ts("2026-12-01T00:00:00Z");
    let s = trace(a - 10 * S, a + 60 * S, 100.0, 100.0);
    // The holding starts 1 s after a sample: that sample covers 1 s of it.
    let h = holding(1, "ana", "p", &[], a + S, a + 11 * S);
    let u = account(
        &h,
        &s,
        ALL,
        &Calendar::new(TimeZone::UTC.clone()),
        &Policy::default(),
    )
    .unwrap();
    let u = u.values().next().unwrap();
    assert_eq!(u.allocated_ms, 10 * S);
    assert_eq!(u.used_ms, (10 * S) as f64);
    // A window that cuts the holding.
    let u = account(
        &h,
        &s,
        (a + 5 * S, a + 8 * S),
        &Calendar::new(TimeZone::UTC),
        &Policy::default(),
    )
    .unwrap();
    let u = u.values().next().unwrap();
    assert_eq!(u.allocated_ms, 3 * S);
    assert_eq!(u.used_ms, (3 * S) as f64);
    // A window that misses it.
    assert!(account(
        &h,
        &s,
        (a + 20 * S, a + 30 * S),
        &Calendar::new(TimeZone::UTC),
        &Policy::default()
    )
    .unwrap()
    .is_empty());
}

#[test]
fn energy_comes_from_the_counter_when_both_ends_have_it() {
    let a = ts("2026-12-01T00:00:00Z");
    let s: Vec<Sample> = (0..5)
        .map(|i| Sample {
            t_ms: a + i * 2 * S,
            util_pct: 100.0,
            // The counter says 500 J per 2 s; the power reading says 100 W.
            power_w: Some(100.0),
            energy_mj: Some(1_000_000 + i as u64 * 500_000),
            mem_used_mib: 10 * i as u64,
        })
        .collect();
    let h = holding(1, "ana", "p", &[], a, a + 8 * S);
    let u = account(
        &h,
        &s,
        ALL,
        &Calendar::new(TimeZone::UTC.clone()),
        &Policy::default(),
    )
    .unwrap();
    let u = u.values().next().unwrap();
    assert_eq!(u.energy_mj, 4.0 * 500_000.0);
    assert_eq!(u.peak_mem_mib, 30);
}

fn query(by: &[Dim], period: Period) -> Query {
    Query {
        by: by.to_vec(),
        since_ms: ALL.0,
        until_ms: ALL.1,
        period,
        tz: seoul(),
        ignore_tag: Some("ignore-usage".into()),
        only: None,
    }
}

#[test]
fn reports_group_by_dimensions_periods_and_teams() {
    let nov30 = ts("2026-11-30T00:00:00Z"); // 09:00 in Seoul
    let hs = [
        holding(1, "ana", "detr", &["sweep"], nov30, nov30 + H),
        holding(2, "ana", "", &[], nov30 + 20 * H, nov30 + 22 * H), // 05:00-07:00 Dec 1
        holding(3, "bo", "detr", &["sweep", "big"], nov30, nov30 + 2 * H),
        holding(4, "bo", "x", &["ignore-usage"], nov30, nov30 + 5 * H),
    ];
    let teams: Teams =
        toml::from_str("[vision]\nprojects = [\"detr\"]\n[nlp]\nusers = [\"ana\"]\n").unwrap();
    let q = query(&[Dim::Team, Dim::User], Period::Total);
    let acc = hs.iter().map(|h| {
        (
            h,
            account(
                h,
                &[],
                ALL,
                &Calendar::new(q.tz.clone()),
                &Policy::default(),
            )
            .unwrap(),
        )
    });
    let r = report(&q, &teams, acc);
    let rows: Vec<(Vec<String>, i64, u64)> = r
        .rows
        .iter()
        .map(|r| (r.key.clone(), r.usage.allocated_ms / H, r.jobs))
        .collect();
    assert_eq!(
        rows,
        vec![
            (vec!["nlp".into(), "ana".into()], 2, 1),
            (vec!["vision".into(), "ana".into()], 1, 1),
            (vec!["vision".into(), "bo".into()], 2, 1),
        ]
    );
    assert_eq!(r.total.usage.allocated_ms, 5 * H);
    assert_eq!(r.total.jobs, 3);

    // Daily and monthly periods are the lab's days.
    let q = query(&[], Period::Daily);
    let acc = hs.iter().map(|h| {
        (
            h,
            account(
                h,
                &[],
                ALL,
                &Calendar::new(q.tz.clone()),
                &Policy::default(),
            )
            .unwrap(),
        )
    });
    let r = report(&q, &teams, acc);
    let days: Vec<(Option<String>, i64)> = r
        .rows
        .iter()
        .map(|r| (r.period.clone(), r.usage.allocated_ms / H))
        .collect();
    assert_eq!(
        days,
        vec![
            (Some("2026-11-30".into()), 3),
            (Some("2026-12-01".into()), 2)
        ]
    );
    let q = query(&[Dim::Tag], Period::Monthly);
    let acc = hs.iter().map(|h| {
        (
            h,
            account(
                h,
                &[],
                ALL,
                &Calendar::new(q.tz.clone()),
                &Policy::default(),
            )
            .unwrap(),
        )
    });
    let r = report(&q, &teams, acc);
    let tags: Vec<(Option<String>, String, i64)> = r
        .rows
        .iter()
        .map(|r| (r.period.clone(), r.key[0].clone(), r.usage.allocated_ms / H))
        .collect();
    assert_eq!(
        tags,
        vec![
            (Some("2026-11".into()), "big".into(), 2),
            (Some("2026-11".into()), "sweep".into(), 3),
            (Some("2026-12".into()), "-".into(), 2),
        ]
    );
}

#[test]
fn dates_ages_months_and_zones_parse_and_bad_ones_say_why() {
    let tz = seoul();
    let now = "2026-12-06T12:00:00Z".parse::<Timestamp>().unwrap();
    assert_eq!(
        parse_since("--since", "2026-12-01", &tz, now).unwrap(),
        ts("2026-11-30T15:00:00Z")
    );
    assert_eq!(
        parse_until("--until", "2026-12-01", &tz, now).unwrap(),
        ts("2026-12-01T15:00:00Z")
    );
    assert_eq!(
        parse_since("--since", "2026-11", &tz, now).unwrap(),
        ts("2026-10-31T15:00:00Z")
    );
    assert_eq!(
        parse_until("--until", "2026-11", &tz, now).unwrap(),
        ts("2026-11-30T15:00:00Z")
    );
    assert_eq!(
        parse_since("--since", "7d", &tz, now).unwrap(),
        ts("2026-11-29T12:00:00Z")
    );
    assert_eq!(
        parse_since("--since", "2026-12-01T08:30", &tz, now).unwrap(),
        ts("2026-11-30T23:30:00Z")
    );
    assert_eq!(
        parse_since("--since", "2026-12-01T08:30:00Z", &tz, now).unwrap(),
        ts("2026-12-01T08:30:00Z")
    );
    assert_eq!(
        parse_since("--since", "today", &tz, now).unwrap(),
        ts("2026-12-05T15:00:00Z")
    );
    assert_eq!(
        parse_until("--until", "now", &tz, now).unwrap(),
        now.as_millisecond()
    );

    for bad in ["yesterday-ish", "2026-13-01", "2026-02-30", "7 parsecs", ""] {
        let e = parse_since("--since", bad, &tz, now)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--since: cannot read"), "{bad}: {e}");
    }
    let e = parse_range(
        ["--since", "--until"],
        Some("2026-12-05"),
        Some("2026-12-01"),
        &tz,
        now,
        0,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--since (2026-12-05) is after --until (2026-12-01)"
    );
    let e = parse_zone("Mars/Olympus_Mons").unwrap_err().to_string();
    assert!(
        e.starts_with("unknown time zone \"Mars/Olympus_Mons\""),
        "{e}"
    );
    let e = "gpu".parse::<Dim>().unwrap_err().to_string();
    assert!(e.contains("unknown dimension \"gpu\""), "{e}");
}

#[test]
fn by_day_keeps_days_in_order_whatever_order_they_come_in() {
    let d = |n: i8| jiff::civil::date(2026, 3, n);
    let mut b = ByDay::default();
    for (n, ms) in [(5, 1), (3, 2), (5, 4), (7, 8), (4, 16), (3, 32)] {
        b.entry(d(n)).allocated_ms += ms;
    }
    assert_eq!(
        b.keys().copied().collect::<Vec<_>>(),
        vec![d(3), d(4), d(5), d(7)]
    );
    assert_eq!(
        b.values().map(|u| u.allocated_ms).collect::<Vec<_>>(),
        vec![34, 16, 5, 8]
    );
    assert_eq!(b.get(&d(6)), None);
    assert_eq!(b[&d(7)].allocated_ms, 8);
    assert_eq!(b.len(), 4);
}
