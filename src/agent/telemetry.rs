//! What an agent does with its GPU samples: each one is turned into a
//! [`HostSample`] (every GPU, its processes mapped to the attempt whose
//! process group or cgroup holds them, the energy over the interval), kept
//! in a bounded buffer, and shipped to the daemon in batches
//! (`POST /agents/{name}/samples`). While the daemon is unreachable the
//! buffer fills; when full, the oldest samples go, counted, with a warning,
//! and the count travels with the next batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::api::{GpuSample, HostSample, SampleBatch, SampledProcess};
use crate::client::{Client, ClientError};
use crate::gpu::Gpu;
use crate::queue::JobId;

/// At most this many GPU samples go in one request (about 0.5 MB of JSON,
/// well under the daemon's 2 MiB body limit).
pub const MAX_GPU_SAMPLES_PER_BATCH: usize = 2000;

/// How often samples are shipped: five samples' worth, between 1 and 10 s.
pub fn ship_every(sample_every: Duration) -> Duration {
    (sample_every * 5).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

#[derive(Debug, Default)]
struct Inner {
    /// (sequence number, sample), oldest first.
    queue: VecDeque<(u64, HostSample)>,
    next_seq: u64,
    /// Dropped since the last batch the daemon accepted.
    dropped: u64,
    /// Whether the current run of drops was announced.
    warned: bool,
}

/// A bounded buffer of samples waiting to be shipped; the oldest are
/// dropped (and counted) when it is full.
#[derive(Debug)]
pub struct SampleBuffer {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl SampleBuffer {
    /// A buffer of at most `capacity` host samples (at least 1).
    pub fn new(capacity: usize) -> SampleBuffer {
        SampleBuffer {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a sample, dropping the oldest when full.
    pub fn push(&self, s: HostSample) {
        let mut b = self.inner();
        if b.queue.len() >= self.capacity {
            b.queue.pop_front();
            b.dropped += 1;
            if !b.warned {
                b.warned = true;
                tracing::warn!(
                    capacity = self.capacity,
                    "the GPU sample buffer is full (the daemon is unreachable): dropping the oldest samples"
                );
            }
        }
        let seq = b.next_seq;
        b.next_seq += 1;
        b.queue.push_back((seq, s));
    }

    /// The oldest samples, up to [`MAX_GPU_SAMPLES_PER_BATCH`] GPU samples
    /// (at least one host sample), the sequence number of the last, and
    /// the drops not yet reported. Nothing is removed until [`Self::sent`].
    pub fn batch(&self) -> Option<(Vec<HostSample>, u64, u64)> {
        let b = self.inner();
        let mut out = Vec::new();
        let mut gpus = 0;
        let mut last = None;
        for (seq, s) in &b.queue {
            if !out.is_empty() && gpus + s.gpus.len() > MAX_GPU_SAMPLES_PER_BATCH {
                break;
            }
            gpus += s.gpus.len();
            out.push(s.clone());
            last = Some(*seq);
        }
        last.map(|l| (out, l, b.dropped))
    }

    /// The daemon accepted the samples up to `last` and `dropped` drops.
    pub fn sent(&self, last: u64, dropped: u64) {
        let mut b = self.inner();
        while b.queue.front().is_some_and(|(seq, _)| *seq <= last) {
            b.queue.pop_front();
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "GPU samples were dropped while the daemon was unreachable (the buffer was full)"
            );
        }
        b.dropped -= dropped.min(b.dropped);
        b.warned = false;
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.inner().queue.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.inner().dropped
    }
}

/// Turns successive snapshots into samples: remembers each GPU's last
/// counter to give the energy over each interval.
#[derive(Debug, Default)]
pub struct Sampler {
    last_counter: HashMap<String, u64>,
}

impl Sampler {
    /// The sample of `gpus` taken at `t_ms` (wall clock), standing for the
    /// `dt` since the previous one; `owners` maps the PIDs in Trainyard's
    /// process groups and cgroups to their attempt.
    pub fn sample(
        &mut self,
        gpus: &[Gpu],
        owners: &HashMap<u32, (JobId, u32)>,
        t_ms: i64,
        dt: Duration,
    ) -> HostSample {
        let dt_ms = dt.as_millis().min(u32::MAX as u128) as u32;
        let gpus = gpus
            .iter()
            .map(|g| {
                let prev = match g.energy_mj {
                    Some(e) => self.last_counter.insert(g.uuid.clone(), e),
                    None => self.last_counter.remove(&g.uuid),
                };
                // The counter's increase; power × time where there is no
                // counter, no previous reading, or the counter went back
                // (a driver reload).
                let interval_energy_mj = match (g.energy_mj, prev) {
                    (Some(now), Some(before)) if now >= before => Some(now - before),
                    _ => g.power_w.map(|w| u64::from(w) * u64::from(dt_ms)),
                };
                GpuSample {
                    uuid: g.uuid.clone(),
                    index: g.index,
                    name: g.name.clone(),
                    memory_total_mib: g.memory_total_mib,
                    memory_used_mib: g.memory_used_mib,
                    utilization_pct: g.utilization_pct,
                    temperature_c: g.temperature_c,
                    power_w: g.power_w,
                    energy_mj: g.energy_mj,
                    interval_energy_mj,
                    processes: g
                        .processes
                        .iter()
                        .map(|p| {
                            let owner = owners.get(&p.pid);
                            SampledProcess {
                                pid: p.pid,
                                used_mib: p.used_mib,
                                job: owner.map(|o| o.0),
                                attempt: owner.map(|o| o.1),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        HostSample {
            t_ms,
            dt_ms,
            gpus,
            groups: Vec::new(),
        }
    }
}

/// Ship the buffer's samples every `every` until the task is aborted; a
/// batch the daemon did not take stays for the next try.
pub async fn ship_loop(
    client: Client,
    name: String,
    agent_id: String,
    buffer: std::sync::Arc<SampleBuffer>,
    every: Duration,
) {
    let mut down = false;
    loop {
        tokio::time::sleep(every).await;
        // Several batches when a backlog waits.
        while let Some((samples, last, dropped)) = buffer.batch() {
            let batch = SampleBatch {
                agent_id: agent_id.clone(),
                sent_ms: crate::db::now_ns() / 1_000_000,
                dropped,
                samples,
            };
            match client.samples(&name, &batch).await {
                Ok(ack) => {
                    if down {
                        tracing::info!(waiting = buffer.len(), "shipping GPU samples again");
                        down = false;
                    }
                    if ack.refused > 0 {
                        tracing::warn!(
                            refused = ack.refused,
                            "the daemon refused GPU samples (older than its raw retention)"
                        );
                    }
                    buffer.sent(last, dropped);
                }
                Err(e) => {
                    if !down {
                        let what = match &e {
                            ClientError::Api { .. } => "the daemon refused GPU samples",
                            _ => "cannot ship GPU samples; keeping them",
                        };
                        tracing::warn!(error = %e, buffered = buffer.len(), "{what}");
                        down = true;
                    }
                    // A batch the daemon refuses outright would block the
                    // rest forever: drop it.
                    if matches!(&e, ClientError::Api { status, .. } if *status < 500) {
                        buffer.sent(last, 0);
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: i64, gpus: usize) -> HostSample {
        HostSample {
            t_ms: t,
            dt_ms: 2000,
            gpus: vec![GpuSample::default(); gpus],
            groups: Vec::new(),
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let b = SampleBuffer::new(3);
        for t in 0..5 {
            b.push(host(t, 1));
        }
        assert_eq!((b.len(), b.dropped()), (3, 2));
        let (s, last, dropped) = b.batch().unwrap();
        assert_eq!(s.iter().map(|s| s.t_ms).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(dropped, 2);
        // A sample taken while the batch was in flight pushes out one that
        // was in it; the acknowledgement removes only what was sent.
        b.push(host(5, 1));
        b.sent(last, dropped);
        assert_eq!((b.len(), b.dropped()), (1, 1));
        assert_eq!(b.batch().unwrap().0[0].t_ms, 5);
    }

    #[test]
    fn a_batch_is_bounded_by_gpu_samples() {
        let b = SampleBuffer::new(100);
        for t in 0..10 {
            b.push(host(t, 600));
        }
        let (s, last, _) = b.batch().unwrap();
        assert_eq!(s.len(), 3);
        b.sent(last, 0);
        assert_eq!(b.len(), 7);
        // One host sample bigger than the bound still goes alone.
        let big = SampleBuffer::new(2);
        big.push(host(0, 3000));
        assert_eq!(big.batch().unwrap().0.len(), 1);
    }

    #[test]
    fn processes_are_mapped_to_attempts_and_energy_follows_the_counter() {
        let gpu = |energy: Option<u64>| Gpu {
            index: 0,
            uuid: "GPU-a".into(),
            name: "A100".into(),
            memory_total_mib: 80,
            memory_used_mib: 8,
            utilization_pct: Some(50),
            temperature_c: Some(40),
            power_w: Some(100),
            energy_mj: energy,
            processes: vec![
                crate::gpu::GpuProcess {
                    pid: 10,
                    used_mib: Some(4),
                    user: None,
                },
                crate::gpu::GpuProcess {
                    pid: 11,
                    used_mib: None,
                    user: None,
                },
            ],
        };
        let owners = HashMap::from([(10, (JobId(7), 2))]);
        let mut s = Sampler::default();
        let dt = Duration::from_secs(2);
        let first = s.sample(&[gpu(Some(1_000))], &owners, 1, dt);
        let p = &first.gpus[0].processes;
        assert_eq!((p[0].job, p[0].attempt), (Some(JobId(7)), Some(2)));
        assert_eq!((p[1].job, p[1].attempt), (None, None));
        // No previous reading: power × time.
        assert_eq!(first.gpus[0].interval_energy_mj, Some(200_000));
        let next = s.sample(&[gpu(Some(151_000))], &owners, 2, dt);
        assert_eq!(next.gpus[0].interval_energy_mj, Some(150_000));
        // A counter that went back (driver reload): power × time again.
        let back = s.sample(&[gpu(Some(5))], &owners, 3, dt);
        assert_eq!(back.gpus[0].interval_energy_mj, Some(200_000));
        let none = s.sample(&[gpu(None)], &owners, 4, dt);
        assert_eq!(none.gpus[0].interval_energy_mj, Some(200_000));
        assert_eq!(none.dt_ms, 2000);
    }
}
