//! The daemon's digest pass: every `notify::send::Settings::digest_every`
//! (and at start), by the settings' clock, each digest sink's ended
//! periods are summed up — jobs that ended, from the queue; GPU-hours,
//! from the same usage report as `GET /usage` — and recorded through the
//! outbox, once per (sink, period). `notify::digest` owns the periods
//! and counts; this reads the databases.

use std::sync::Arc;

use super::coord::Coord;
use super::error::ApiResult;
use crate::notify::digest::Counts;
use crate::usage;

/// Run digest passes until the task is dropped.
pub(crate) async fn digest_loop(c: Arc<Coord>) {
    let every = c.notify.settings().digest_every;
    loop {
        let cc = c.clone();
        match tokio::task::spawn_blocking(move || pass(&cc)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(digests = n, "digests recorded"),
            Ok(Err(e)) => tracing::error!(error = %e, "digest pass"),
            Err(e) => tracing::error!(error = %e, "digest pass task"),
        }
        tokio::time::sleep(every).await;
    }
}

/// One pass at the clock's now; returns how many digests were recorded.
pub(crate) fn pass(c: &Coord) -> ApiResult<usize> {
    let now_ns = c.notify.settings().clock.now_ns();
    let tz = c.lab.zone()?;
    let owed = c.notify.digests_owed(now_ns, &tz)?;
    let mut n = 0;
    for (sink, periods) in owed {
        for p in periods {
            let ends = c.queue.job_ends(p.start_ns, p.end_ns)?;
            let mut counts =
                Counts::of_jobs(|e| sink.rule.covers(&e.user, &e.project, &e.tags), &ends);
            let ms = 1_000_000;
            let q = usage::Query {
                by: Vec::new(),
                since_ms: p.start_ns / ms,
                until_ms: p.end_ns / ms,
                period: usage::Period::Total,
                tz: tz.clone(),
                ignore_tag: c.lab.ignore_tag().map(str::to_string),
                only: Some(usage::Scope {
                    users: sink.rule.users.clone(),
                    projects: sink.rule.projects.clone(),
                    tags: sink.rule.tags.clone(),
                }),
            };
            let found = super::usage::report(c, &q, now_ns / ms)?;
            let total = &found.report.total.usage;
            counts.gpu_hours = total.allocated_h();
            counts.used_gpu_hours = total.used_h();
            counts.idle_gpu_hours = total.idle_h();
            if c.notify.record_digest(&sink.name, &p, counts)?.is_some() {
                n += 1;
            }
        }
    }
    Ok(n)
}
