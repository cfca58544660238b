//! Schedule tests on a real `queue.db` (and a real dataset store for data
//! triggers), with time passed in: no test waits for a tick.

use jiff::Timestamp;

use super::book::CRASH_BEFORE_WATERMARK;
use super::plan::{decide, Decision};
use super::*;
use crate::queue::{JobSpec, JobState, Queue};
use crate::store::{AddOptions, Store};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn ns(s: &str) -> i64 {
    t(s).as_nanosecond() as i64
}

fn new_queue(dir: &std::path::Path) -> Queue {
    Queue::open(&dir.join("queue.db")).unwrap()
}

fn cron(name: &str, pattern: &str, tz: &str) -> NewSchedule {
    NewSchedule {
        name: name.into(),
        cron: Some(pattern.into()),
        tz: Some(tz.into()),
        overlap: Overlap::Skip,
        catch_up: CatchUp::Skip,
        window: None,
        on_dataset: None,
        tag_pattern: None,
        job: JobSpec::parse(r#"{"command": ["true"], "user": "ana"}"#).unwrap(),
        sweep: None,
    }
}

/// Every job in the queue, oldest first: (id, state, reason).
fn jobs(q: &Queue) -> Vec<(i64, JobState, Option<String>)> {
    let mut v: Vec<_> = q
        .page(
            &Default::default(),
            crate::queue::JobOrder::Queue,
            None,
            crate::queue::MAX_PAGE,
        )
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| (j.id.0, j.state, j.reason))
        .collect();
    v.sort_by_key(|j| j.0);
    v
}

fn local(ts: &[Timestamp], tz: &str) -> Vec<String> {
    let tz = jiff::tz::TimeZone::get(tz).unwrap();
    ts.iter()
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M%:z")
                .to_string()
        })
        .collect()
}

#[test]
fn fire_times_across_dst_in_new_york() {
    let r = CronRule::parse("30 2 * * *", "America/New_York").unwrap();
    // Spring forward on 2026-03-08: 02:00 EST jumps to 03:00 EDT; the
    // 02:30 job runs once, right after the gap.
    let (got, n) = r.between(t("2026-03-07T00:00Z"), t("2026-03-10T00:00Z"), 100);
    assert_eq!(n, 3);
    assert_eq!(
        local(&got, "America/New_York"),
        [
            "2026-03-07 02:30-05:00",
            "2026-03-08 03:00-04:00",
            "2026-03-09 02:30-04:00"
        ]
    );
    // Fall back on 2026-11-01: 01:00-02:00 happens twice; a 01:30 job runs
    // once, at the first pass.
    let r = CronRule::parse("30 1 * * *", "America/New_York").unwrap();
    let (got, _) = r.between(t("2026-10-31T00:00Z"), t("2026-11-03T00:00Z"), 100);
    assert_eq!(
        local(&got, "America/New_York"),
        [
            "2026-10-31 01:30-04:00",
            "2026-11-01 01:30-04:00",
            "2026-11-02 01:30-05:00"
        ]
    );
    // Starting between the two passes does not run it again.
    let first_pass = t("2026-11-01T05:30Z");
    let next = r.next_after(first_pass).unwrap();
    assert_eq!(
        local(&[next], "America/New_York"),
        ["2026-11-02 01:30-05:00"]
    );
    // A wildcard hour runs at each wall-clock match, both passes included.
    let r = CronRule::parse("30 * * * *", "America/New_York").unwrap();
    let (got, _) = r.between(t("2026-11-01T04:00Z"), t("2026-11-01T07:00Z"), 100);
    assert_eq!(
        local(&got, "America/New_York"),
        [
            "2026-11-01 00:30-04:00",
            "2026-11-01 01:30-04:00",
            "2026-11-01 01:30-05:00"
        ]
    );
}

#[test]
fn fire_times_across_dst_in_berlin_and_none_in_seoul() {
    let r = CronRule::parse("30 2 * * *", "Europe/Berlin").unwrap();
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
    let (got, _) = r.between(t("2026-03-28T00:00Z"), t("2026-03-31T00:00Z"), 100);
    assert_eq!(
        local(&got, "Europe/Berlin"),
        [
            "2026-03-28 02:30+01:00",
            "2026-03-29 03:00+02:00",
            "2026-03-30 02:30+02:00"
        ]
    );
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 runs once.
    let (got, _) = r.between(t("2026-10-24T00:00Z"), t("2026-10-27T00:00Z"), 100);
    assert_eq!(
        local(&got, "Europe/Berlin"),
        [
            "2026-10-24 02:30+02:00",
            "2026-10-25 02:30+02:00",
            "2026-10-26 02:30+01:00"
        ]
    );
    // Seoul has no DST: the same instants, 24 h apart, all year.
    let r = CronRule::parse("30 2 * * *", "Asia/Seoul").unwrap();
    for start in ["2026-03-07T00:00Z", "2026-10-31T00:00Z"] {
        let got = r.upcoming(t(start), 3);
        assert_eq!(got[1].duration_since(got[0]).as_hours(), 24);
        assert_eq!(got[2].duration_since(got[1]).as_hours(), 24);
        assert!(local(&got, "Asia/Seoul")
            .iter()
            .all(|s| s.ends_with("02:30+09:00")));
    }
    // The extensions: the last day of the month, the 2nd Monday, @daily.
    let r = CronRule::parse("0 9 L * *", "UTC").unwrap();
    assert_eq!(
        r.next_after(t("2026-02-10T00:00Z")),
        Some(t("2026-02-28T09:00Z"))
    );
    let r = CronRule::parse("0 9 * * 1#2", "UTC").unwrap();
    assert_eq!(
        r.next_after(t("2026-02-01T00:00Z")),
        Some(t("2026-02-09T09:00Z"))
    );
    let r = CronRule::parse("@daily", "UTC").unwrap();
    assert_eq!(
        r.next_after(t("2026-02-01T10:00Z")),
        Some(t("2026-02-02T00:00Z"))
    );
}

#[test]
fn bad_settings_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let now = t("2026-01-01T00:00Z");
    let field = |n: NewSchedule| match s.add(n, "UTC", None, now).unwrap_err() {
        ScheduleError::Invalid { field, .. } => field,
        e => panic!("{e}"),
    };
    assert_eq!(field(cron("a", "61 * * * *", "UTC")), "cron");
    assert_eq!(field(cron("a", "0 3 * *", "UTC")), "cron");
    assert_eq!(field(cron("a", "0 0 0 3 * *", "UTC")), "cron");
    assert_eq!(field(cron("a", "0 3 30 2 *", "UTC")), "cron");
    assert_eq!(field(cron("a", "0 3 * * *", "Mars/Olympus")), "tz");
    assert_eq!(field(cron("bad name", "0 3 * * *", "UTC")), "name");
    let mut n = cron("a", "0 3 * * *", "UTC");
    n.window = Some("22:00-25:00".into());
    assert_eq!(field(n), "window");
    let mut n = cron("a", "0 3 * * *", "UTC");
    n.cron = None;
    n.window = Some("22:00-06:00".into());
    assert_eq!(field(n), "window");
    let mut n = cron("a", "0 3 * * *", "UTC");
    n.cron = None;
    assert_eq!(field(n), "cron");
    let mut n = cron("a", "0 3 * * *", "UTC");
    n.tag_pattern = Some("v*".into());
    assert_eq!(field(n), "tag_pattern");
    // A dataset the store does not have.
    let home = crate::Home::at(&dir.path().join("home"));
    let store = Store::open(&home).unwrap();
    let mut n = cron("a", "0 3 * * *", "UTC");
    n.cron = None;
    n.on_dataset = Some("imagenet".into());
    match s.add(n, "UTC", Some(&store), now).unwrap_err() {
        ScheduleError::Invalid { field, reason } => {
            assert_eq!(field, "on_dataset");
            assert!(reason.contains("imagenet"), "{reason}");
        }
        e => panic!("{e}"),
    }
    // Nothing was stored by any of these.
    assert!(s.list(now).unwrap().is_empty());
    s.add(cron("a", "0 3 * * *", "UTC"), "UTC", None, now)
        .unwrap();
    assert!(matches!(
        s.add(cron("a", "0 4 * * *", "UTC"), "UTC", None, now),
        Err(ScheduleError::Exists(_))
    ));
}

#[test]
fn catch_up_decisions() {
    let now = t("2026-01-01T03:30Z");
    let occ = [
        t("2026-01-01T01:00Z"),
        t("2026-01-01T02:00Z"),
        t("2026-01-01T03:00Z"),
    ];
    use Decision::{Fire, Missed};
    assert_eq!(decide(&occ, now, CatchUp::Skip), [Missed, Missed, Missed]);
    assert_eq!(decide(&occ, now, CatchUp::Once), [Missed, Missed, Fire]);
    assert_eq!(decide(&occ, now, CatchUp::All), [Fire, Fire, Fire]);
    // An on-time occurrence always fires, and makes `once` run no other.
    let now = t("2026-01-01T03:00:30Z");
    assert_eq!(decide(&occ, now, CatchUp::Once), [Missed, Missed, Fire]);
    assert_eq!(decide(&occ, now, CatchUp::Skip), [Missed, Missed, Fire]);
}

/// An hourly schedule, then a downtime over 3 ticks (01:00, 02:00, 03:00
/// UTC), evaluated at 03:30: what each catch-up policy submits and lists
/// as missed.
fn downtime(policy: CatchUp) -> (Vec<(i64, JobState, Option<String>)>, ScheduleDetail) {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let mut n = cron("hourly", "0 * * * *", "UTC");
    n.catch_up = policy;
    // `all` runs them one after the other.
    n.overlap = Overlap::Queue;
    s.add(n, "UTC", None, t("2026-01-01T00:10Z")).unwrap();
    s.evaluate(None, t("2026-01-01T00:10:01Z")).unwrap();
    assert!(jobs(&q).is_empty());
    let fx = s.evaluate(None, t("2026-01-01T03:30Z")).unwrap();
    assert_eq!(fx.submitted.len(), jobs(&q).len());
    // Evaluating again changes nothing.
    let again = s.evaluate(None, t("2026-01-01T03:30:05Z")).unwrap();
    assert!(again.submitted.is_empty() && again.changed.is_empty());
    (jobs(&q), s.show("hourly", t("2026-01-01T03:31Z")).unwrap())
}

#[test]
fn downtime_over_three_ticks_under_each_catch_up_policy() {
    let (j, d) = downtime(CatchUp::Skip);
    assert!(j.is_empty());
    assert_eq!(d.schedule.missed, 3);
    assert_eq!(d.missed.len(), 3);
    assert!(d.missed[0].key.contains("03:00"), "{:?}", d.missed[0]);
    assert!(d.missed[0]
        .detail
        .as_deref()
        .unwrap()
        .contains("catch-up skip"));

    let (j, d) = downtime(CatchUp::Once);
    assert_eq!(j.len(), 1);
    assert_eq!(d.schedule.missed, 2);
    assert_eq!(d.runs.len(), 1);
    assert_eq!(d.runs[0].key, "cron 2026-01-01T03:00:00Z");
    assert_eq!(d.runs[0].outcome, Outcome::Fired);

    let (j, d) = downtime(CatchUp::All);
    assert_eq!(j.len(), 3);
    assert_eq!(d.schedule.missed, 0);
    assert_eq!(d.runs.len(), 3);
    // Each waits for the one before (overlap queue).
    assert_eq!(j[0].2, None);
    assert!(
        j[1].2
            .as_deref()
            .unwrap()
            .contains(&format!("job {}", j[0].0)),
        "{j:?}"
    );
    assert!(
        j[2].2
            .as_deref()
            .unwrap()
            .contains(&format!("job {}", j[1].0)),
        "{j:?}"
    );
}

#[test]
fn overlap_skip_queue_and_replace() {
    for policy in [Overlap::Skip, Overlap::Queue, Overlap::Replace] {
        let dir = tempfile::tempdir().unwrap();
        let q = new_queue(dir.path());
        let s = Schedules::new(&q);
        let mut n = cron("o", "0 * * * *", "UTC");
        n.overlap = policy;
        s.add(n, "UTC", None, t("2026-01-01T00:10Z")).unwrap();
        let first = s
            .evaluate(None, t("2026-01-01T01:00:01Z"))
            .unwrap()
            .submitted;
        assert_eq!(first.len(), 1);
        let a = first[0];
        // 02:00: the first job is still queued.
        let fx = s.evaluate(None, t("2026-01-01T02:00:01Z")).unwrap();
        let d = s.show("o", t("2026-01-01T02:00:02Z")).unwrap();
        let now = ns("2026-01-01T02:00:02Z");
        match policy {
            Overlap::Skip => {
                assert!(fx.submitted.is_empty());
                assert_eq!(d.runs[0].outcome, Outcome::Skipped);
                let why = d.runs[0].detail.as_deref().unwrap();
                assert!(
                    why.contains(&format!("job {a}")) && why.contains("queued"),
                    "{why}"
                );
                assert_eq!(q.get(a).unwrap().state, JobState::Queued);
            }
            Overlap::Queue => {
                let b = fx.submitted[0];
                // b waits for a to end, whatever its outcome.
                let ids =
                    |v: Vec<crate::queue::Pending>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
                assert_eq!(ids(q.runnable_at(10, now).unwrap()), [a]);
                q.cancel(a).unwrap();
                assert_eq!(ids(q.runnable_at(10, now).unwrap()), [b]);
            }
            Overlap::Replace => {
                let b = fx.submitted[0];
                assert_eq!(fx.cancelled, [(a, None)]);
                let ja = q.get(a).unwrap();
                assert_eq!(ja.state, JobState::Cancelled);
                assert!(ja
                    .reason
                    .unwrap()
                    .contains("replaced by the next run of schedule o"));
                assert_eq!(q.get(b).unwrap().state, JobState::Queued);
            }
        }
    }
}

#[test]
fn a_job_that_cannot_start_inside_its_window_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    // Fires at 21:00 in Seoul; may start only 22:00-06:00 Seoul time.
    let mut n = cron("nightly", "0 21 * * *", "Asia/Seoul");
    n.window = Some("22:00-06:00".into());
    s.add(n, "UTC", None, t("2026-01-01T00:00Z")).unwrap();
    let fire = t("2026-01-01T12:00:01Z"); // 21:00:01 KST
    let id = s.evaluate(None, fire).unwrap().submitted[0];
    let j = q.get(id).unwrap();
    assert!(
        j.reason
            .as_deref()
            .unwrap()
            .contains("waiting for its window 22:00-06:00"),
        "{:?}",
        j.reason
    );
    // Not runnable before 22:00 KST, runnable inside the window.
    assert!(q
        .runnable_at(10, ns("2026-01-01T12:59Z"))
        .unwrap()
        .is_empty());
    assert_eq!(q.runnable_at(10, ns("2026-01-01T13:00Z")).unwrap().len(), 1);
    // Nothing expires while the window is open...
    assert!(q
        .expire_windows(ns("2026-01-01T20:59Z"))
        .unwrap()
        .is_empty());
    // ...and at 06:00 KST a job that got no GPUs is cancelled, saying why.
    assert_eq!(q.expire_windows(ns("2026-01-01T21:00Z")).unwrap(), [id]);
    let j = q.get(id).unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert!(
        j.reason.as_deref().unwrap().contains("start window closed"),
        "{:?}",
        j.reason
    );
    // A job that started in time is not touched by the window's end.
    let id2 = s
        .evaluate(None, t("2026-01-02T12:00:01Z"))
        .unwrap()
        .submitted[0];
    q.assign(id2, "gpu1", &["GPU-1".into()], 60_000_000_000)
        .unwrap();
    assert!(q
        .expire_windows(ns("2026-01-02T21:00Z"))
        .unwrap()
        .is_empty());
    assert_eq!(q.get(id2).unwrap().state, JobState::Assigned);
    // Fired inside the window (23:00 KST), it may start at once.
    let mut n = cron("late", "0 23 * * *", "Asia/Seoul");
    n.window = Some("22:00-06:00".into());
    s.add(n, "UTC", None, t("2026-01-03T00:00Z")).unwrap();
    let id3 = s
        .evaluate(None, t("2026-01-03T14:00:01Z"))
        .unwrap()
        .submitted[0];
    assert!(q
        .runnable_at(10, ns("2026-01-03T14:00:02Z"))
        .unwrap()
        .iter()
        .any(|p| p.id == id3));
}

#[test]
fn a_crash_in_the_middle_of_an_occurrence_never_fires_it_twice() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = new_queue(dir.path());
        let s = Schedules::new(&q);
        s.add(
            cron("h", "0 * * * *", "UTC"),
            "UTC",
            None,
            t("2026-01-01T00:10Z"),
        )
        .unwrap();
        // The job is inserted, then the evaluation dies before its
        // watermark moves: the transaction takes the job with it.
        CRASH_BEFORE_WATERMARK.with(|c| c.set(true));
        let fx = s.evaluate(None, t("2026-01-01T01:00:01Z")).unwrap();
        CRASH_BEFORE_WATERMARK.with(|c| c.set(false));
        assert!(fx.submitted.is_empty());
        assert!(jobs(&q).is_empty());
    }
    // The daemon restarts (a new connection to the same file).
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let fx = s.evaluate(None, t("2026-01-01T01:00:20Z")).unwrap();
    assert_eq!(fx.submitted.len(), 1);
    assert_eq!(jobs(&q).len(), 1);
    // Even with its watermark lost (moved back before the occurrence), the
    // occurrence's key keeps it from firing again.
    q.transaction(|tx| -> Result<(), crate::queue::QueueError> {
        tx.execute(
            "UPDATE schedules SET watermark_ns = ?1",
            [ns("2026-01-01T00:10Z")],
        )
        .unwrap();
        Ok(())
    })
    .unwrap();
    let fx = s.evaluate(None, t("2026-01-01T01:00:40Z")).unwrap();
    assert!(fx.submitted.is_empty());
    assert_eq!(jobs(&q).len(), 1);
    let d = s.show("h", t("2026-01-01T01:01Z")).unwrap();
    assert_eq!(d.runs.len(), 1);
}

fn add_version(store: &Store, dir: &std::path::Path, content: &str, tag: Option<&str>) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("data.txt"), content).unwrap();
    store
        .add(
            dir,
            &AddOptions {
                name: Some("imagenet".into()),
                message: None,
                tag: tag.map(str::to_string),
                author: None,
            },
            &crate::progress::NoProgress,
        )
        .unwrap()
        .created
}

#[test]
fn a_data_trigger_fires_once_per_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let home = crate::Home::at(&dir.path().join("home"));
    let store = Store::open(&home).unwrap();
    let data = dir.path().join("imagenet");
    assert!(add_version(&store, &data, "one", None));
    let mut n = cron("retrain", "", "UTC");
    n.cron = None;
    n.on_dataset = Some("imagenet".into());
    n.job.inputs = vec!["imagenet@latest".into(), "other@v1".into()];
    s.add(n, "UTC", Some(&store), t("2026-01-01T00:00Z"))
        .unwrap();
    // The version it had when the schedule was added never fires.
    assert!(s
        .evaluate(Some(&store), t("2026-01-01T00:00:02Z"))
        .unwrap()
        .submitted
        .is_empty());
    assert!(add_version(&store, &data, "two", None));
    let v2 = store.log("imagenet").unwrap()[0].id.to_hex();
    let fx = s.evaluate(Some(&store), t("2026-01-01T00:00:04Z")).unwrap();
    assert_eq!(fx.submitted.len(), 1);
    let job = q.get(fx.submitted[0]).unwrap();
    assert_eq!(
        job.spec.inputs,
        [format!("imagenet@{v2}"), "other@v1".to_string()]
    );
    assert_eq!(job.spec.env["TRAINYARD_TRIGGER"], format!("imagenet@{v2}"));
    assert_eq!(job.spec.env["TRAINYARD_SCHEDULE"], "retrain");
    assert!(job.spec.tags.contains(&"schedule:retrain".to_string()));
    // Once only.
    assert!(s
        .evaluate(Some(&store), t("2026-01-01T00:00:06Z"))
        .unwrap()
        .submitted
        .is_empty());
    // Adding identical content again makes no version and fires nothing.
    assert!(!add_version(&store, &data, "two", None));
    assert!(s
        .evaluate(Some(&store), t("2026-01-01T00:00:08Z"))
        .unwrap()
        .submitted
        .is_empty());
    let d = s.show("retrain", t("2026-01-01T00:00:09Z")).unwrap();
    assert_eq!(d.runs.len(), 1);
    assert!(d.runs[0].detail.as_deref().unwrap().contains(&v2));
    // The previous job is still queued: with overlap skip, a new version
    // is recorded as skipped.
    assert!(add_version(&store, &data, "three", None));
    assert!(s
        .evaluate(Some(&store), t("2026-01-01T00:00:10Z"))
        .unwrap()
        .submitted
        .is_empty());
    let d = s.show("retrain", t("2026-01-01T00:00:11Z")).unwrap();
    assert_eq!(d.runs[0].outcome, Outcome::Skipped);
}

#[test]
fn a_tag_pattern_fires_on_matching_tags_only() {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let home = crate::Home::at(&dir.path().join("home"));
    let store = Store::open(&home).unwrap();
    let data = dir.path().join("imagenet");
    add_version(&store, &data, "one", Some("v1"));
    let mut n = cron("rel", "", "UTC");
    n.cron = None;
    n.on_dataset = Some("imagenet".into());
    n.tag_pattern = Some("v*".into());
    n.overlap = Overlap::Queue;
    s.add(n, "UTC", Some(&store), t("2026-01-01T00:00Z"))
        .unwrap();
    add_version(&store, &data, "two", Some("nightly"));
    assert!(s
        .evaluate(Some(&store), t("2026-01-01T00:00:02Z"))
        .unwrap()
        .submitted
        .is_empty());
    add_version(&store, &data, "three", Some("v2"));
    let fx = s.evaluate(Some(&store), t("2026-01-01T00:00:04Z")).unwrap();
    assert_eq!(fx.submitted.len(), 1);
    let job = q.get(fx.submitted[0]).unwrap();
    assert_eq!(job.spec.env["TRAINYARD_TRIGGER_TAG"], "v2");
    let v = store.log("imagenet").unwrap()[0].id.to_hex();
    assert_eq!(job.spec.inputs, [format!("imagenet@{v}")]);
}

#[test]
fn pause_resume_run_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let mut n = cron("p", "0 * * * *", "UTC");
    n.catch_up = CatchUp::All;
    n.job.secret_env.insert("HF_TOKEN".into(), "hunter2".into());
    s.add(n, "UTC", None, t("2026-01-01T00:10Z")).unwrap();
    let info = s
        .set_paused("p", true, None, t("2026-01-01T00:20Z"))
        .unwrap();
    assert!(info.paused && info.next_fire_ns.is_none());
    assert_eq!(
        info.job.secret_env["HF_TOKEN"],
        crate::queue::SECRET_REDACTED
    );
    // Paused over 01:00 and 02:00: nothing fires, nothing is missed.
    assert!(s
        .evaluate(None, t("2026-01-01T02:00:01Z"))
        .unwrap()
        .submitted
        .is_empty());
    let info = s
        .set_paused("p", false, None, t("2026-01-01T02:30Z"))
        .unwrap();
    assert_eq!(info.next_fire.as_deref(), Some("2026-01-01T03:00:00+00:00"));
    assert!(s
        .evaluate(None, t("2026-01-01T02:30:01Z"))
        .unwrap()
        .submitted
        .is_empty());
    assert_eq!(s.info("p", t("2026-01-01T02:31Z")).unwrap().missed, 0);
    // Run by hand: a job with the secret's value, for the agent only.
    let (occ, fx) = s.run_now("p", None, t("2026-01-01T02:40Z")).unwrap();
    assert_eq!(occ.outcome, Outcome::Fired);
    assert_eq!(
        q.secret_env(fx.submitted[0]).unwrap()["HF_TOKEN"],
        "hunter2"
    );
    assert_eq!(
        q.get(fx.submitted[0]).unwrap().spec.secret_env["HF_TOKEN"],
        crate::queue::SECRET_REDACTED
    );
    // A second run while the first is queued: skipped (overlap skip).
    let (occ, fx) = s.run_now("p", None, t("2026-01-01T02:41Z")).unwrap();
    assert_eq!(occ.outcome, Outcome::Skipped);
    assert!(fx.submitted.is_empty());
    let d = s.show("p", t("2026-01-01T02:42Z")).unwrap();
    assert_eq!(d.next.len(), 5);
    assert_eq!(d.runs.len(), 2);
    s.remove("p").unwrap();
    assert!(matches!(
        s.info("p", t("2026-01-01T02:43Z")),
        Err(ScheduleError::Unknown(_))
    ));
    // Its jobs stay.
    assert_eq!(jobs(&q).len(), 1);
}

#[test]
fn windows_parse_and_bound() {
    let w = Window::parse("22:00-06:00").unwrap();
    assert_eq!(w.to_string(), "22:00-06:00");
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    // 23:00 on 2026-01-10 in Berlin: inside tonight's window.
    let (open, close) = w.bounds(t("2026-01-10T22:00Z"), &tz);
    assert_eq!(open, t("2026-01-10T22:00Z"));
    assert_eq!(close, t("2026-01-11T05:00Z"));
    // 03:00: inside the window that opened yesterday.
    let (_, close) = w.bounds(t("2026-01-11T02:00Z"), &tz);
    assert_eq!(close, t("2026-01-11T05:00Z"));
    // Noon: the next window.
    let (open, close) = w.bounds(t("2026-01-11T11:00Z"), &tz);
    assert_eq!(
        (open, close),
        (t("2026-01-11T21:00Z"), t("2026-01-12T05:00Z"))
    );
    let day = Window::parse("9:00-17:30").unwrap();
    assert_eq!(day.to_string(), "09:00-17:30");
    for bad in [
        "",
        "22:00",
        "22-06",
        "22:00-22:00",
        "24:00-06:00",
        "22:0-06:00",
    ] {
        assert!(Window::parse(bad).is_err(), "{bad}");
    }
    assert!(rule::glob_match("v*", "v1.2"));
    assert!(!rule::glob_match("v*", "nightly"));
    assert!(rule::glob_match("v?", "v2"));
    assert!(!rule::glob_match("v?", "v10"));
}

#[test]
fn a_long_downtime_lists_the_latest_missed_and_counts_the_rest() {
    // Every minute for 30 days: 43,200 occurrences.
    let r = CronRule::parse("* * * * *", "UTC").unwrap();
    let (got, n) = r.between(t("2026-01-01T00:00Z"), t("2026-01-31T00:00Z"), 100);
    assert_eq!(n, rule::SCAN_LIMIT);
    assert_eq!(got.len(), 100);
    assert_eq!(got[99], t("2026-01-31T00:00Z"));
    assert_eq!(got[0], t("2026-01-30T22:21Z"));
    // Through the book: 100 missed listed, one row for the rest.
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    s.add(
        cron("m", "* * * * *", "UTC"),
        "UTC",
        None,
        t("2026-01-01T00:00Z"),
    )
    .unwrap();
    let fx = s.evaluate(None, t("2026-01-31T00:00:30Z")).unwrap();
    // The latest (00:00, 30 s ago) was on time and fired; the 99 before it
    // are listed as missed, and one row counts the rest.
    assert_eq!(fx.submitted.len(), 1);
    let d = s.show("m", t("2026-01-31T00:01Z")).unwrap();
    assert_eq!(d.runs.len(), 1);
    assert_eq!(d.schedule.missed, 100);
    let summary = d
        .missed
        .iter()
        .find(|o| o.key.starts_with("cron missed"))
        .unwrap();
    assert!(
        summary
            .detail
            .as_deref()
            .unwrap()
            .starts_with("at least 9900 more"),
        "{summary:?}"
    );
}

#[test]
fn the_next_evaluation_is_due_at_the_earliest_fire_time() {
    let dir = tempfile::tempdir().unwrap();
    let q = new_queue(dir.path());
    let s = Schedules::new(&q);
    let now = t("2026-01-01T00:10Z");
    assert_eq!(s.next_due(now).unwrap(), None);
    s.add(cron("hourly", "0 * * * *", "UTC"), "UTC", None, now)
        .unwrap();
    s.add(cron("seoul", "30 0 * * *", "Asia/Seoul"), "UTC", None, now)
        .unwrap();
    // 00:30 KST is 15:30 UTC; the hourly one is first.
    assert_eq!(s.next_due(now).unwrap(), Some(t("2026-01-01T01:00Z")));
    s.set_paused("hourly", true, None, now).unwrap();
    assert_eq!(s.next_due(now).unwrap(), Some(t("2026-01-01T15:30Z")));
    // A data schedule is polled.
    let home = crate::Home::at(&dir.path().join("home"));
    let store = Store::open(&home).unwrap();
    add_version(&store, &dir.path().join("imagenet"), "one", None);
    let mut n = cron("data", "", "UTC");
    n.cron = None;
    n.on_dataset = Some("imagenet".into());
    s.add(n, "UTC", Some(&store), now).unwrap();
    assert_eq!(
        s.next_due(now).unwrap(),
        Some(now.checked_add(DATA_POLL).unwrap())
    );
}
