//! A scripted fake backend: `--fake-gpus` plus a trace file
//! (`--fake-gpu-trace FILE`) replays, per GPU index, a piecewise-constant
//! trace of utilization, memory, power and temperature over the seconds
//! since the source was created (the agent's start), so tests know the
//! truth to the second. The energy counter is the integral of the scripted
//! power, exact in mJ. Time comes from an injectable clock: unit tests move
//! it by hand and never sleep.
//!
//! The format is in `docs/gpu-trace-format.md`. Every error names the file,
//! the line and the field at fault. This module only replays; it never
//! chooses itself: a trace is used only when asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use toml::Spanned;

use super::{FakeGpus, Gpu, GpuError, GpuProcess, GpuSource};

/// Environment variable naming a trace file (like `--fake-gpu-trace`).
pub const FAKE_GPU_TRACE_ENV: &str = "TRAINYARD_FAKE_GPU_TRACE";

/// The newest trace format version this build reads.
pub const TRACE_VERSION: i64 = 1;

/// The time since the replay began.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// A clock that starts now (the agent's start).
pub fn real_clock() -> Clock {
    let t0 = Instant::now();
    Arc::new(move || t0.elapsed())
}

/// One point of a GPU's trace: these values hold from `t_ms` until the
/// next point (the last one forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Milliseconds since the replay began.
    pub t_ms: u64,
    /// Utilization, percent.
    pub util_pct: u32,
    /// Memory used, MiB.
    pub mem_used_mib: u64,
    /// Power draw, W.
    pub power_w: u32,
    /// Temperature, °C (the inventory's default when not scripted).
    pub temp_c: Option<u32>,
    /// The line of the file it came from (for errors found later).
    line: usize,
}

/// Where the replayed GPUs' processes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceProcesses {
    /// None: the GPUs show no processes.
    #[default]
    None,
    /// Every process of this user whose environment's
    /// `TRAINYARD_GPU_UUIDS` names the GPU, as NVML lists a CUDA process
    /// on the GPU it opened (so tests see real job processes mapped).
    Environment,
}

/// A parsed trace file.
#[derive(Debug, Clone)]
pub struct Trace {
    path: PathBuf,
    gpus: BTreeMap<u32, (usize, Vec<Point>)>,
    processes: TraceProcesses,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    version: Option<Spanned<i64>>,
    #[serde(default)]
    processes: Option<Spanned<String>>,
    #[serde(default)]
    gpu: Vec<Spanned<GpuTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuTable {
    index: Spanned<i64>,
    points: Vec<Spanned<Vec<Spanned<toml::Value>>>>,
}

/// The fields of a point, in order, with their ranges.
const FIELDS: [(&str, f64); 5] = [
    ("t (seconds)", f64::MAX),
    ("utilization (%)", 100.0),
    ("memory used (MiB)", 16_777_216.0),
    ("power (W)", 100_000.0),
    ("temperature (°C)", 200.0),
];

impl Trace {
    /// Read and check a trace file.
    pub fn load(path: &Path) -> Result<Trace, GpuError> {
        let text = std::fs::read_to_string(path).map_err(|e| GpuError::BadTrace {
            path: path.to_path_buf(),
            line: None,
            field: String::new(),
            reason: format!("cannot read it: {e}"),
        })?;
        Trace::parse(&text, path)
    }

    /// Parse and check the text of a trace file (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Trace, GpuError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let bad = |offset: Option<usize>, field: &str, reason: String| GpuError::BadTrace {
            path: path.to_path_buf(),
            line: offset.map(line_of),
            field: field.to_string(),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            bad(
                e.span().map(|s| s.start),
                "",
                e.message().trim().to_string(),
            )
        })?;
        if let Some(v) = &file.version {
            if *v.get_ref() != TRACE_VERSION {
                return Err(bad(
                    Some(v.span().start),
                    "version",
                    format!(
                        "version {} is not one this Trainyard reads ({TRACE_VERSION}); upgrade Trainyard",
                        v.get_ref()
                    ),
                ));
            }
        }
        let processes = match &file.processes {
            None => TraceProcesses::None,
            Some(p) => match p.get_ref().as_str() {
                "none" => TraceProcesses::None,
                "environment" => TraceProcesses::Environment,
                other => {
                    return Err(bad(
                        Some(p.span().start),
                        "processes",
                        format!("{other:?} is not \"none\" or \"environment\""),
                    ))
                }
            },
        };
        let mut gpus = BTreeMap::new();
        for (k, table) in file.gpu.iter().enumerate() {
            let g = table.get_ref();
            let index_at = g.index.span().start;
            let index = u32::try_from(*g.index.get_ref())
                .ok()
                .filter(|i| *i < 64)
                .ok_or_else(|| {
                    bad(
                        Some(index_at),
                        &format!("gpu[{k}].index"),
                        format!("{} is not a GPU index (0..63)", g.index.get_ref()),
                    )
                })?;
            if g.points.is_empty() {
                return Err(bad(
                    Some(table.span().start),
                    &format!("gpu[{k}].points"),
                    "no points: give at least [0, UTIL, MEM_MIB, POWER_W]".into(),
                ));
            }
            let mut points: Vec<Point> = Vec::with_capacity(g.points.len());
            for (i, p) in g.points.iter().enumerate() {
                let field = |j: usize| format!("gpu[{k}].points[{i}][{j}] {}", FIELDS[j].0);
                let at = p.span().start;
                let values = p.get_ref();
                if !(4..=5).contains(&values.len()) {
                    return Err(bad(
                        Some(at),
                        &format!("gpu[{k}].points[{i}]"),
                        format!(
                            "{} values; a point is [t, util, mem_mib, power_w] or [t, util, mem_mib, power_w, temp_c]",
                            values.len()
                        ),
                    ));
                }
                let mut nums = [0f64; 5];
                for (j, v) in values.iter().enumerate() {
                    let vat = Some(v.span().start);
                    let n = match v.get_ref() {
                        toml::Value::Integer(n) => *n as f64,
                        // Only the time may have a fraction.
                        toml::Value::Float(f) if j == 0 => *f,
                        other => {
                            return Err(bad(
                                vat,
                                &field(j),
                                format!(
                                    "{other} is not {}",
                                    if j == 0 { "a number" } else { "an integer" }
                                ),
                            ))
                        }
                    };
                    if !n.is_finite() || n < 0.0 || n > FIELDS[j].1 {
                        return Err(bad(
                            vat,
                            &field(j),
                            format!("{n} is out of range (0..={})", FIELDS[j].1),
                        ));
                    }
                    nums[j] = n;
                }
                let t_ms = (nums[0] * 1000.0).round() as u64;
                match points.last() {
                    None if t_ms != 0 => {
                        return Err(bad(
                            Some(at),
                            &field(0),
                            format!("the first point must be at t = 0, not {}", nums[0]),
                        ))
                    }
                    Some(prev) if t_ms <= prev.t_ms => {
                        return Err(bad(
                            Some(at),
                            &field(0),
                            format!(
                                "t = {} is not after the previous point's {} s",
                                nums[0],
                                prev.t_ms as f64 / 1000.0
                            ),
                        ))
                    }
                    _ => {}
                }
                points.push(Point {
                    t_ms,
                    util_pct: nums[1] as u32,
                    mem_used_mib: nums[2] as u64,
                    power_w: nums[3] as u32,
                    temp_c: (values.len() == 5).then_some(nums[4] as u32),
                    line: line_of(at),
                });
            }
            if gpus.insert(index, (line_of(index_at), points)).is_some() {
                return Err(bad(
                    Some(index_at),
                    &format!("gpu[{k}].index"),
                    format!("GPU {index} has two traces"),
                ));
            }
        }
        Ok(Trace {
            path: path.to_path_buf(),
            gpus,
            processes,
        })
    }

    /// The points scripted for GPU `index`, if any.
    pub fn points(&self, index: u32) -> Option<&[Point]> {
        self.gpus.get(&index).map(|(_, p)| p.as_slice())
    }
}

/// The point in force at `t_ms`.
pub fn at(points: &[Point], t_ms: u64) -> &Point {
    let i = points.partition_point(|p| p.t_ms <= t_ms);
    &points[i.saturating_sub(1)]
}

/// The energy used from 0 to `t_ms`, mJ: the integral of the scripted
/// power (W × ms = mJ, exact).
pub fn energy_mj(points: &[Point], t_ms: u64) -> u64 {
    let mut total = 0u64;
    for (i, p) in points.iter().enumerate() {
        if p.t_ms >= t_ms {
            break;
        }
        let end = points.get(i + 1).map_or(t_ms, |n| n.t_ms.min(t_ms));
        total += u64::from(p.power_w) * (end - p.t_ms);
    }
    total
}

/// A fake inventory whose live values follow a [`Trace`].
pub struct TraceGpus {
    base: Vec<Gpu>,
    trace: Trace,
    clock: Clock,
}

impl TraceGpus {
    /// Replay `trace` over the inventory `base` on `clock`. Every traced
    /// index must be in the inventory, and memory used within its total.
    pub fn new(base: &FakeGpus, trace: Trace, clock: Clock) -> Result<TraceGpus, GpuError> {
        let gpus = base.gpus.clone();
        for (index, (line, points)) in &trace.gpus {
            let bad = |line: usize, field: String, reason: String| GpuError::BadTrace {
                path: trace.path.clone(),
                line: Some(line),
                field,
                reason,
            };
            let Some(g) = gpus.iter().find(|g| g.index == *index) else {
                return Err(bad(
                    *line,
                    "index".into(),
                    format!(
                        "GPU {index} is not in the fake inventory (it has {} GPUs: --fake-gpus)",
                        gpus.len()
                    ),
                ));
            };
            if let Some(p) = points.iter().find(|p| p.mem_used_mib > g.memory_total_mib) {
                return Err(bad(
                    p.line,
                    format!("gpu {index} memory used (MiB)"),
                    format!(
                        "{} MiB is more than the GPU's {} MiB",
                        p.mem_used_mib, g.memory_total_mib
                    ),
                ));
            }
        }
        Ok(TraceGpus {
            base: gpus,
            trace,
            clock,
        })
    }
}

impl GpuSource for TraceGpus {
    fn snapshot(&mut self) -> Result<Vec<Gpu>, GpuError> {
        let now = (self.clock)().as_millis() as u64;
        let claims = match self.trace.processes {
            TraceProcesses::None => Vec::new(),
            TraceProcesses::Environment => claimed_gpus(),
        };
        let mut out = self.base.clone();
        for g in &mut out {
            let static_points;
            let points = match self.trace.points(g.index) {
                Some(p) => p,
                None => {
                    // Untraced GPUs keep their inventory values; their
                    // counter still integrates their constant power.
                    static_points = [Point {
                        t_ms: 0,
                        util_pct: g.utilization_pct.unwrap_or(0),
                        mem_used_mib: g.memory_used_mib,
                        power_w: g.power_w.unwrap_or(0),
                        temp_c: g.temperature_c,
                        line: 0,
                    }];
                    &static_points[..]
                }
            };
            let p = at(points, now);
            g.utilization_pct = Some(p.util_pct);
            g.memory_used_mib = p.mem_used_mib;
            g.power_w = Some(p.power_w);
            if p.temp_c.is_some() {
                g.temperature_c = p.temp_c;
            }
            g.energy_mj = Some(energy_mj(points, now));
            g.processes = claims
                .iter()
                .filter(|(_, uuids)| uuids.contains(&g.uuid))
                .map(|(pid, _)| GpuProcess {
                    pid: *pid,
                    used_mib: None,
                    user: None,
                })
                .collect();
        }
        Ok(out)
    }
    fn kind(&self) -> &'static str {
        "fake"
    }
}

/// Every readable process whose environment sets `TRAINYARD_GPU_UUIDS`,
/// with the UUIDs it names.
fn claimed_gpus() -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for var in env.split(|b| *b == 0) {
            if let Some(v) = var.strip_prefix(b"TRAINYARD_GPU_UUIDS=") {
                let uuids = String::from_utf8_lossy(v)
                    .split(',')
                    .map(str::to_string)
                    .collect();
                out.push((pid, uuids));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const GOOD: &str = "version = 1
[[gpu]]
index = 0
points = [[0, 0, 1024, 60], [30, 95, 40000, 300, 71], [90.5, 10, 2048, 100]]
[[gpu]]
index = 1
points = [[0, 50, 10, 200]]
";

    fn manual() -> (Arc<AtomicU64>, Clock) {
        let ms = Arc::new(AtomicU64::new(0));
        let m = ms.clone();
        (
            ms,
            Arc::new(move || Duration::from_millis(m.load(Ordering::SeqCst))),
        )
    }

    #[test]
    fn replays_the_trace_and_integrates_power_exactly() {
        let trace = Trace::parse(GOOD, Path::new("t.toml")).unwrap();
        let base = FakeGpus::parse("3xA100-80GB", "h").unwrap();
        let (ms, clock) = manual();
        let mut src = TraceGpus::new(&base, trace, clock).unwrap();
        let g = src.snapshot().unwrap();
        assert_eq!(g[0].utilization_pct, Some(0));
        assert_eq!(g[0].memory_used_mib, 1024);
        assert_eq!(g[0].energy_mj, Some(0));
        ms.store(29_999, Ordering::SeqCst);
        let g = src.snapshot().unwrap();
        assert_eq!(g[0].power_w, Some(60));
        assert_eq!(g[0].energy_mj, Some(60 * 29_999));
        ms.store(30_000, Ordering::SeqCst);
        let g = src.snapshot().unwrap();
        assert_eq!(
            (g[0].utilization_pct, g[0].memory_used_mib, g[0].power_w),
            (Some(95), 40000, Some(300))
        );
        assert_eq!(g[0].temperature_c, Some(71));
        ms.store(100_000, Ordering::SeqCst);
        let g = src.snapshot().unwrap();
        // 60 W × 30 s + 300 W × 60.5 s + 100 W × 9.5 s, in mJ.
        assert_eq!(
            g[0].energy_mj,
            Some(60 * 30_000 + 300 * 60_500 + 100 * 9_500)
        );
        assert_eq!(g[0].utilization_pct, Some(10));
        // The temperature of a point without one is the inventory's.
        assert_eq!(g[0].temperature_c, Some(30));
        assert_eq!(g[1].energy_mj, Some(200 * 100_000));
        // An untraced GPU keeps its inventory values, its counter integrates them.
        assert_eq!(g[2].utilization_pct, Some(0));
        assert_eq!(g[2].energy_mj, Some(50 * 100_000));
    }

    fn err(text: &str) -> String {
        Trace::parse(text, Path::new("lab.toml"))
            .and_then(|t| {
                TraceGpus::new(
                    &FakeGpus::parse("2xA100-40GB", "h").unwrap(),
                    t,
                    real_clock(),
                )
            })
            .err()
            .expect("an error")
            .to_string()
    }

    #[test]
    fn bad_files_name_the_file_line_and_field() {
        let e = err("[[gpu]]\nindex = 0\npoints = [[0, 0, 1024, 60], [30, 101, 4, 300]]\n");
        assert!(
            e.starts_with("lab.toml:3: gpu[0].points[1][1] utilization (%)"),
            "{e}"
        );
        let e = err("[[gpu]]\nindex = 0\npoints = [\n [0, 0, 1, 6],\n [0, 1, 1, 6],\n]\n");
        assert!(e.starts_with("lab.toml:5: gpu[0].points[1][0] t"), "{e}");
        assert!(e.contains("not after"), "{e}");
        let e = err("[[gpu]]\nindex = 0\npoints = [[5, 0, 1, 6]]\n");
        assert!(e.contains("first point must be at t = 0"), "{e}");
        let e = err("[[gpu]]\nindex = 0\npoints = [[0, 0, 1.5, 6]]\n");
        assert!(
            e.contains("points[0][2] memory used (MiB): 1.5 is not an integer"),
            "{e}"
        );
        let e = err("[[gpu]]\nindex = 0\npoints = [[0, 0, 1]]\n");
        assert!(e.contains("lab.toml:3: gpu[0].points[0]: 3 values"), "{e}");
        let e = err("[[gpu]]\nindex = 0\npoint = [[0, 0, 1, 1]]\n");
        assert!(e.starts_with("lab.toml:3:"), "{e}");
        assert!(e.contains("point"), "{e}");
        let e = err("version = 2\n");
        assert!(e.contains("lab.toml:1: version: version 2"), "{e}");
        let e = err("processes = \"all\"\n");
        assert!(e.contains("processes: \"all\" is not"), "{e}");
        // Checked against the inventory: the index, and memory within the total.
        let e = err("\n[[gpu]]\nindex = 2\npoints = [[0, 0, 1, 1]]\n");
        assert!(
            e.starts_with("lab.toml:3: index: GPU 2 is not in the fake inventory"),
            "{e}"
        );
        let e = err("[[gpu]]\nindex = 1\npoints = [\n[0, 0, 1, 1],\n[1, 0, 40961, 1]]\n");
        assert!(
            e.starts_with("lab.toml:5: gpu 1 memory used (MiB): 40961 MiB"),
            "{e}"
        );
        let e = err("[[gpu]]\nindex = 0\npoints = [[0, 0, 1, 1]]\n[[gpu]]\nindex = 0\npoints = [[0, 0, 1, 1]]\n");
        assert!(
            e.contains("lab.toml:5: gpu[1].index: GPU 0 has two traces"),
            "{e}"
        );
        let e = Trace::load(Path::new("/nonexistent/t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/t.toml: cannot read it"), "{e}");
    }
}
