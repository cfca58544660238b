//! Reconciling the queue's holdings with the GPUs that wandb runs claim, so
//! that every GPU-second is counted once.
//!
//! A job's [`Holding`] is the scheduler's truth: the GPU was assigned to the
//! attempt from assignment to release. A run's holding is inferred from its
//! system metrics (`wandb::usage`). [`reconcile`] decides, for each run
//! holding:
//!
//! - **linked**: the run was produced by an attempt — same host, same GPU
//!   (by UUID), and the run's span inside the attempt's (with
//!   [`LINK_SLACK_MS`] either side). It is not counted again; the attempt
//!   already is. One [`Link`] per (job, attempt, run).
//! - otherwise it is counted, minus any time its GPU was already claimed:
//!   by a job (jobs always keep their time) or by a run that started
//!   earlier (ties: the smaller run id). Each such overlap is a
//!   [`Conflict`] — `wandb.init` twice in one process, or a run started by
//!   hand on a GPU the queue had given to a job — and the later claimant's
//!   holding is trimmed (possibly into several pieces) so that the overlap
//!   is counted once, for the claimant that keeps it.
//!
//! Pure: no I/O, no clock. Job holdings name the agent as their host; the
//! caller maps agent names to host names (`host_of_agent`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Holder, Holding};

/// How far (ms) a run may start before its attempt's assignment, or end
/// after its release, and still be the attempt's: clock skew between the
/// daemon and the GPU host and the rounding of wandb's times.
pub const LINK_SLACK_MS: i64 = 5_000;

/// A run that an attempt produced: counted once, as the attempt.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The job.
    pub job: u64,
    /// Its attempt.
    pub attempt: u32,
    /// The wandb run's id.
    pub run: String,
}

/// Two claims on one GPU at the same time. The first claimant keeps
/// `[from_ms, to_ms)` and is counted for it; the second is not (its holding
/// was trimmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The GPU (UUID, or `host:index` where the run's metadata had none).
    pub gpu: String,
    /// The host name.
    pub host: String,
    /// Who kept the time, then who lost it.
    pub claimants: Vec<Holder>,
    /// The overlap, ms since the epoch...
    pub from_ms: i64,
    /// ...to (exclusive).
    pub to_ms: i64,
}

/// What [`reconcile`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled<T> {
    /// Run holdings to account, trimmed of time another claimant keeps;
    /// each carries the payload (its samples) it came with. Sorted by start.
    pub runs_to_count: Vec<(Holding, T)>,
    /// Runs counted as the attempt that produced them, sorted.
    pub links: Vec<Link>,
    /// Overlapping claims, by host, GPU and time.
    pub conflicts: Vec<Conflict>,
}

/// Host names compared loosely: case-insensitive, and by the first label
/// (`gpu1` is `GPU1.lab.example`); IP addresses whole.
fn host_key(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.parse::<IpAddr>().is_ok() {
        return h;
    }
    match h.split_once('.') {
        Some((first, _)) if !first.is_empty() => first.to_string(),
        _ => h,
    }
}

/// Which GPU a holding is on: (host key, GPU id lowercased).
fn gpu_key(host: &str, gpu: &str) -> (String, String) {
    (host_key(host), gpu.trim().to_ascii_lowercase())
}

/// A stretch of a GPU that a claimant keeps.
struct Kept {
    from: i64,
    to: i64,
    holder: Holder,
}

/// Links runs to the attempts that produced them, and trims what remains
/// where two claims overlap on one GPU (see the module doc for the rules).
///
/// `jobs` are the queue's holdings (host = agent name), `runs` the run
/// holdings with their payload (normally the GPU's samples, handed back
/// unchanged with each kept piece). `host_of_agent` maps an agent name to
/// its host name; `None` means the agent name is taken as the host name.
pub fn reconcile<T: Clone>(
    jobs: &[Holding],
    runs: Vec<(Holding, T)>,
    host_of_agent: &dyn Fn(&str) -> Option<String>,
) -> Reconciled<T> {
    // Without runs there is nothing to link, trim or flag (the scheduler
    // never gives one GPU to two attempts at once).
    if runs.is_empty() {
        return Reconciled {
            runs_to_count: Vec::new(),
            links: Vec::new(),
            conflicts: Vec::new(),
        };
    }
    let job_host = |h: &Holding| host_of_agent(&h.host).unwrap_or_else(|| h.host.clone());
    let jobs: Vec<(&Holding, String, (String, String))> = jobs
        .iter()
        .filter(|j| matches!(j.holder, Holder::Job { .. }))
        .map(|j| {
            let host = job_host(j);
            let key = gpu_key(&host, &j.gpu);
            (j, host, key)
        })
        .collect();

    // 1. Links: a run holding inside an attempt's span on the attempt's GPU.
    let mut links = BTreeSet::new();
    let mut unlinked = Vec::new();
    for (r, payload) in runs {
        let key = gpu_key(&r.host, &r.gpu);
        let producer = jobs
            .iter()
            .filter(|(j, _, k)| {
                *k == key
                    && r.start_ms >= j.start_ms - LINK_SLACK_MS
                    && r.end_ms <= j.end_ms + LINK_SLACK_MS
            })
            .max_by_key(|(j, _, _)| r.end_ms.min(j.end_ms) - r.start_ms.max(j.start_ms));
        if let (Some((j, _, _)), Holder::Run { run }) = (producer, &r.holder) {
            if let Holder::Job { job, attempt } = j.holder {
                links.insert(Link {
                    job,
                    attempt,
                    run: run.clone(),
                });
                continue;
            }
        }
        unlinked.push((r, payload));
    }

    // 2. Claims per GPU: jobs keep theirs; runs in start order take what is left.
    let mut kept: BTreeMap<(String, String), (String, Vec<Kept>)> = BTreeMap::new();
    for (j, host, key) in &jobs {
        if j.start_ms < j.end_ms {
            kept.entry(key.clone())
                .or_insert_with(|| (host.clone(), Vec::new()))
                .1
                .push(Kept {
                    from: j.start_ms,
                    to: j.end_ms,
                    holder: j.holder.clone(),
                });
        }
    }
    unlinked.sort_by(|(a, _), (b, _)| {
        (a.start_ms, &a.holder, a.end_ms, &a.gpu).cmp(&(b.start_ms, &b.holder, b.end_ms, &b.gpu))
    });
    let mut runs_to_count = Vec::new();
    let mut conflicts: Vec<Conflict> = Vec::new();
    for (r, payload) in unlinked {
        if r.start_ms >= r.end_ms {
            continue;
        }
        let key = gpu_key(&r.host, &r.gpu);
        let (host, claims) = kept
            .entry(key)
            .or_insert_with(|| (r.host.clone(), Vec::new()));
        // The claims this one overlaps, in time order.
        let mut over: Vec<(i64, i64, &Holder)> = claims
            .iter()
            .filter(|k| k.from < r.end_ms && k.to > r.start_ms)
            .map(|k| (k.from.max(r.start_ms), k.to.min(r.end_ms), &k.holder))
            .collect();
        over.sort_by_key(|(a, b, _)| (*a, *b));
        for (a, b, holder) in &over {
            let claimants = vec![(*holder).clone(), r.holder.clone()];
            match conflicts.last_mut() {
                Some(c)
                    if c.gpu == r.gpu
                        && c.host == *host
                        && c.claimants == claimants
                        && c.to_ms >= *a =>
                {
                    c.to_ms = c.to_ms.max(*b);
                }
                _ => conflicts.push(Conflict {
                    gpu: r.gpu.clone(),
                    host: host.clone(),
                    claimants,
                    from_ms: *a,
                    to_ms: *b,
                }),
            }
        }
        // What is left: [start, end) minus the union of the overlaps.
        let mut pieces = Vec::new();
        let mut t = r.start_ms;
        for (a, b, _) in &over {
            if *a > t {
                pieces.push((t, *a));
            }
            t = t.max(*b);
        }
        if t < r.end_ms {
            pieces.push((t, r.end_ms));
        }
        for (a, b) in pieces {
            claims.push(Kept {
                from: a,
                to: b,
                holder: r.holder.clone(),
            });
            let mut h = r.clone();
            h.start_ms = a;
            h.end_ms = b;
            runs_to_count.push((h, payload.clone()));
        }
    }
    runs_to_count.sort_by(|(a, _), (b, _)| (a.start_ms, &a.holder).cmp(&(b.start_ms, &b.holder)));
    conflicts.sort_by(|a, b| {
        (&a.host, &a.gpu, a.from_ms, a.to_ms).cmp(&(&b.host, &b.gpu, b.from_ms, b.to_ms))
    });
    Reconciled {
        runs_to_count,
        links: links.into_iter().collect(),
        conflicts,
    }
}

/// Whose links [`links_of`] answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOf<'a> {
    /// The runs a job's attempts produced (a job page).
    Job(u64),
    /// The job attempts that produced a run (a run page).
    Run(&'a str),
}

/// The links that concern one job or one run, as [`reconcile`] decides them
/// (and `GET /usage` reports them) over any range that covers the job's
/// attempts or the run: a link depends only on the run's holding and the
/// job holdings on its GPU, so `jobs` and `runs` need only be the holdings
/// that overlap that time. Sorted by job, attempt and run.
pub fn links_of(
    jobs: &[Holding],
    runs: Vec<Holding>,
    host_of_agent: &dyn Fn(&str) -> Option<String>,
    of: LinkOf<'_>,
) -> Vec<Link> {
    let runs: Vec<(Holding, ())> = runs
        .into_iter()
        .filter(|r| match (of, &r.holder) {
            (LinkOf::Run(id), Holder::Run { run }) => run == id,
            (LinkOf::Job(_), _) => true,
            (LinkOf::Run(_), Holder::Job { .. }) => false,
        })
        .map(|r| (r, ()))
        .collect();
    reconcile(jobs, runs, host_of_agent)
        .links
        .into_iter()
        .filter(|l| match of {
            LinkOf::Job(job) => l.job == job,
            LinkOf::Run(run) => l.run == run,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    const T0: i64 = 1_796_000_000_000;

    fn held(holder: Holder, host: &str, gpu: &str, from_s: i64, to_s: i64) -> Holding {
        Holding {
            holder,
            host: host.into(),
            gpu: gpu.into(),
            model: "H100".into(),
            user: "ana".into(),
            project: "p".into(),
            tags: Vec::new(),
            start_ms: T0 + from_s * S,
            end_ms: T0 + to_s * S,
        }
    }

    fn job(job: u64, attempt: u32, agent: &str, gpu: &str, from_s: i64, to_s: i64) -> Holding {
        held(Holder::Job { job, attempt }, agent, gpu, from_s, to_s)
    }

    fn run(id: &str, host: &str, gpu: &str, from_s: i64, to_s: i64) -> (Holding, ()) {
        (
            held(Holder::Run { run: id.into() }, host, gpu, from_s, to_s),
            (),
        )
    }

    fn spans(r: &Reconciled<()>) -> Vec<(String, i64, i64)> {
        r.runs_to_count
            .iter()
            .map(|(h, _)| match &h.holder {
                Holder::Run { run } => (run.clone(), (h.start_ms - T0) / S, (h.end_ms - T0) / S),
                Holder::Job { .. } => unreachable!("only runs are returned"),
            })
            .collect()
    }

    /// Agent `a1` runs on host `gpu1`.
    fn agents(name: &str) -> Option<String> {
        (name == "a1").then(|| "gpu1".to_string())
    }

    #[test]
    fn a_run_inside_its_attempt_on_its_gpu_is_linked_and_not_counted_again() {
        let jobs = [
            job(7, 2, "a1", "GPU-0", 0, 600),
            job(7, 2, "a1", "GPU-1", 0, 600),
        ];
        // One run on both GPUs of the attempt; it started 1 s before the
        // daemon's assignment time (clock skew) and stopped before release.
        let runs = vec![
            run("r1", "GPU1.lab.example", "gpu-0", -1, 590),
            run("r1", "gpu1", "GPU-1", -1, 590),
        ];
        let r = reconcile(&jobs, runs, &agents);
        assert!(r.runs_to_count.is_empty(), "{:?}", spans(&r));
        assert_eq!(
            r.links,
            vec![Link {
                job: 7,
                attempt: 2,
                run: "r1".into()
            }]
        );
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn a_run_on_another_host_or_gpu_or_outside_the_window_is_not_linked() {
        let jobs = [job(7, 1, "a1", "GPU-0", 100, 700)];
        let runs = vec![
            // Another host with the same (fake) UUID: not the job's, no conflict.
            run("other-host", "gpu2", "GPU-0", 100, 600),
            // Started 10 s before the assignment: not produced by it.
            run("too-early", "gpu1", "GPU-0", 90, 300),
            // Outlived the release by 60 s.
            run("too-late", "gpu1", "GPU-0", 650, 760),
        ];
        let r = reconcile(&jobs, runs, &agents);
        assert!(r.links.is_empty());
        // The unlinked runs on the job's GPU lose the job's time to it.
        assert_eq!(
            spans(&r),
            vec![
                ("too-early".to_string(), 90, 100),
                ("other-host".to_string(), 100, 600),
                ("too-late".to_string(), 700, 760),
            ]
        );
        let job = Holder::Job { job: 7, attempt: 1 };
        let c: Vec<_> = r
            .conflicts
            .iter()
            .map(|c| {
                (
                    c.host.as_str(),
                    c.claimants.clone(),
                    (c.from_ms - T0) / S,
                    (c.to_ms - T0) / S,
                )
            })
            .collect();
        assert_eq!(
            c,
            vec![
                (
                    "gpu1",
                    vec![
                        job.clone(),
                        Holder::Run {
                            run: "too-early".into()
                        }
                    ],
                    100,
                    300
                ),
                (
                    "gpu1",
                    vec![
                        job,
                        Holder::Run {
                            run: "too-late".into()
                        }
                    ],
                    650,
                    700
                ),
            ]
        );
    }

    #[test]
    fn an_agent_with_no_known_host_is_compared_by_its_name() {
        let jobs = [job(1, 1, "gpu9", "GPU-0", 0, 100)];
        let r = reconcile(&jobs, vec![run("r", "gpu9", "GPU-0", 3, 90)], &agents);
        assert_eq!(r.links.len(), 1);
    }

    #[test]
    fn wandb_init_twice_on_one_gpu_is_flagged_and_the_overlap_counted_once() {
        // A from 0 to 180 s, B (the same process's second init) from 60 to 240 s.
        let runs = vec![
            run("b", "gpu1", "GPU-0", 60, 240),
            run("a", "gpu1", "GPU-0", 0, 180),
        ];
        let r = reconcile(&[], runs, &agents);
        assert_eq!(
            spans(&r),
            vec![("a".to_string(), 0, 180), ("b".to_string(), 180, 240)]
        );
        assert_eq!(
            r.conflicts,
            vec![Conflict {
                gpu: "GPU-0".into(),
                host: "gpu1".into(),
                claimants: vec![
                    Holder::Run { run: "a".into() },
                    Holder::Run { run: "b".into() }
                ],
                from_ms: T0 + 60 * S,
                to_ms: T0 + 180 * S,
            }]
        );
        let total: i64 = r
            .runs_to_count
            .iter()
            .map(|(h, _)| h.end_ms - h.start_ms)
            .sum();
        assert_eq!(total, 240 * S);
    }

    #[test]
    fn a_later_run_inside_an_earlier_one_counts_nothing_and_a_job_splits_a_run() {
        let jobs = [job(3, 1, "a1", "GPU-0", 400, 500)];
        let runs = vec![
            run("long", "gpu1", "GPU-0", 0, 1000),
            run("inner", "gpu1", "GPU-0", 100, 200),
            // Other GPUs are not involved.
            run("elsewhere", "gpu1", "GPU-1", 100, 200),
        ];
        let r = reconcile(&jobs, runs, &agents);
        assert_eq!(
            spans(&r),
            vec![
                ("long".to_string(), 0, 400),
                ("elsewhere".to_string(), 100, 200),
                ("long".to_string(), 500, 1000),
            ]
        );
        let who: Vec<(Vec<Holder>, i64, i64)> = r
            .conflicts
            .iter()
            .map(|c| {
                (
                    c.claimants.clone(),
                    (c.from_ms - T0) / S,
                    (c.to_ms - T0) / S,
                )
            })
            .collect();
        let long = Holder::Run { run: "long".into() };
        assert_eq!(
            who,
            vec![
                (
                    vec![
                        long.clone(),
                        Holder::Run {
                            run: "inner".into()
                        }
                    ],
                    100,
                    200
                ),
                (vec![Holder::Job { job: 3, attempt: 1 }, long], 400, 500),
            ]
        );
    }

    #[test]
    fn runs_linked_to_one_attempt_are_all_counted_as_it() {
        // Two ranks of one job, each with its own wandb run on its own GPU,
        // and a second run the job started later on GPU 0.
        let jobs = [
            job(5, 1, "a1", "GPU-0", 0, 1000),
            job(5, 1, "a1", "GPU-1", 0, 1000),
        ];
        let runs = vec![
            run("rank0", "gpu1", "GPU-0", 10, 500),
            run("rank1", "gpu1", "GPU-1", 10, 500),
            run("eval", "gpu1", "GPU-0", 400, 990),
        ];
        let r = reconcile(&jobs, runs, &agents);
        assert!(r.runs_to_count.is_empty());
        assert!(r.conflicts.is_empty());
        let linked: Vec<&str> = r.links.iter().map(|l| l.run.as_str()).collect();
        assert_eq!(linked, vec!["eval", "rank0", "rank1"]);
    }

    #[test]
    fn links_of_a_job_and_of_a_run_are_those_reconcile_reports() {
        let jobs = [
            job(7, 1, "a1", "GPU-0", 0, 100),
            job(7, 2, "a1", "GPU-0", 200, 400),
            job(8, 1, "a1", "GPU-1", 0, 400),
        ];
        let runs = || {
            vec![
                // attempt 2 of job 7, on its GPU
                held(Holder::Run { run: "r7".into() }, "gpu1", "GPU-0", 210, 390),
                // job 8's
                held(Holder::Run { run: "r8".into() }, "gpu1", "GPU-1", 10, 20),
                // another host's GPU-0: nobody's
                held(Holder::Run { run: "far".into() }, "gpu2", "GPU-0", 210, 390),
                // spans two attempts of job 7 (and the gap): nobody's
                held(Holder::Run { run: "long".into() }, "gpu1", "GPU-0", 50, 300),
            ]
        };
        let of_job = |j| links_of(&jobs, runs(), &agents, LinkOf::Job(j));
        let link = |job, attempt, run: &str| Link {
            job,
            attempt,
            run: run.into(),
        };
        assert_eq!(of_job(7), vec![link(7, 2, "r7")]);
        assert_eq!(of_job(8), vec![link(8, 1, "r8")]);
        assert!(of_job(9).is_empty());
        let of_run = |r| links_of(&jobs, runs(), &agents, LinkOf::Run(r));
        assert_eq!(of_run("r7"), vec![link(7, 2, "r7")]);
        assert!(of_run("far").is_empty());
        assert!(of_run("long").is_empty());
        assert!(of_run("nope").is_empty());
        // The same links as the whole reconciliation.
        let all = reconcile(
            &jobs,
            runs().into_iter().map(|r| (r, ())).collect(),
            &agents,
        );
        assert_eq!(all.links, vec![link(7, 2, "r7"), link(8, 1, "r8")]);
    }
}
