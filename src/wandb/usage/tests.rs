//! The wandb-based count on real-client fixtures equals the hand count in
//! `tests/fixtures/wandb-usage/expected.json` (written by
//! `scripts/make-wandb-usage-fixtures`, which shows the arithmetic).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::Value as Json;

use super::*;
use crate::usage::{self, Dim, Period, Policy, Query, Teams, Usage};
use crate::wandb::index::ScanOptions;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb-usage")
}

fn expected() -> Json {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

/// An index of the fixtures in a fresh temp file.
struct Indexed {
    index: RunIndex,
    dir: PathBuf,
}

impl Indexed {
    fn new(name: &str) -> Indexed {
        let dir = std::env::temp_dir().join(format!(
            "trainyard-wandb-usage-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let index = RunIndex::open(&dir.join("runs.db")).unwrap();
        let report = index.scan(&[fixtures()], ScanOptions::default()).unwrap();
        assert_eq!((report.found, report.errors.len()), (3, 0), "{report:?}");
        Indexed { index, dir }
    }
}

impl Drop for Indexed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ms(v: &Json) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{v} is not an integer"))
}

fn run_id(h: &Holding) -> &str {
    match &h.holder {
        Holder::Run { run } => run,
        Holder::Job { .. } => panic!("a job holding where a run was expected"),
    }
}

/// The day's usage of one holding, in UTC (the fixtures lie on 2026-11-30).
fn account(h: &Holding, samples: &[Sample], max_gap_ms: i64) -> Usage {
    let policy = Policy {
        max_gap_ms,
        ..Policy::default()
    };
    let by_day = usage::account(
        h,
        samples,
        WHOLE_DAY,
        &usage::Calendar::new(TimeZone::UTC.clone()),
        &policy,
    )
    .unwrap();
    let day: Date = "2026-11-30".parse().unwrap();
    assert_eq!(by_day.keys().copied().collect::<Vec<_>>(), vec![day]);
    by_day[&day]
}

/// 2026-11-30, UTC.
const WHOLE_DAY: (i64, i64) = (1_795_996_800_000, 1_796_083_200_000);

fn assert_usage(what: &str, got: &Usage, want: &Json) {
    assert_eq!(
        got.allocated_ms,
        ms(&want["allocated_ms"]),
        "{what}: allocated"
    );
    assert_eq!(got.idle_ms, ms(&want["idle_ms"]), "{what}: idle");
    assert_eq!(
        got.peak_mem_mib as i64,
        ms(&want["peak_mem_mib"]),
        "{what}: peak memory"
    );
    for (name, g, w) in [
        ("used", got.used_ms, &want["used_ms"]),
        ("energy", got.energy_mj, &want["energy_mj"]),
    ] {
        let w = w.as_f64().unwrap();
        assert!((g - w).abs() < 1e-6, "{what}: {name} {g} != {w}");
    }
}

fn holdings(ix: &Indexed) -> Vec<RunHolding> {
    run_holdings(&ix.index, WHOLE_DAY.0, WHOLE_DAY.1).unwrap()
}

#[test]
fn a_run_holds_only_the_gpus_its_processes_used() {
    let ix = Indexed::new("holdings");
    let got = holdings(&ix);
    let want = expected();
    let want = want["holdings"].as_array().unwrap();
    let ids: Vec<&str> = got.iter().map(|h| run_id(&h.holding)).collect();
    // usage001 ran on a 2-GPU host and used GPU 0 only: one holding.
    assert_eq!(ids, ["usage001", "dinit001", "dinit002"]);
    for (g, w) in got.iter().zip(want) {
        let h = &g.holding;
        let id = run_id(h);
        assert_eq!(id, w["run"].as_str().unwrap());
        assert_eq!(h.host, w["host"].as_str().unwrap(), "{id}");
        assert_eq!(h.gpu, w["gpu"].as_str().unwrap(), "{id}");
        assert_eq!(h.model, w["model"].as_str().unwrap(), "{id}");
        assert_eq!(h.user, w["user"].as_str().unwrap(), "{id}");
        assert_eq!(h.project, w["project"].as_str().unwrap(), "{id}");
        let tags: Vec<&str> = w["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(h.tags, tags, "{id}");
        assert_eq!(
            (h.start_ms, h.end_ms),
            (ms(&w["start_ms"]), ms(&w["end_ms"])),
            "{id}"
        );
        assert_eq!(g.samples.len() as i64, ms(&w["samples"]), "{id}");
        assert_eq!(g.max_gap_ms, ms(&expected()["max_gap_ms"]), "{id}");
        assert!(g.dir.ends_with(id), "{id}: {}", g.dir);
        assert_usage(id, &account(h, &g.samples, g.max_gap_ms), &w["usage"]);
    }
    // Before its process had a CUDA context, usage001 was sampled on GPU 0
    // at 0 % for it, with no power charged.
    let first = got[0].samples[0];
    assert_eq!(
        (first.util_pct, first.power_w, first.mem_used_mib),
        (0.0, None, 0)
    );
}

#[test]
fn the_range_selects_runs_that_overlap_it() {
    let ix = Indexed::new("range");
    let want = expected();
    let at = |i: usize, k: &str| ms(&want["holdings"][i][k]);
    let ids = |since, until| -> Vec<String> {
        run_holdings(&ix.index, since, until)
            .unwrap()
            .iter()
            .map(|h| run_id(&h.holding).to_string())
            .collect()
    };
    // Ends at usage001's end: nothing of it is left out, the others not begun.
    assert_eq!(ids(0, at(0, "end_ms")), ["usage001"]);
    assert_eq!(ids(at(0, "end_ms"), at(1, "start_ms") + 1), ["dinit001"]);
    // A range inside dinit002's last minute still finds it, whole.
    let late = run_holdings(&ix.index, at(2, "end_ms") - 1000, at(2, "end_ms")).unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].holding.start_ms, at(2, "start_ms"));
}

#[test]
fn double_init_is_flagged_and_counted_once_and_the_report_equals_the_hand_count() {
    let ix = Indexed::new("report");
    let want = expected();
    let mut gaps = BTreeMap::new();
    let runs: Vec<(Holding, Vec<Sample>)> = holdings(&ix)
        .into_iter()
        .map(|h| {
            gaps.insert(run_id(&h.holding).to_string(), h.max_gap_ms);
            h.into_parts()
        })
        .collect();
    let r = usage::reconcile(&[], runs, &|_| None);
    assert!(r.links.is_empty());
    let conflicts: Vec<Json> = r
        .conflicts
        .iter()
        .map(|c| {
            serde_json::json!({
                "gpu": c.gpu, "host": c.host,
                "claimants": c.claimants.iter().map(run_id_of).collect::<Vec<_>>(),
                "from_ms": c.from_ms, "to_ms": c.to_ms,
            })
        })
        .collect();
    assert_eq!(Json::Array(conflicts), want["conflicts"]);
    // What is counted: dinit002 only after dinit001's end.
    let mut counted: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for (h, s) in &r.runs_to_count {
        let u = account(h, s, gaps[run_id(h)]);
        counted
            .entry(run_id(h).to_string())
            .or_default()
            .push(serde_json::json!({
                "start_ms": h.start_ms, "end_ms": h.end_ms, "usage": u,
            }));
    }
    for (id, pieces) in want["counted"].as_object().unwrap() {
        let got = &counted[id];
        assert_eq!(got.len(), pieces.as_array().unwrap().len(), "{id}");
        for (g, w) in got.iter().zip(pieces.as_array().unwrap()) {
            assert_eq!(
                (&g["start_ms"], &g["end_ms"]),
                (&w["start_ms"], &w["end_ms"]),
                "{id}"
            );
            let u: Usage = serde_json::from_value(g["usage"].clone()).unwrap();
            assert_usage(id, &u, &w["usage"]);
        }
    }
    // And through the report, by user.
    let query = Query {
        by: vec![Dim::User],
        since_ms: WHOLE_DAY.0,
        until_ms: WHOLE_DAY.1,
        period: Period::Total,
        tz: TimeZone::UTC,
        ignore_tag: None,
        only: None,
    };
    let accounted: Vec<(&Holding, usage::ByDay)> = r
        .runs_to_count
        .iter()
        .map(|(h, s)| {
            let policy = Policy {
                max_gap_ms: gaps[run_id(h)],
                ..Policy::default()
            };
            let u = usage::account(
                h,
                s,
                WHOLE_DAY,
                &usage::Calendar::new(TimeZone::UTC.clone()),
                &policy,
            )
            .unwrap();
            (h, u)
        })
        .collect();
    let report = usage::report(&query, &Teams::default(), accounted);
    let rows: Vec<&str> = report.rows.iter().map(|r| r.key[0].as_str()).collect();
    assert_eq!(rows, ["ana", "ben"]);
    for row in &report.rows {
        let w = &want["by_user"][&row.key[0]];
        assert_usage(&row.key[0], &row.usage, w);
        assert_eq!((row.jobs, row.runs as i64), (0, ms(&w["runs"])));
    }
    assert_usage("total", &report.total.usage, &want["total"]);
    assert_eq!(report.total.runs as i64, ms(&want["total"]["runs"]));
}

fn run_id_of(h: &Holder) -> String {
    match h {
        Holder::Run { run } => run.clone(),
        Holder::Job { job, attempt } => format!("job {job}.{attempt}"),
    }
}

#[test]
fn runs_a_job_produced_are_counted_once_as_the_job() {
    let ix = Indexed::new("job");
    let all = holdings(&ix);
    let b = all
        .iter()
        .find(|h| run_id(&h.holding) == "dinit001")
        .unwrap();
    let last = all
        .iter()
        .find(|h| run_id(&h.holding) == "dinit002")
        .unwrap();
    // Job 42's attempt 1 held the A100 of gpu-host-b (agent `agent-b`) from
    // 2 s before the first run's start to 1 s after the second's end.
    let job = Holding {
        holder: Holder::Job {
            job: 42,
            attempt: 1,
        },
        host: "agent-b".into(),
        start_ms: b.holding.start_ms - 2000,
        end_ms: last.holding.end_ms + 1000,
        user: "ben".into(),
        ..b.holding.clone()
    };
    let agents = |a: &str| (a == "agent-b").then(|| "gpu-host-b".to_string());
    let r = usage::reconcile(
        std::slice::from_ref(&job),
        all.into_iter().map(RunHolding::into_parts).collect(),
        &agents,
    );
    let links: Vec<(u64, u32, &str)> = r
        .links
        .iter()
        .map(|l| (l.job, l.attempt, l.run.as_str()))
        .collect();
    assert_eq!(links, [(42, 1, "dinit001"), (42, 1, "dinit002")]);
    assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
    let left: Vec<&str> = r.runs_to_count.iter().map(|(h, _)| run_id(h)).collect();
    assert_eq!(left, ["usage001"]);
    // The job's time plus usage001's, each once.
    let counted = job.end_ms - job.start_ms
        + r.runs_to_count
            .iter()
            .map(|(h, _)| h.end_ms - h.start_ms)
            .sum::<i64>();
    assert_eq!(counted, (2 + 240 + 1) * 1000 + 120_000);
}

#[test]
fn a_gpu_without_a_uuid_in_the_metadata_is_named_by_host_and_index() {
    let meta: BTreeMap<String, Value> = BTreeMap::new();
    assert_eq!(
        gpu_identity(&meta, "gpu-host-c", 1),
        ("gpu-host-c:1".to_string(), String::new())
    );
}

#[test]
fn the_max_gap_is_twice_the_median_interval() {
    assert_eq!(max_gap([0, 15_000, 30_000, 90_000].into_iter()), 30_000);
    assert_eq!(max_gap([0, 500, 1000, 1500].into_iter()), 1_000);
    assert_eq!(max_gap([5].into_iter()), DEFAULT_RUN_MAX_GAP_MS);
    assert_eq!(max_gap([0, 3_600_000].into_iter()), 600_000);
}
