//! When a rule acts, on an injected clock; tag formats; the rule checks.

use std::time::{Duration, Instant};

use super::engine::Pending;
use super::{format_tag, NewWatch};

const S: Duration = Duration::from_secs(1);

#[test]
fn quiet_period_then_max_wait() {
    let t0 = Instant::now();
    let mut p = Pending::new(t0, "events");
    let (quiet, max) = (10 * S, 60 * S);
    assert_eq!(p.due(t0 + 9 * S, quiet, max, None), None);
    assert!(p
        .due(t0 + 10 * S, quiet, max, None)
        .unwrap()
        .contains("quiet for 10s after 1 change"));
    // A writer that never stops: every 5 s a change, so never quiet …
    for i in 1..12 {
        p.touch(t0 + 5 * i * S);
        assert_eq!(p.due(t0 + 5 * i * S + 4 * S, quiet, max, None), None, "{i}");
    }
    // … until max-wait bounds the postponement.
    p.touch(t0 + 60 * S);
    assert!(p
        .due(t0 + 61 * S, quiet, max, None)
        .unwrap()
        .contains("max-wait 1m reached"));
}

#[test]
fn a_marker_is_the_only_trigger_when_asked_for() {
    let t0 = Instant::now();
    let mut p = Pending::new(t0, "events");
    let (quiet, max) = (S, 10 * S);
    assert_eq!(p.due(t0 + 100 * S, quiet, max, Some("_SUCCESS")), None);
    p.marker = true;
    assert!(p
        .due(t0 + S / 2, quiet, max, Some("_SUCCESS"))
        .unwrap()
        .contains("marker _SUCCESS"));
}

#[test]
fn a_postponed_snapshot_waits_for_its_retry_time() {
    let t0 = Instant::now();
    let mut p = Pending::new(t0, "events");
    p.retry_at = Some(t0 + 30 * S);
    assert_eq!(p.due(t0 + 29 * S, S, 2 * S, None), None);
    assert!(p.due(t0 + 30 * S, S, 2 * S, None).is_some());
}

#[test]
fn tag_formats_fill_in_the_date() {
    let t: jiff::Timestamp = "2026-12-07T03:15:09Z".parse().unwrap();
    assert_eq!(format_tag("auto-{date}", t, 3), "auto-2026-12-07");
    assert_eq!(format_tag("v{n}-{datetime}", t, 3), "v3-20261207-031509");
}

#[test]
fn rules_are_checked_field_by_field() {
    let d = tempfile::tempdir().unwrap();
    let book = super::Book::open(&d.path().join("watch.db")).unwrap();
    let base = NewWatch {
        path: d.path().to_path_buf(),
        snapshot: Some("ds".into()),
        ..NewWatch::default()
    };
    let bad = |f: &dyn Fn(&mut NewWatch), field: &str| {
        let mut w = base.clone();
        f(&mut w);
        let e = book.add(&w, 0).unwrap_err().to_string();
        assert!(e.starts_with(field), "{field}: {e}");
    };
    bad(&|w| w.path = "rel".into(), "path");
    bad(&|w| w.path = d.path().join("missing"), "path");
    bad(&|w| w.quiet = Some("soon".into()), "quiet");
    bad(&|w| w.max_wait = Some("1s".into()), "max_wait");
    bad(&|w| w.when_file = Some("../x".into()), "when_file");
    bad(
        &|w| w.tag_format = Some("bad tag {date}".into()),
        "tag_format",
    );
    bad(&|w| w.live = Some("5m".into()), "live");
    bad(&|w| w.sync_wandb = true, "snapshot");
    let w = book.add(&base, 0).unwrap();
    assert_eq!(w.quiet_s, 60.0);
    assert_eq!(w.max_wait_s, 600.0);
    assert!(book
        .add(&base, 0)
        .unwrap_err()
        .to_string()
        .contains("already"));
}
