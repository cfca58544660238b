//! Placement: which host and which GPUs a job gets. A pure function of the
//! request and what each host has free, so it is tested without processes.
//!
//! Rules: all GPUs of a job on one host; a GPU is eligible when no attempt
//! holds it (whatever NVML shows: a fresh process allocates seconds later),
//! no foreign process uses it, its model matches and it has the free memory
//! asked for; among hosts that fit, best fit: the set of GPUs with the least
//! free memory that still suffices, to keep big GPUs for big jobs. CPU-only
//! jobs take a CPU slot on the least loaded host.
//!
//! Starvation: a job that fits no host now but would fit one once Trainyard's
//! own attempts there end gets a *reservation* ([`reserve`]): the free GPUs it
//! would use are withheld from jobs behind it, so a 4-GPU job is not starved
//! by a stream of 1-GPU jobs.

use serde::Serialize;

use crate::gpu::Gpu;
use crate::queue::GpuRequest;

/// One host as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct HostView {
    /// The agent's name.
    pub agent: String,
    /// Its GPUs.
    pub gpus: Vec<Gpu>,
    /// UUIDs held by Trainyard attempts on this host.
    pub held: Vec<String>,
    /// PIDs of Trainyard's own processes (their GPU use is not foreign).
    pub own_pids: Vec<u32>,
    /// CPU-only job slots left.
    pub cpu_free: u32,
}

/// Where a job goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// The agent.
    pub agent: String,
    /// GPU UUIDs, in index order.
    pub gpus: Vec<String>,
}

fn eligible<'a>(req: &GpuRequest, h: &'a HostView) -> Vec<&'a Gpu> {
    h.gpus
        .iter()
        .filter(|g| !h.held.contains(&g.uuid))
        .filter(|g| g.processes.iter().all(|p| h.own_pids.contains(&p.pid)))
        .filter(|g| req.matches_model(&g.name))
        .filter(|g| g.memory_free_mib() >= req.min_memory_mib)
        .collect()
}

fn describe(req: &GpuRequest) -> String {
    let mut s = format!(
        "{} free GPU{}",
        req.count,
        if req.count == 1 { "" } else { "s" }
    );
    if req.min_memory_mib > 0 {
        s.push_str(&format!(
            " with ≥ {} GiB free",
            req.min_memory_mib.div_ceil(1024)
        ));
    }
    if let Some(m) = &req.model {
        s.push_str(&format!(" matching {m}"));
    }
    s
}

/// Choose a host and GPUs, or say why none fits (for `ps`). A CPU job
/// (count 0) goes to the host with the most free CPU slots.
pub fn place(req: &GpuRequest, hosts: &[HostView]) -> Result<Placement, String> {
    if hosts.is_empty() {
        return Err("no agent is connected".into());
    }
    if req.count == 0 {
        return hosts
            .iter()
            .filter(|h| h.cpu_free > 0)
            .max_by_key(|h| (h.cpu_free, std::cmp::Reverse(&h.agent)))
            .map(|h| Placement {
                agent: h.agent.clone(),
                gpus: Vec::new(),
            })
            .ok_or_else(|| "every agent's CPU job slots are busy".into());
    }
    let need = req.count as usize;
    let mut best: Option<(u64, Placement)> = None;
    let mut most = (0usize, "");
    for h in hosts {
        let mut e = eligible(req, h);
        if e.len() > most.0 {
            most = (e.len(), &h.agent);
        }
        if e.len() < need {
            continue;
        }
        e.sort_by_key(|g| (g.memory_free_mib(), g.index));
        let chosen = &e[..need];
        let score: u64 = chosen.iter().map(|g| g.memory_free_mib()).sum();
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            let mut picked: Vec<&Gpu> = chosen.to_vec();
            picked.sort_by_key(|g| g.index);
            best = Some((
                score,
                Placement {
                    agent: h.agent.clone(),
                    gpus: picked.iter().map(|g| g.uuid.clone()).collect(),
                },
            ));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        let mut r = format!("no host has {}", describe(req));
        if most.0 > 0 {
            r.push_str(&format!(" (at most {} on {})", most.0, most.1));
        }
        r
    })
}

/// Why a job can never run on the agents connected now, whatever ends:
/// no agent has as many GPUs of the model and total memory it asks for
/// (`no agent has an H100`, `no agent has 4 GPUs matching A100 (at most 2
/// on h1)`). `None` when some agent could run it once its GPUs are free,
/// and for CPU jobs. Distinct from the "waiting for GPUs" reasons of
/// [`place`] and [`reserve`].
pub fn unsatisfiable(req: &GpuRequest, hosts: &[HostView]) -> Option<String> {
    if req.count == 0 || hosts.is_empty() {
        return None;
    }
    let mut most = (0usize, "");
    for h in hosts {
        let n = h
            .gpus
            .iter()
            .filter(|g| req.matches_model(&g.name) && g.memory_total_mib >= req.min_memory_mib)
            .count();
        if n >= req.count as usize {
            return None;
        }
        if n > most.0 {
            most = (n, &h.agent);
        }
    }
    let mut what = if req.count == 1 {
        match &req.model {
            Some(m) if !m.contains('|') => format!("{} {m}", article(m)),
            Some(m) => format!("a GPU matching {m}"),
            None => "a GPU".to_string(),
        }
    } else {
        let mut s = format!("{} GPUs", req.count);
        if let Some(m) = &req.model {
            s.push_str(&format!(" matching {m}"));
        }
        s
    };
    if req.min_memory_mib > 0 {
        what.push_str(&format!(
            " with ≥ {} GiB of memory",
            req.min_memory_mib.div_ceil(1024)
        ));
    }
    let mut r = format!("no agent has {what}");
    if most.0 > 0 {
        r.push_str(&format!(" (at most {} on {})", most.0, most.1));
    }
    r.push_str("; it cannot run until such an agent connects");
    Some(r)
}

/// "a" or "an" before a model name, its first letter spelled out as it is
/// read aloud: "an H100", "an A100", "an RTX4090", "a V100", "a T4".
fn article(model: &str) -> &'static str {
    match model.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('A' | 'E' | 'F' | 'H' | 'I' | 'L' | 'M' | 'N' | 'O' | 'R' | 'S' | 'X' | '8') => "an",
        _ => "a",
    }
}

/// For a job that [`place`] could not fit: the host where it would fit once
/// Trainyard's own attempts end (GPUs of the right model and total memory,
/// free of foreign processes), and the currently free GPUs there to withhold
/// from later jobs. `None` when no host could ever fit it.
pub fn reserve(req: &GpuRequest, hosts: &[HostView]) -> Option<Placement> {
    if req.count == 0 {
        return None;
    }
    let need = req.count as usize;
    hosts
        .iter()
        .filter(|h| {
            h.gpus
                .iter()
                .filter(|g| req.matches_model(&g.name) && g.memory_total_mib >= req.min_memory_mib)
                .filter(|g| {
                    g.processes.iter().all(|p| h.own_pids.contains(&p.pid))
                        || h.held.contains(&g.uuid)
                })
                .count()
                >= need
        })
        .map(|h| (eligible(req, h), h))
        .max_by_key(|(e, h)| (e.len(), std::cmp::Reverse(&h.agent)))
        .map(|(e, h)| Placement {
            agent: h.agent.clone(),
            gpus: e.iter().take(need).map(|g| g.uuid.clone()).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{FakeGpus, GpuProcess, GpuSource};

    fn host(agent: &str, spec: &str) -> HostView {
        HostView {
            agent: agent.into(),
            gpus: FakeGpus::parse(spec, agent).unwrap().snapshot().unwrap(),
            held: Vec::new(),
            own_pids: Vec::new(),
            cpu_free: 2,
        }
    }

    fn req(count: u32, gib: u64, model: Option<&str>) -> GpuRequest {
        GpuRequest {
            count,
            min_memory_mib: gib * 1024,
            model: model.map(str::to_string),
        }
    }

    #[test]
    fn best_fit_keeps_big_gpus_for_big_jobs() {
        let hosts = [host("big", "2xA100-80GB"), host("small", "2xRTX4090-24GB")];
        assert_eq!(place(&req(1, 16, None), &hosts).unwrap().agent, "small");
        assert_eq!(place(&req(1, 40, None), &hosts).unwrap().agent, "big");
        assert_eq!(
            place(&req(2, 0, Some("a100")), &hosts).unwrap().gpus.len(),
            2
        );
    }

    #[test]
    fn held_and_foreign_gpus_are_not_free_and_the_reason_says_so() {
        let mut h = host("a", "2xA100-80GB");
        h.held.push("GPU-fake-a-0".into());
        h.gpus[1].processes.push(GpuProcess {
            pid: 4242,
            used_mib: Some(1000),
            user: None,
        });
        let err = place(&req(1, 0, None), &[h.clone()]).unwrap_err();
        assert_eq!(err, "no host has 1 free GPU");
        h.own_pids.push(4242);
        assert_eq!(
            place(&req(1, 0, None), &[h.clone()]).unwrap().gpus,
            ["GPU-fake-a-1"]
        );
        let err = place(&req(4, 40, Some("A100|H100")), &[h]).unwrap_err();
        assert_eq!(
            err,
            "no host has 4 free GPUs with ≥ 40 GiB free matching A100|H100 (at most 1 on a)"
        );
        assert_eq!(
            place(&req(1, 0, None), &[]).unwrap_err(),
            "no agent is connected"
        );
    }

    #[test]
    fn all_gpus_of_a_job_are_on_one_host() {
        let hosts = [host("a", "2xA100-80GB"), host("b", "2xA100-80GB")];
        let err = place(&req(3, 0, None), &hosts).unwrap_err();
        assert!(err.starts_with("no host has 3 free GPUs"), "{err}");
    }

    #[test]
    fn cpu_jobs_take_slots_on_the_least_loaded_host() {
        let mut a = host("a", "1xA100-80GB");
        let mut b = host("b", "1xA100-80GB");
        b.cpu_free = 3;
        assert_eq!(
            place(&req(0, 0, None), &[a.clone(), b.clone()])
                .unwrap()
                .agent,
            "b"
        );
        a.cpu_free = 0;
        b.cpu_free = 0;
        assert_eq!(
            place(&req(0, 0, None), &[a, b]).unwrap_err(),
            "every agent's CPU job slots are busy"
        );
    }

    #[test]
    fn a_request_no_agent_can_ever_satisfy_says_so() {
        let mut a = host("a", "2xA100-80GB");
        a.held.push("GPU-fake-a-0".into());
        let b = host("b", "1xRTX4090-24GB");
        let hosts = [a, b];
        assert_eq!(
            unsatisfiable(&req(1, 0, Some("H100")), &hosts).unwrap(),
            "no agent has an H100; it cannot run until such an agent connects"
        );
        assert_eq!(
            unsatisfiable(&req(4, 0, None), &hosts).unwrap(),
            "no agent has 4 GPUs (at most 2 on a); it cannot run until such an agent connects"
        );
        assert_eq!(
            unsatisfiable(&req(1, 100, None), &hosts).unwrap(),
            "no agent has a GPU with ≥ 100 GiB of memory; it cannot run until such an agent \
             connects"
        );
        // Held GPUs still count: the job waits, it is not impossible.
        assert_eq!(unsatisfiable(&req(2, 40, Some("A100")), &hosts), None);
        assert_eq!(unsatisfiable(&req(0, 0, None), &hosts), None);
    }

    #[test]
    fn a_blocked_big_job_reserves_free_gpus_on_the_host_it_waits_for() {
        let mut h = host("a", "4xA100-80GB");
        h.held.push("GPU-fake-a-0".into());
        let big = req(4, 0, None);
        assert!(place(&big, &[h.clone()]).is_err());
        let r = reserve(&big, &[h.clone()]).unwrap();
        assert_eq!(r.gpus.len(), 3);
        // With the reservation applied, a 1-GPU job behind it does not fit.
        h.held.extend(r.gpus);
        assert!(place(&req(1, 0, None), &[h.clone()]).is_err());
        // A job no host could ever fit reserves nothing.
        assert!(reserve(&req(8, 0, None), &[h]).is_none());
    }
}
