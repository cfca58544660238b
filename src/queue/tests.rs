//! Queue state machine tests on real SQLite files.

use super::*;

fn queue() -> (tempfile::TempDir, Queue) {
    let d = tempfile::tempdir().unwrap();
    let q = Queue::open(&d.path().join("queue.db")).unwrap();
    (d, q)
}

fn spec(json: &str) -> JobSpec {
    JobSpec::parse(json).unwrap()
}

const SEC: i64 = 1_000_000_000;

#[test]
fn happy_path_and_token_checks() {
    let (_d, q) = queue();
    let id = q.submit(&spec(r#"{"command": ["true"]}"#)).unwrap();
    assert_eq!(q.get(id).unwrap().state, JobState::Queued);
    let a = q.assign(id, "host-a", &["GPU-1".into()], 30 * SEC).unwrap();
    assert_eq!(a.attempt, 1);
    let j = q.get(id).unwrap();
    assert_eq!(
        (j.state, j.agent.as_deref(), j.gpus.clone()),
        (
            JobState::Assigned,
            Some("host-a"),
            vec!["GPU-1".to_string()]
        )
    );
    assert!(matches!(
        q.assign(id, "host-b", &[], SEC),
        Err(QueueError::BadState { .. })
    ));
    assert!(matches!(
        q.started("not-a-token", None),
        Err(QueueError::StaleAttempt)
    ));
    q.started(&a.token, None).unwrap();
    q.heartbeat(&a.token, 30 * SEC).unwrap();
    assert_eq!(
        q.finish(&a.token, Some(0), None).unwrap(),
        JobState::Succeeded
    );
    // A finished attempt's token is no longer current.
    assert!(matches!(
        q.finish(&a.token, Some(1), None),
        Err(QueueError::StaleAttempt)
    ));
    assert_eq!(q.get(id).unwrap().state, JobState::Succeeded);
}

#[test]
fn failures_retry_until_attempts_run_out() {
    let (_d, q) = queue();
    let id = q
        .submit(&spec(r#"{"command": ["false"], "max_attempts": 2}"#))
        .unwrap();
    let a1 = q.assign(id, "h", &[], SEC).unwrap();
    assert_eq!(
        q.finish(&a1.token, Some(3), None).unwrap(),
        JobState::Queued
    );
    assert_eq!(
        q.get(id).unwrap().reason.as_deref(),
        Some("attempt 1 exited with code 3")
    );
    let a2 = q.assign(id, "h", &[], SEC).unwrap();
    assert_eq!(a2.attempt, 2);
    assert_eq!(
        q.finish(&a2.token, None, Some("git rev nope not found"))
            .unwrap(),
        JobState::Failed
    );
    let j = q.get(id).unwrap();
    assert_eq!(
        (j.state, j.reason.as_deref()),
        (JobState::Failed, Some("git rev nope not found"))
    );
    q.retry(id).unwrap();
    let a3 = q.assign(id, "h", &[], SEC).unwrap();
    assert_eq!(
        q.finish(&a3.token, Some(0), None).unwrap(),
        JobState::Succeeded
    );
}

#[test]
fn expired_lease_is_lost_and_requeued_and_the_old_agent_cannot_finish() {
    let (_d, q) = queue();
    let id = q
        .submit(&spec(r#"{"command": ["sleep", "100"], "max_attempts": 2}"#))
        .unwrap();
    let a1 = q.assign(id, "flaky", &["GPU-9".into()], SEC).unwrap();
    q.started(&a1.token, None).unwrap();
    let lost = q.expire_leases(a1.lease_until_ns + 1).unwrap();
    assert_eq!(lost, vec![(id, JobState::Queued)]);
    assert!(q.get(id).unwrap().reason.unwrap().contains("flaky"));
    let a2 = q.assign(id, "steady", &["GPU-2".into()], 60 * SEC).unwrap();
    // The cut-off agent comes back: everything it says about attempt 1 is refused.
    assert!(matches!(
        q.heartbeat(&a1.token, SEC),
        Err(QueueError::StaleAttempt)
    ));
    assert!(matches!(
        q.finish(&a1.token, Some(0), None),
        Err(QueueError::StaleAttempt)
    ));
    assert_eq!(q.get(id).unwrap().agent.as_deref(), Some("steady"));
    q.started(&a2.token, None).unwrap();
    // A live lease is not expired; the last attempt expiring makes the job lost.
    assert!(q.expire_leases(a2.lease_until_ns - SEC).unwrap().is_empty());
    assert_eq!(
        q.expire_leases(a2.lease_until_ns + 1).unwrap(),
        vec![(id, JobState::Lost)]
    );
}

#[test]
fn cancel_returns_the_running_token_and_dependencies_gate_scheduling() {
    let (_d, q) = queue();
    let first = q.submit(&spec(r#"{"command": ["prep"]}"#)).unwrap();
    let second = q
        .submit(&spec(&format!(
            r#"{{"command": ["train"], "depends_on": [{first}], "priority": 10}}"#
        )))
        .unwrap();
    let other = q.submit(&spec(r#"{"command": ["other"]}"#)).unwrap();
    let ids = |v: Vec<Pending>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(q.runnable(100).unwrap()), vec![first, other]);
    let a = q.assign(first, "h", &[], SEC).unwrap();
    q.finish(&a.token, Some(0), None).unwrap();
    // Now the high-priority dependent comes first.
    assert_eq!(ids(q.runnable(100).unwrap()), vec![second, other]);

    let b = q.assign(other, "h", &[], SEC).unwrap();
    q.started(&b.token, None).unwrap();
    assert_eq!(q.cancel(other).unwrap(), Some(b.token.clone()));
    assert!(matches!(
        q.finish(&b.token, Some(0), None),
        Err(QueueError::StaleAttempt)
    ));
    assert!(matches!(q.cancel(other), Err(QueueError::BadState { .. })));

    // A dependency that failed fails its dependents, with the reason.
    let bad = q.submit(&spec(r#"{"command": ["x"]}"#)).unwrap();
    let dep = q
        .submit(&spec(&format!(
            r#"{{"command": ["y"], "depends_on": [{bad}]}}"#
        )))
        .unwrap();
    q.cancel(bad).unwrap();
    q.runnable(100).unwrap();
    let j = q.get(dep).unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(
        j.reason.as_deref(),
        Some(&*format!("dependency {bad} did not succeed"))
    );
    assert!(matches!(
        q.submit(&spec(r#"{"command": ["z"], "depends_on": [999]}"#)),
        Err(QueueError::UnknownDependency(JobId(999)))
    ));
}

#[test]
fn the_queue_survives_reopening() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("queue.db");
    let (id, token) = {
        let q = Queue::open(&path).unwrap();
        let id = q.submit(&spec(r#"{"command": ["a"]}"#)).unwrap();
        let a = q.assign(id, "h", &[], 60 * SEC).unwrap();
        (id, a.token)
    };
    let q = Queue::open(&path).unwrap();
    assert_eq!(q.get(id).unwrap().state, JobState::Assigned);
    q.started(&token, None).unwrap();
    assert_eq!(
        q.finish(&token, Some(0), None).unwrap(),
        JobState::Succeeded
    );
}

/// Run job `id` to the end with exit code `code`.
fn run(q: &Queue, id: JobId, code: i32) {
    let a = q.assign(id, "h", &[], 60 * SEC).unwrap();
    q.started(&a.token, None).unwrap();
    q.finish(&a.token, Some(code), None).unwrap();
}

#[test]
fn pages_follow_cursors_in_either_order_with_filters() {
    let (_d, q) = queue();
    let mut ids = Vec::new();
    for i in 0..25 {
        let user = if i % 2 == 0 { "ada" } else { "bob" };
        let tag = if i % 5 == 0 {
            r#", "tags": ["five"]"#
        } else {
            ""
        };
        let prio = if i == 24 { 5 } else { 0 };
        ids.push(
            q.submit(&spec(&format!(
                r#"{{"command": ["run{i}"], "user": "{user}", "priority": {prio}{tag}}}"#
            )))
            .unwrap(),
        );
    }
    for id in &ids[..10] {
        run(&q, *id, if id.0 % 3 == 0 { 1 } else { 0 });
    }
    // Queue order: priority first, then submission; pages of 4, no repeats.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = q
            .page(&JobFilter::default(), JobOrder::Queue, cursor, 4)
            .unwrap();
        assert_eq!(p.total, 25);
        seen.extend(p.jobs.iter().map(|j| j.id));
        match p.next {
            Some(c) => cursor = Some(Cursor::parse(&c.to_string(), JobOrder::Queue).unwrap()),
            None => break,
        }
    }
    let mut want = vec![ids[24]];
    want.extend_from_slice(&ids[..24]);
    assert_eq!(seen, want);
    // Finished, newest first; a cursor of the other order is refused.
    let f = JobFilter::default();
    let p = q.page(&f, JobOrder::Finished, None, 3).unwrap();
    assert_eq!(p.total, 10);
    assert_eq!(
        p.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[9], ids[8], ids[7]]
    );
    let next = p.next.unwrap().to_string();
    assert!(matches!(
        Cursor::parse(&next, JobOrder::Queue),
        Err(QueueError::BadCursor { .. })
    ));
    let p2 = q
        .page(
            &f,
            JobOrder::Finished,
            Some(Cursor::parse(&next, JobOrder::Finished).unwrap()),
            3,
        )
        .unwrap();
    assert_eq!(p2.jobs[0].id, ids[6]);
    // Filters: user, tag, text (id or substring), states.
    let by = |f: JobFilter| {
        q.page(&f, JobOrder::Queue, None, 100)
            .unwrap()
            .jobs
            .into_iter()
            .map(|j| j.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(JobFilter {
            tag: Some("five".into()),
            user: Some("ada".into()),
            ..Default::default()
        }),
        vec![ids[0], ids[10], ids[20]]
    );
    assert_eq!(
        by(JobFilter {
            text: Some("run13".into()),
            ..Default::default()
        }),
        vec![ids[13]]
    );
    // A number matches the id too (and, as text, commands containing it).
    assert!(by(JobFilter {
        text: Some(ids[3].to_string()),
        ..Default::default()
    })
    .contains(&ids[3]));
    let counts = q.counts(&JobFilter::default()).unwrap();
    assert_eq!(counts["queued"], 15);
    assert_eq!(counts["succeeded"] + counts["failed"], 10);
    assert_eq!(counts["lost"], 0);
}

#[test]
fn a_sweeps_max_parallel_bounds_what_the_lan_may_start() {
    let (_d, q) = queue();
    let t = spec(r#"{"command": ["train"], "max_parallel": 2}"#);
    let ids = q
        .submit_sweep(&t, &parse_sweep(["lr=1,2,3,4"]).unwrap())
        .unwrap();
    let other = q.submit(&spec(r#"{"command": ["x"]}"#)).unwrap();
    let ids_of =
        |q: &Queue| -> Vec<JobId> { q.runnable(100).unwrap().iter().map(|p| p.id).collect() };
    assert_eq!(ids_of(&q), vec![ids[0], ids[1], other]);
    let a = q.assign(ids[0], "h", &[], 30 * SEC).unwrap();
    assert_eq!(ids_of(&q), vec![ids[1], other]);
    q.assign(ids[1], "h", &[], 30 * SEC).unwrap();
    assert_eq!(
        ids_of(&q),
        vec![other],
        "two of the sweep in flight: no third"
    );
    q.started(&a.token, None).unwrap();
    q.finish(&a.token, Some(0), None).unwrap();
    assert_eq!(ids_of(&q), vec![ids[2], other]);
    // Not a sweep: `max_parallel` alone limits nothing; 0 is refused.
    let e = JobSpec::parse(r#"{"command": ["x"], "max_parallel": 0}"#).unwrap_err();
    assert_eq!(e.field, "max_parallel");
}

#[test]
fn a_sweep_is_expanded_in_one_transaction_and_its_size_is_bounded() {
    let (_d, q) = queue();
    let t = spec(r#"{"command": ["train"], "tags": ["sw"]}"#);
    let grid = parse_sweep(["lr=1,2,3", "seed=a,b"]).unwrap();
    let ids = q.submit_sweep(&t, &grid).unwrap();
    assert_eq!(ids.len(), 6);
    let first = q.get(ids[0]).unwrap().spec.args;
    assert_eq!((first["lr"].as_str(), first["seed"].as_str()), ("1", "a"));
    let last = q.get(ids[5]).unwrap().spec.args;
    assert_eq!((last["lr"].as_str(), last["seed"].as_str()), ("3", "b"));
    let f = JobFilter {
        tag: Some("sw".into()),
        ..Default::default()
    };
    assert_eq!(q.page(&f, JobOrder::Queue, None, 10).unwrap().total, 6);
    let huge: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let big = parse_sweep([
        format!("a={}", huge.join(",")).as_str(),
        format!("b={}", huge.join(",")).as_str(),
    ])
    .unwrap();
    assert!(matches!(
        q.submit_sweep(&t, &big),
        Err(QueueError::TooManyJobs {
            count: 1_000_000,
            ..
        })
    ));
}

#[test]
fn retention_forgets_the_oldest_finished_jobs_but_not_a_pending_dependency() {
    let (_d, q) = queue();
    let ids: Vec<JobId> = (0..8)
        .map(|i| {
            q.submit(&spec(&format!(r#"{{"command": ["j{i}"]}}"#)))
                .unwrap()
        })
        .collect();
    for id in &ids[..6] {
        run(&q, *id, 0);
    }
    // A queued job depends on job 0: job 0 stays while it waits.
    let waiting = q
        .submit(&spec(&format!(
            r#"{{"command": ["w"], "depends_on": [{}], "gpus": {{"count": 1}}}}"#,
            ids[0]
        )))
        .unwrap();
    let gone = q.purge_finished(Some(2), None, 2).unwrap();
    assert_eq!(gone, vec![ids[1], ids[2], ids[3]]);
    assert!(matches!(q.get(ids[1]), Err(QueueError::UnknownJob(_))));
    assert!(q.attempts(ids[1]).unwrap().is_empty());
    for keep in [ids[0], ids[4], ids[5], ids[6], waiting] {
        q.get(keep).unwrap();
    }
    // By age: everything finished before now goes, except the dependency.
    let gone = q
        .purge_finished(None, Some(crate::db::now_ns() + 1), 100)
        .unwrap();
    assert_eq!(gone, vec![ids[4], ids[5]]);
    q.get(ids[0]).unwrap();
    // Ids are never reused after a purge.
    let new = q.submit(&spec(r#"{"command": ["n"]}"#)).unwrap();
    assert!(new.0 > waiting.0);
}

#[test]
fn a_schema_2_queue_is_migrated_with_its_tags_and_finish_times() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("queue.db");
    {
        // A queue as schema 2 left it: a lost job had no finish time.
        let mut conn = crate::db::open(&path).unwrap();
        crate::db::migrate(&mut conn, &path, &MIGRATIONS[..2]).unwrap();
        conn.execute_batch(
            r#"INSERT INTO jobs (id, spec, project, user, priority, state, attempts, max_attempts,
                                 submitted_ns, gpu_count)
               VALUES (1, '{"command": ["a"], "tags": ["old", "x"]}', 'p', 'u', 0, 'lost', 1, 1, 100, 1),
                      (2, '{"command": ["b"]}', 'p', 'u', 0, 'queued', 0, 1, 200, 0);
               INSERT INTO attempts (job_id, n, token, agent, gpus, state, lease_until_ns, assigned_ns,
                                     finished_ns)
               VALUES (1, 1, 't1', 'h', '["GPU-1"]', 'lost', 0, 110, 150);"#,
        )
        .unwrap();
    }
    let q = Queue::open(&path).unwrap();
    let j = q.get(JobId(1)).unwrap();
    assert_eq!(j.finished_ns, Some(150), "the attempt's end");
    assert!(j.gpu_indices.is_empty());
    let tagged = q
        .page(
            &JobFilter {
                tag: Some("old".into()),
                ..Default::default()
            },
            JobOrder::Finished,
            None,
            10,
        )
        .unwrap();
    assert_eq!(tagged.jobs.len(), 1);
    assert_eq!(q.get(JobId(2)).unwrap().finished_ns, None);
}

#[test]
fn gpu_holdings_cover_live_attempts_and_outlive_retention() {
    use crate::usage::Holder;
    let (_d, q) = queue();
    let spec2 = spec(
        r#"{"command": ["t"], "project": "detr", "tags": ["b", "a", "b"], "gpus": {"count": 2}}"#,
    );
    let done = q.submit(&spec2).unwrap();
    let a = q
        .assign(done, "vm", &["GPU-1".into(), "GPU-2".into()], 60 * SEC)
        .unwrap();
    q.started(&a.token, None).unwrap();
    q.finish(&a.token, Some(0), None).unwrap();
    let live = q.submit(&spec2).unwrap();
    q.assign(live, "vm", &["GPU-3".into()], 60 * SEC).unwrap();
    let cpu = q.submit(&spec(r#"{"command": ["c"]}"#)).unwrap();
    run(&q, cpu, 0);

    let now = crate::db::now_ns() + SEC;
    let mut before = q.holdings(0, i64::MAX, now).unwrap();
    before.sort_by(|a, b| a.gpu.cmp(&b.gpu));
    assert_eq!(
        before
            .iter()
            .map(|h| (h.gpu.as_str(), &h.holder))
            .collect::<Vec<_>>(),
        vec![
            (
                "GPU-1",
                &Holder::Job {
                    job: done.0 as u64,
                    attempt: 1
                }
            ),
            (
                "GPU-2",
                &Holder::Job {
                    job: done.0 as u64,
                    attempt: 1
                }
            ),
            (
                "GPU-3",
                &Holder::Job {
                    job: live.0 as u64,
                    attempt: 1
                }
            ),
        ]
    );
    assert_eq!(before[0].tags, vec!["a", "b"]);
    assert_eq!(
        (before[0].host.as_str(), before[0].project.as_str()),
        ("vm", "detr")
    );
    assert!(before[0].end_ms >= before[0].start_ms);
    // A held GPU counts to now.
    assert_eq!(before[2].end_ms, now / 1_000_000);
    // A range that ends before anything was assigned has nothing.
    assert!(q.holdings(0, 1, now).unwrap().is_empty());

    // Retention deletes the finished jobs; their holdings stay, unchanged.
    let gone = q.purge_finished(Some(0), None, 10).unwrap();
    assert!(gone.contains(&done));
    let mut after = q.holdings(0, i64::MAX, now).unwrap();
    after.sort_by(|a, b| a.gpu.cmp(&b.gpu));
    assert_eq!(after, before);
}

#[test]
fn tags_change_after_submission_everywhere_even_after_retention() {
    let (_d, q) = queue();
    let id = q
        .submit(&spec(
            r#"{"command": ["t"], "tags": ["a"], "gpus": {"count": 1}}"#,
        ))
        .unwrap();
    let a = q.assign(id, "vm", &["GPU-1".into()], 60 * SEC).unwrap();
    q.started(&a.token, None).unwrap();
    q.finish(&a.token, Some(0), None).unwrap();
    let tags = q
        .tag(id, &["ignore-usage".into(), "a".into()], &[])
        .unwrap();
    assert_eq!(tags, vec!["a", "ignore-usage"]);
    assert_eq!(q.get(id).unwrap().spec.tags, tags);
    let page = q
        .page(
            &JobFilter {
                tag: Some("ignore-usage".into()),
                ..Default::default()
            },
            JobOrder::Queue,
            None,
            10,
        )
        .unwrap();
    assert_eq!(page.jobs.len(), 1);
    // Retention deletes the job; the ledger keeps its holdings, and tags.
    q.purge_finished(Some(0), None, 10).unwrap();
    let now = crate::db::now_ns();
    assert_eq!(q.holdings(0, i64::MAX, now).unwrap()[0].tags, tags);
    let tags = q.tag(id, &[], &["ignore-usage".into()]).unwrap();
    assert_eq!(tags, vec!["a"]);
    assert_eq!(q.holdings(0, i64::MAX, now).unwrap()[0].tags, vec!["a"]);
    // Bad tags and unknown jobs are refused.
    let e = q
        .tag(id, &["has space".into()], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tags") && e.contains("has space"), "{e}");
    assert!(matches!(
        q.tag(JobId(999), &["x".into()], &[]),
        Err(QueueError::UnknownJob(_))
    ));
}

#[test]
fn states_travel_and_are_stored_under_their_names() {
    for s in JobState::ALL {
        let wire = serde_json::to_string(&s).unwrap();
        assert_eq!(wire, format!("\"{}\"", s.as_str()));
        assert_eq!(serde_json::from_str::<JobState>(&wire).unwrap(), s);
        assert_eq!(JobState::from_name(s.as_str()), Some(s));
    }
    for s in AttemptState::ALL {
        let wire = serde_json::to_string(&s).unwrap();
        assert_eq!(wire, format!("\"{}\"", s.as_str()));
        assert_eq!(serde_json::from_str::<AttemptState>(&wire).unwrap(), s);
        assert_eq!(AttemptState::from_name(s.as_str()), Some(s));
    }
    // what the attempts table holds reads back as the enum
    let (_d, q) = queue();
    let id = q.submit(&spec(r#"{"command": ["true"]}"#)).unwrap();
    let a = q.assign(id, "a1", &[], 60 * SEC).unwrap();
    assert_eq!(q.attempts(id).unwrap()[0].state, AttemptState::Assigned);
    q.started(&a.token, None).unwrap();
    assert!(q.active().unwrap()[0].running);
    q.finish(&a.token, Some(0), None).unwrap();
    let at = &q.attempts(id).unwrap()[0];
    assert_eq!(at.state, AttemptState::Succeeded);
    assert!(at.state.is_terminal());
    assert_eq!(
        serde_json::to_value(at).unwrap()["state"],
        serde_json::json!("succeeded")
    );
}
