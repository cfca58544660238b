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
        q.started("not-a-token"),
        Err(QueueError::StaleAttempt)
    ));
    q.started(&a.token).unwrap();
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
    q.started(&a1.token).unwrap();
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
    q.started(&a2.token).unwrap();
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
    q.started(&b.token).unwrap();
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
    q.started(&token).unwrap();
    assert_eq!(
        q.finish(&token, Some(0), None).unwrap(),
        JobState::Succeeded
    );
}
