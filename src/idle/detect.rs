//! Idle detection for one attempt: a [`Tracker`] is fed the attempt's
//! samples in time order ([`Observation`]: its GPUs' utilization and its
//! process group's CPU and I/O rates) and answers, per sample, whether to
//! warn or to act ([`Decision`]). The sample's time is the clock.
//!
//! The rules (`docs/idle-policy.md`):
//! - a GPU is *used* at or above the threshold; the attempt's GPUs are
//!   *idle* in a sample when every one is under it (a GPU whose
//!   utilization is unknown is never idle);
//! - detection *arms* at the first sample in which a GPU is used, or at
//!   the start plus the grace, whichever comes first; before, nothing is
//!   idle;
//! - a sample in which the job's processes are *busy* (CPU at least
//!   `busy_cpu_pct` of one core, or I/O at least `busy_io_bytes_per_s`)
//!   suspends detection: the idle run is broken, as by a used GPU, so a
//!   job loading data starts a whole window again afterwards;
//! - an idle run starting at `S` (its first idle sample) warns at
//!   `S + window - warn_before` (for `stop`/`requeue`; at once when the
//!   lead is the whole window or more) and acts at `S + window`; `notify`
//!   acts (sends `idle_warned`) once per run.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Action, Policy};

/// The most samples an [`Evidence`] keeps: beyond, every other one is
/// dropped (the first and the latest stay), so a long window stays small
/// and its recent samples are the densest.
pub const MAX_EVIDENCE: usize = 240;

/// One sample of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// When (ms since the epoch, the daemon's clock).
    pub t_ms: i64,
    /// Each of the attempt's GPUs' utilization, % (`None`: unknown).
    pub util_pct: Vec<Option<u32>>,
    /// The attempt's processes' CPU use over the sample's interval, % of
    /// one core (`None`: not reported).
    pub cpu_pct: Option<f64>,
    /// Their reads and writes, bytes per second (`None`: not reported).
    pub io_bytes_per_s: Option<u64>,
}

/// One sample as the evidence keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceSample {
    /// When (ms since the epoch).
    pub t_ms: i64,
    /// The highest utilization among the attempt's GPUs, % (`None`:
    /// one was unknown).
    pub max_util_pct: Option<u32>,
    /// CPU, % of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    /// I/O, bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_bytes_per_s: Option<u64>,
}

/// Why detection armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Armed {
    /// A GPU was used.
    FirstUse,
    /// The start grace ran out first.
    Grace,
}

/// Where detection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not armed yet: waiting for a first use or the end of the grace.
    Waiting,
    /// Armed; the GPUs are in use (or a utilization is unknown).
    Active,
    /// Armed; the job's processes are busy (reading): suspended.
    Busy,
    /// Armed; idle since [`Status::idle_since_ms`].
    Idle,
    /// The action was taken (`notify` until the GPUs are used again; the
    /// attempt ends for `stop`/`requeue`).
    Acted,
}

/// What a tracker says now: for `ps`, the job page and the GPUs page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The phase.
    pub phase: Phase,
    /// The policy's action.
    pub action: Action,
    /// The policy's window, ms.
    pub window_ms: i64,
    /// The threshold, %.
    pub threshold_pct: u8,
    /// When the grace ends (detection arms at the latest), ms.
    pub arms_at_ms: i64,
    /// When the idle run began, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<i64>,
    /// When the warning goes (went) out, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_at_ms: Option<i64>,
    /// When the action will be (was) taken, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act_at_ms: Option<i64>,
    /// The latest sample's time, ms.
    pub seen_ms: i64,
}

impl Status {
    /// One line for people at `now_ms`: "idle 12 min; stop in 18 min",
    /// "0 % GPU but busy reading: idle detection suspended"; `None` while
    /// the GPUs are in use or detection waits to arm.
    pub fn describe(&self, now_ms: i64) -> Option<String> {
        let idle_for = |s: i64| super::human_ms(now_ms - s);
        match (self.phase, self.idle_since_ms) {
            (Phase::Busy, _) => Some("GPUs idle but busy reading: idle detection suspended".into()),
            (Phase::Idle, Some(s)) => {
                let act = self.act_at_ms.unwrap_or(s + self.window_ms);
                let what = match self.action {
                    Action::Notify => "notify",
                    Action::Stop => "stop",
                    Action::Requeue => "requeue",
                };
                Some(if act > now_ms {
                    format!(
                        "idle {}; {what} in {}",
                        idle_for(s),
                        super::human_ms(act - now_ms)
                    )
                } else {
                    format!("idle {}; {what} due now", idle_for(s))
                })
            }
            (Phase::Acted, Some(s)) => Some(match self.action {
                Action::Notify => format!("idle {}; owner notified", idle_for(s)),
                Action::Stop => "stopped for idling".into(),
                Action::Requeue => "requeued for idling".into(),
            }),
            _ => None,
        }
    }
}

/// The record of a decision, kept on the attempt: the policy, why
/// detection armed, the idle run and its samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// `warned`, `notified`, `stopped` or `requeued`.
    pub decision: String,
    /// When it was decided (the sample's time), ms.
    pub at_ms: i64,
    /// The policy applied.
    pub policy: Policy,
    /// When and why detection armed.
    pub armed_at_ms: i64,
    /// Why it armed.
    pub armed_by: Armed,
    /// The idle run's first sample, ms.
    pub idle_since_ms: i64,
    /// The run's samples (at most [`MAX_EVIDENCE`]; older ones thinned).
    pub samples: Vec<EvidenceSample>,
}

/// What to do after a sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Announce the coming stop or requeue (`idle_warned`).
    Warn {
        /// When it will happen, ms.
        act_at_ms: i64,
        /// The evidence so far.
        evidence: Evidence,
    },
    /// Take the action (`notify`: `idle_warned`; `stop`, `requeue`: end
    /// the attempt, `idle_stopped`).
    Act {
        /// The action.
        action: Action,
        /// The evidence.
        evidence: Evidence,
    },
}

/// Follows one attempt.
#[derive(Debug, Clone)]
pub struct Tracker {
    policy: Policy,
    start_ms: i64,
    armed: Option<(i64, Armed)>,
    idle_since: Option<i64>,
    warned: bool,
    acted: bool,
    phase: Phase,
    run: VecDeque<EvidenceSample>,
    last_ms: i64,
}

impl Tracker {
    /// A tracker for an attempt that started at `start_ms` (its process
    /// start; the grace counts from it).
    pub fn new(policy: Policy, start_ms: i64) -> Tracker {
        Tracker {
            policy,
            start_ms,
            armed: None,
            idle_since: None,
            warned: false,
            acted: false,
            phase: Phase::Waiting,
            run: VecDeque::new(),
            last_ms: start_ms,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn warn_at(&self, since: i64) -> i64 {
        let lead = self.policy.warn_before_ms.clamp(0, self.policy.window_ms);
        since + self.policy.window_ms - lead
    }

    fn act_at(&self, since: i64) -> i64 {
        since + self.policy.window_ms
    }

    /// Where detection stands after the latest sample.
    pub fn status(&self) -> Status {
        let (warn_at_ms, act_at_ms) = match self.idle_since {
            Some(s) => (
                self.policy.action.ends_attempt().then(|| self.warn_at(s)),
                Some(self.act_at(s)),
            ),
            None => (None, None),
        };
        Status {
            phase: self.phase,
            action: self.policy.action,
            window_ms: self.policy.window_ms,
            threshold_pct: self.policy.threshold_pct,
            arms_at_ms: self.start_ms + self.policy.grace_ms,
            idle_since_ms: self.idle_since,
            warn_at_ms,
            act_at_ms,
            seen_ms: self.last_ms,
        }
    }

    fn busy(&self, o: &Observation) -> bool {
        o.cpu_pct
            .is_some_and(|c| self.policy.busy_cpu_pct > 0.0 && c >= self.policy.busy_cpu_pct)
            || o.io_bytes_per_s.is_some_and(|b| {
                self.policy.busy_io_bytes_per_s > 0 && b >= self.policy.busy_io_bytes_per_s
            })
    }

    fn reset_run(&mut self) {
        self.idle_since = None;
        self.warned = false;
        self.acted = false;
        self.run.clear();
    }

    fn keep(&mut self, s: EvidenceSample) {
        self.run.push_back(s);
        if self.run.len() > MAX_EVIDENCE {
            // Every other sample goes (the first and the latest stay).
            let last = self.run.pop_back();
            let kept: VecDeque<_> = self.run.drain(..).step_by(2).collect();
            self.run = kept;
            self.run.extend(last);
        }
    }

    fn evidence(&self, decision: &str, at_ms: i64) -> Evidence {
        let (armed_at_ms, armed_by) = self.armed.unwrap_or((at_ms, Armed::Grace));
        Evidence {
            decision: decision.into(),
            at_ms,
            policy: self.policy,
            armed_at_ms,
            armed_by,
            idle_since_ms: self.idle_since.unwrap_or(at_ms),
            samples: self.run.iter().cloned().collect(),
        }
    }

    /// Take one sample (in time order; an older one than the latest is
    /// ignored) and say what to do.
    pub fn observe(&mut self, o: &Observation) -> Option<Decision> {
        if o.t_ms < self.last_ms || (self.acted && self.policy.action.ends_attempt()) {
            return None;
        }
        self.last_ms = o.t_ms;
        let known: Option<Vec<u32>> = o.util_pct.iter().copied().collect();
        let max_util = known.as_ref().map(|u| u.iter().copied().max().unwrap_or(0));
        let threshold = u32::from(self.policy.threshold_pct);
        let used = max_util.is_some_and(|m| m >= threshold);
        if self.armed.is_none() {
            if used {
                self.armed = Some((o.t_ms, Armed::FirstUse));
            } else if o.t_ms >= self.start_ms + self.policy.grace_ms {
                self.armed = Some((self.start_ms + self.policy.grace_ms, Armed::Grace));
            } else {
                self.phase = Phase::Waiting;
                return None;
            }
        }
        if used || max_util.is_none() {
            self.reset_run();
            self.phase = Phase::Active;
            return None;
        }
        if self.busy(o) {
            self.reset_run();
            self.phase = Phase::Busy;
            return None;
        }
        let since = *self.idle_since.get_or_insert(o.t_ms);
        self.keep(EvidenceSample {
            t_ms: o.t_ms,
            max_util_pct: max_util,
            cpu_pct: o.cpu_pct,
            io_bytes_per_s: o.io_bytes_per_s,
        });
        if self.acted {
            return None;
        }
        self.phase = Phase::Idle;
        let act_at = self.act_at(since);
        if o.t_ms >= act_at {
            self.acted = true;
            self.phase = Phase::Acted;
            let action = self.policy.action;
            let decision = match action {
                Action::Notify => "notified",
                Action::Stop => "stopped",
                Action::Requeue => "requeued",
            };
            return Some(Decision::Act {
                action,
                evidence: self.evidence(decision, o.t_ms),
            });
        }
        if self.policy.action.ends_attempt() && !self.warned && o.t_ms >= self.warn_at(since) {
            self.warned = true;
            return Some(Decision::Warn {
                act_at_ms: act_at,
                evidence: self.evidence("warned", o.t_ms),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(action: Action) -> Policy {
        Policy {
            window_ms: 10_000,
            threshold_pct: 5,
            action,
            grace_ms: 30_000,
            warn_before_ms: 4_000,
            busy_cpu_pct: 50.0,
            busy_io_bytes_per_s: 1 << 20,
        }
    }

    fn obs(t: i64, utils: &[u32]) -> Observation {
        Observation {
            t_ms: t,
            util_pct: utils.iter().map(|u| Some(*u)).collect(),
            cpu_pct: Some(1.0),
            io_bytes_per_s: Some(0),
        }
    }

    /// Feed one sample per second from `from` to `to` (inclusive) and
    /// return the decisions with their times.
    fn run(
        t: &mut Tracker,
        from: i64,
        to: i64,
        f: impl Fn(i64) -> Observation,
    ) -> Vec<(i64, &'static str)> {
        let mut out = Vec::new();
        let mut s = from;
        while s <= to {
            match t.observe(&f(s)) {
                Some(Decision::Warn { .. }) => out.push((s, "warn")),
                Some(Decision::Act { action, .. }) => out.push((s, action.as_str())),
                None => {}
            }
            s += 1000;
        }
        out
    }

    #[test]
    fn idle_after_use_warns_then_stops_at_the_window_to_the_millisecond() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        // Used from 0 to 5 s, idle from 6 s: warn at 6 + 10 - 4 = 12 s,
        // stop at 16 s.
        let d = run(&mut t, 0, 30_000, |s| {
            obs(s, &[if s <= 5_000 { 90 } else { 0 }, 0])
        });
        assert_eq!(d, [(12_000, "warn"), (16_000, "stop")]);
        let st = t.status();
        assert_eq!(st.phase, Phase::Acted);
        assert_eq!(
            (st.idle_since_ms, st.warn_at_ms, st.act_at_ms),
            (Some(6_000), Some(12_000), Some(16_000))
        );
    }

    #[test]
    fn the_status_says_how_long_and_what_comes_when() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        t.observe(&obs(0, &[90]));
        assert_eq!(t.status().describe(0), None);
        t.observe(&obs(1000, &[0]));
        assert_eq!(t.status().describe(4000).unwrap(), "idle 3 s; stop in 7 s");
        assert_eq!(
            t.status().describe(12_000).unwrap(),
            "idle 11 s; stop due now"
        );
        t.observe(&Observation {
            cpu_pct: Some(90.0),
            ..obs(2000, &[0])
        });
        assert!(t.status().describe(2000).unwrap().contains("suspended"));
        let mut t = Tracker::new(policy(Action::Notify), 0);
        t.observe(&obs(0, &[90]));
        t.observe(&obs(1000, &[0]));
        t.observe(&obs(11_000, &[0]));
        assert_eq!(
            t.status().describe(13 * 60_000).unwrap(),
            "idle 12 min; owner notified"
        );
    }

    #[test]
    fn the_decision_carries_its_evidence() {
        let mut t = Tracker::new(policy(Action::Requeue), 0);
        let mut last = None;
        for s in (0..=20_000).step_by(1000) {
            if let Some(d) = t.observe(&obs(s, &[if s < 3000 { 50 } else { 2 }])) {
                last = Some(d);
            }
        }
        let Some(Decision::Act { action, evidence }) = last else {
            panic!("no action")
        };
        assert_eq!(action, Action::Requeue);
        assert_eq!(evidence.decision, "requeued");
        assert_eq!(evidence.armed_by, Armed::FirstUse);
        assert_eq!(evidence.armed_at_ms, 0);
        assert_eq!(evidence.idle_since_ms, 3000);
        assert_eq!(evidence.at_ms, 13_000);
        assert_eq!(evidence.policy, policy(Action::Requeue));
        let times: Vec<i64> = evidence.samples.iter().map(|s| s.t_ms).collect();
        assert_eq!(times, (3000..=13_000).step_by(1000).collect::<Vec<_>>());
        assert!(evidence.samples.iter().all(|s| s.max_util_pct == Some(2)));
        // Serialized as docs/idle-policy.md shows it.
        let j = serde_json::to_value(&evidence).unwrap();
        assert_eq!(j["armed_by"], "first_use");
        assert_eq!(j["policy"]["action"], "requeue");
        assert_eq!(j["samples"][0]["max_util_pct"], 2);
    }

    #[test]
    fn a_job_that_never_uses_its_gpus_arms_after_the_grace() {
        let mut t = Tracker::new(policy(Action::Stop), 100_000);
        // Idle from the start: nothing during the 30 s grace, then a whole
        // window from the grace's end: warn at 136 s, stop at 140 s.
        assert_eq!(t.status().phase, Phase::Waiting);
        let d = run(&mut t, 100_000, 160_000, |s| obs(s, &[0]));
        assert_eq!(d, [(136_000, "warn"), (140_000, "stop")]);
    }

    #[test]
    fn first_use_arms_before_the_grace_ends() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        // Used once at 2 s: armed then, idle from 3 s, stop at 13 s, long
        // before the grace (30 s) would have armed it.
        let d = run(&mut t, 0, 20_000, |s| {
            obs(s, &[if s == 2000 { 6 } else { 4 }])
        });
        assert_eq!(d, [(9_000, "warn"), (13_000, "stop")]);
        // The threshold is "at or above": 5 % is used.
        let mut t = Tracker::new(policy(Action::Stop), 0);
        t.observe(&obs(0, &[5]));
        assert_eq!(t.status().phase, Phase::Active);
    }

    #[test]
    fn one_busy_gpu_of_several_keeps_the_job_active() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        let d = run(&mut t, 0, 60_000, |s| obs(s, &[0, 0, 70, 0]));
        assert!(d.is_empty());
        assert_eq!(t.status().phase, Phase::Active);
    }

    #[test]
    fn loading_data_suspends_detection_by_cpu_or_io() {
        for busy in [
            |s| Observation {
                cpu_pct: Some(95.0),
                ..obs(s, &[0])
            },
            |s| Observation {
                io_bytes_per_s: Some(50 << 20),
                ..obs(s, &[0])
            },
        ] as [fn(i64) -> Observation; 2]
        {
            let mut t = Tracker::new(policy(Action::Stop), 0);
            // Used, then 0 % GPU for a minute while the processes read.
            let d = run(&mut t, 0, 60_000, |s| {
                if s < 2000 {
                    obs(s, &[80])
                } else {
                    busy(s)
                }
            });
            assert!(d.is_empty(), "{d:?}");
            assert_eq!(t.status().phase, Phase::Busy);
            assert_eq!(t.status().idle_since_ms, None);
            // When the reading stops, a whole window starts again.
            let d = run(&mut t, 61_000, 80_000, |s| obs(s, &[0]));
            assert_eq!(d, [(67_000, "warn"), (71_000, "stop")]);
        }
    }

    #[test]
    fn busy_reading_before_arming_does_not_arm() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        t.observe(&Observation {
            cpu_pct: Some(400.0),
            ..obs(1000, &[0])
        });
        assert_eq!(t.status().phase, Phase::Waiting);
    }

    #[test]
    fn use_in_the_window_breaks_the_run_and_warns_again_later() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        // Used at 0, idle 1..=7 s (warned at 7), used at 8 s, idle from 9 s.
        let d = run(&mut t, 0, 40_000, |s| {
            obs(s, &[if s == 0 || s == 8000 { 60 } else { 0 }])
        });
        assert_eq!(d, [(7_000, "warn"), (15_000, "warn"), (19_000, "stop")]);
    }

    #[test]
    fn notify_sends_once_per_idle_run_and_the_job_keeps_running() {
        let mut t = Tracker::new(policy(Action::Notify), 0);
        // No warning ahead for notify: the notification is the action.
        let d = run(&mut t, 0, 40_000, |s| {
            obs(s, &[if s == 0 || s == 25_000 { 60 } else { 0 }])
        });
        assert_eq!(d, [(11_000, "notify"), (36_000, "notify")]);
        let st = t.status();
        assert_eq!(st.phase, Phase::Acted);
        assert_eq!(st.warn_at_ms, None);
    }

    #[test]
    fn an_unknown_utilization_is_never_idle() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        let d = run(&mut t, 0, 60_000, |s| Observation {
            util_pct: vec![Some(0), None],
            ..obs(s, &[])
        });
        assert!(d.is_empty());
    }

    #[test]
    fn a_lead_as_long_as_the_window_warns_at_the_first_idle_sample() {
        let mut p = policy(Action::Stop);
        p.warn_before_ms = 60_000;
        let mut t = Tracker::new(p, 0);
        let d = run(&mut t, 0, 20_000, |s| {
            obs(s, &[if s == 0 { 90 } else { 0 }])
        });
        assert_eq!(d, [(1_000, "warn"), (11_000, "stop")]);
        // No lead: the warning and the stop come with the same sample.
        let mut p = policy(Action::Stop);
        p.warn_before_ms = 0;
        let mut t = Tracker::new(p, 0);
        let d = run(&mut t, 0, 20_000, |s| {
            obs(s, &[if s == 0 { 90 } else { 0 }])
        });
        assert_eq!(d, [(11_000, "stop")]);
    }

    #[test]
    fn samples_out_of_order_and_after_the_stop_are_ignored() {
        let mut t = Tracker::new(policy(Action::Stop), 0);
        run(&mut t, 0, 20_000, |s| {
            obs(s, &[if s == 0 { 90 } else { 0 }])
        });
        assert_eq!(t.status().phase, Phase::Acted);
        assert_eq!(t.observe(&obs(30_000, &[0])), None);
        let mut t = Tracker::new(policy(Action::Stop), 0);
        t.observe(&obs(5000, &[90]));
        t.observe(&obs(4000, &[0]));
        assert_eq!(t.status().phase, Phase::Active);
        assert_eq!(t.status().seen_ms, 5000);
    }

    #[test]
    fn a_long_window_keeps_bounded_evenly_thinned_evidence() {
        let mut p = policy(Action::Stop);
        p.window_ms = 3_600_000;
        p.warn_before_ms = 0;
        let mut t = Tracker::new(p, 0);
        let mut ev = None;
        for s in (0..=3_601_000).step_by(1000) {
            if let Some(Decision::Act { evidence, .. }) =
                t.observe(&obs(s, &[if s == 0 { 90 } else { 0 }]))
            {
                ev = Some(evidence);
            }
        }
        let ev = ev.expect("stopped");
        assert!(ev.samples.len() <= MAX_EVIDENCE + 1, "{}", ev.samples.len());
        assert!(ev.samples.len() >= MAX_EVIDENCE / 2);
        assert_eq!(ev.samples[0].t_ms, 1000);
        assert_eq!(ev.samples.last().unwrap().t_ms, ev.at_ms);
        assert!(ev.samples.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    }

    #[test]
    fn detection_off_by_busy_thresholds_of_zero() {
        let mut p = policy(Action::Stop);
        p.busy_cpu_pct = 0.0;
        p.busy_io_bytes_per_s = 0;
        let mut t = Tracker::new(p, 0);
        // 0 means "never busy by this measure": the job is idle.
        let d = run(&mut t, 0, 20_000, |s| Observation {
            cpu_pct: Some(400.0),
            io_bytes_per_s: Some(1 << 30),
            ..obs(s, &[if s == 0 { 90 } else { 0 }])
        });
        assert_eq!(d, [(7_000, "warn"), (11_000, "stop")]);
    }
}
