//! The GPUs that indexed wandb runs held, as usage holdings
//! (`crate::usage`): runs that did not come through the queue count too.
//!
//! wandb samples every GPU of the host as `system.gpu.{i}.*` and, only for
//! the GPUs the run's own process tree uses, the same values again as
//! `system.gpu.process.{i}.*`. A run holds GPU `i` only if some
//! `gpu.process.{i}` sample exists; counting `gpu.{i}` would charge a run
//! for its neighbours' GPUs. The holding spans the run: from its start
//! time to the later of start + runtime and its last system sample.
//!
//! Samples of a held GPU come from the stats rows: `gpu.process.{i}.gpu`
//! (utilization %), `.powerWatts` and `.memoryAllocatedBytes` (as MiB). A
//! row where wandb sampled the host's GPUs but the run's processes were not
//! on GPU `i` (before the process created its CUDA context, after it freed
//! it) is a 0 % sample with no power: the run held the GPU without using it.
//!
//! wandb samples every 15 s by default (`x_stats_sampling_interval`), far
//! sparser than the agents' 2 s, so each [`RunHolding`] carries the
//! `max_gap_ms` to account it with: twice the run's measured interval
//! between GPU samples, so that one lost sample is bridged and a stopped
//! monitor is not (30 s at wandb's default).
//!
//! This is the one part of `wandb` that knows `crate::usage`. It reads the
//! run index through its public API and writes nothing.

use std::collections::BTreeSet;

use super::index::{IndexError, ListFilter, RunIndex, Table};
use super::Value;
use crate::usage::{Holder, Holding, Sample};

/// wandb's default system-metrics interval (`x_stats_sampling_interval`).
pub const WANDB_SAMPLE_INTERVAL_MS: i64 = 15_000;

/// The `max_gap_ms` of a run whose interval cannot be measured (fewer than
/// two GPU samples): two of wandb's default intervals.
pub const DEFAULT_RUN_MAX_GAP_MS: i64 = 2 * WANDB_SAMPLE_INTERVAL_MS;

/// Bounds of a measured `max_gap_ms`.
const GAP_BOUNDS_MS: (i64, i64) = (1_000, 10 * 60_000);

/// The per-process metrics a sample is made of (wandb-symon's names).
const UTIL: &str = "gpu";
const POWER: &str = "powerWatts";
const MEMORY: &str = "memoryAllocatedBytes";

/// One GPU a run held, with the samples of it that the run recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RunHolding {
    /// Holder [`Holder::Run`]; host, GPU UUID (else `host:index`), model
    /// and user from the run's metadata; the run's project and tags.
    pub holding: Holding,
    /// The GPU's samples as the run saw them, sorted by time.
    pub samples: Vec<Sample>,
    /// The `usage::Policy::max_gap_ms` to account this holding with.
    pub max_gap_ms: i64,
    /// The run directory (one run id may have several).
    pub dir: String,
}

impl RunHolding {
    /// The holding and its samples, as `usage::reconcile` takes them.
    pub fn into_parts(self) -> (Holding, Vec<Sample>) {
        (self.holding, self.samples)
    }
}

/// The GPU holdings of the indexed runs that overlap `[since_ms, until_ms)`
/// (ms since the epoch), one per run directory and GPU its processes used,
/// sorted by start. Holdings are whole, not clipped to the range (`account`
/// clips). Runs without a start time or without per-process GPU metrics
/// hold nothing.
pub fn run_holdings(
    index: &RunIndex,
    since_ms: i64,
    until_ms: i64,
) -> Result<Vec<RunHolding>, IndexError> {
    let runs = index.list_filtered(&ListFilter {
        until: Some(until_ms as f64 / 1000.0),
        ..ListFilter::default()
    })?;
    let mut out = Vec::new();
    for s in runs {
        let Some(start_ms) = s.start_time.and_then(secs_to_ms) else {
            continue;
        };
        // A run re-indexed or removed since the listing is left out.
        let detail = match index.get(&s.dir) {
            Ok(d) => d,
            Err(IndexError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let held = process_gpus(&detail.system_keys);
        if held.is_empty() {
            continue;
        }
        let sampled = host_gpus(&detail.system_keys);
        let mut keys: Vec<String> = Vec::new();
        for i in &held {
            for m in [UTIL, POWER, MEMORY] {
                keys.push(format!("system.gpu.process.{i}.{m}"));
            }
        }
        for j in &sampled {
            keys.push(format!("system.gpu.{j}.{UTIL}"));
        }
        let table = match index.history(&s.dir, &keys) {
            Ok(t) => t,
            Err(IndexError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let last_ms = table
            .timestamps
            .iter()
            .flatten()
            .filter_map(|t| secs_to_ms(*t))
            .max();
        let by_runtime = s
            .runtime
            .and_then(secs_to_ms)
            .map(|r| start_ms.saturating_add(r));
        let Some(end_ms) = by_runtime.max(last_ms) else {
            continue;
        };
        if end_ms <= start_ms || end_ms <= since_ms || start_ms >= until_ms {
            continue;
        }
        // Rows where wandb sampled GPUs, by time.
        let gpu_rows: Vec<(usize, i64)> = {
            let mut rows: Vec<(usize, i64)> = (0..table.timestamps.len())
                .filter(|&r| table.columns.iter().any(|(_, c)| number(c, r).is_some()))
                .filter_map(|r| table.timestamps[r].and_then(secs_to_ms).map(|t| (r, t)))
                .collect();
            rows.sort_by_key(|&(r, t)| (t, r));
            rows
        };
        let max_gap_ms = max_gap(gpu_rows.iter().map(|&(_, t)| t));
        let env = &detail.meta.environment;
        for i in held {
            let (gpu, model) = gpu_identity(&env.metadata, &detail.run.host, i);
            let col = |m: &str| column(&table, &format!("system.gpu.process.{i}.{m}"));
            let (util, power, mem) = (col(UTIL), col(POWER), col(MEMORY));
            let samples = gpu_rows
                .iter()
                .map(|&(r, t)| {
                    let ours = [util, power, mem]
                        .iter()
                        .any(|c| c.is_some_and(|c| number(c, r).is_some()));
                    if !ours {
                        return Sample {
                            t_ms: t,
                            util_pct: 0.0,
                            power_w: None,
                            energy_mj: None,
                            mem_used_mib: 0,
                        };
                    }
                    let get = |c: Option<&[Option<Value>]>| c.and_then(|c| number(c, r));
                    Sample {
                        t_ms: t,
                        util_pct: get(util).unwrap_or(0.0),
                        power_w: get(power),
                        energy_mj: None,
                        mem_used_mib: get(mem).map_or(0, |b| (b.max(0.0) / 1048576.0) as u64),
                    }
                })
                .collect();
            out.push(RunHolding {
                holding: Holding {
                    holder: Holder::Run {
                        run: detail.run.id.clone(),
                    },
                    host: detail.run.host.clone(),
                    gpu,
                    model: if model.is_empty() {
                        env.gpu_type.clone()
                    } else {
                        model
                    },
                    user: env.username.clone(),
                    project: detail.run.project.clone(),
                    tags: detail.run.tags.clone(),
                    start_ms,
                    end_ms,
                },
                samples,
                max_gap_ms,
                dir: s.dir.clone(),
            });
        }
    }
    out.sort_by(|a, b| {
        (
            a.holding.start_ms,
            &a.holding.holder,
            &a.holding.gpu,
            &a.dir,
        )
            .cmp(&(
                b.holding.start_ms,
                &b.holding.holder,
                &b.holding.gpu,
                &b.dir,
            ))
    });
    Ok(out)
}

/// Unix seconds to ms, if finite.
fn secs_to_ms(s: f64) -> Option<i64> {
    let ms = (s * 1000.0).round();
    (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
}

/// The number in a column's row, if finite.
fn number(col: &[Option<Value>], row: usize) -> Option<f64> {
    col.get(row)?.as_ref()?.as_f64().filter(|x| x.is_finite())
}

fn column<'a>(table: &'a Table, name: &str) -> Option<&'a [Option<Value>]> {
    table
        .columns
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.as_slice())
}

/// The GPU indices of `system.gpu.process.{i}.*` keys: the GPUs the run's
/// processes used.
fn process_gpus(system_keys: &[String]) -> BTreeSet<u32> {
    system_keys
        .iter()
        .filter_map(|k| k.strip_prefix("system.gpu.process.")?.split_once('.'))
        .filter_map(|(i, _)| i.parse().ok())
        .collect()
}

/// The GPU indices of `system.gpu.{i}.gpu` keys: every GPU wandb sampled.
fn host_gpus(system_keys: &[String]) -> BTreeSet<u32> {
    system_keys
        .iter()
        .filter_map(|k| k.strip_prefix("system.gpu.")?.strip_suffix(".gpu"))
        .filter_map(|i| i.parse().ok())
        .collect()
}

/// GPU `i`'s UUID and model name from the run's metadata (`gpu_nvidia[i]`);
/// without a UUID the GPU is named `host:i`, and the model is empty.
fn gpu_identity(
    metadata: &std::collections::BTreeMap<String, Value>,
    host: &str,
    i: u32,
) -> (String, String) {
    let gpu = metadata
        .get("gpu_nvidia")
        .and_then(Value::as_array)
        .and_then(|a| a.get(i as usize))
        .and_then(Value::as_object);
    let field = |k: &str| {
        gpu.and_then(|g| g.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    (
        field("uuid").unwrap_or_else(|| format!("{host}:{i}")),
        field("name").unwrap_or_default(),
    )
}

/// Twice the median interval between GPU samples, within bounds; the
/// default for fewer than two samples.
fn max_gap(times: impl Iterator<Item = i64>) -> i64 {
    let times: Vec<i64> = times.collect();
    let mut steps: Vec<i64> = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d > 0)
        .collect();
    if steps.is_empty() {
        return DEFAULT_RUN_MAX_GAP_MS;
    }
    steps.sort_unstable();
    (2 * steps[steps.len() / 2]).clamp(GAP_BOUNDS_MS.0, GAP_BOUNDS_MS.1)
}

#[cfg(test)]
mod tests;
