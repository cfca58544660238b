//! GPU inventory: what GPUs a host has and how busy they are.
//!
//! Two sources, always chosen explicitly: NVML (the real driver, through
//! `nvml-wrapper`, one long-lived handle because re-initializing costs
//! milliseconds) and a fake inventory for tests and demos
//! (`--fake-gpus "2xA100-80GB,1xRTX4090-24GB"`). When NVML cannot load, the
//! host reports zero GPUs and says why once; it never falls back to fakes.
//! `trace` replays a scripted trace over a fake inventory
//! (`--fake-gpu-trace`), with an energy counter that integrates its power.

mod trace;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use trace::{
    energy_mj as trace_energy_mj, real_clock, Clock, Point, Trace, TraceGpus, TraceProcesses,
    FAKE_GPU_TRACE_ENV, TRACE_VERSION,
};

/// Environment variable that selects a fake inventory.
pub const FAKE_GPUS_ENV: &str = "TRAINYARD_FAKE_GPUS";

/// A process using a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Its pid (in the host's pid namespace).
    pub pid: u32,
    /// GPU memory it uses, MiB, when the driver says.
    pub used_mib: Option<u64>,
    /// The user it runs as (filled in by the agent for processes that are
    /// not Trainyard's, so `gpus` can say whose they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One GPU's identity and live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML index (PCI bus order).
    pub index: u32,
    /// Stable identity; GPUs are tracked by UUID.
    pub uuid: String,
    /// Model name as the driver reports it.
    pub name: String,
    /// Total memory, MiB.
    pub memory_total_mib: u64,
    /// Used memory, MiB.
    pub memory_used_mib: u64,
    /// Utilization, percent.
    pub utilization_pct: Option<u32>,
    /// Temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power draw, W.
    pub power_w: Option<u32>,
    /// The energy counter: mJ used since the driver loaded (NVML's total
    /// energy consumption, Volta and newer), or since a fake trace began;
    /// `None` where the GPU has no counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// Processes on it.
    pub processes: Vec<GpuProcess>,
}

impl Gpu {
    /// Free memory, MiB.
    pub fn memory_free_mib(&self) -> u64 {
        self.memory_total_mib.saturating_sub(self.memory_used_mib)
    }
}

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML could not be loaded or initialized (no driver, no GPU).
    #[error("NVML is not available ({0}); this host reports no GPUs. Install the NVIDIA driver, or use --fake-gpus for a demo")]
    NoNvml(String),
    /// A query failed.
    #[error("NVML query {what} failed for GPU {index}: {reason}")]
    Query {
        /// Which query.
        what: &'static str,
        /// The GPU.
        index: u32,
        /// The driver's message.
        reason: String,
    },
    /// A `--fake-gpus` spec that does not parse.
    #[error(
        "invalid fake GPU spec {spec:?}: {reason} (expected e.g. \"2xA100-80GB,1xRTX4090-24GB\")"
    )]
    BadFakeSpec {
        /// The spec.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--fake-gpu-trace` file that cannot be read or is wrong.
    #[error("{}", trace_message(path, *line, field, reason))]
    BadTrace {
        /// The trace file.
        path: PathBuf,
        /// The line at fault, when one is.
        line: Option<usize>,
        /// The field at fault (`gpu[0].points[1][2] memory used (MiB)`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A trace given without a fake inventory to replay it on.
    #[error("--fake-gpu-trace {0} needs --fake-gpus (the inventory the trace replays on)")]
    TraceWithoutFakes(PathBuf),
}

fn trace_message(path: &Path, line: Option<usize>, field: &str, reason: &str) -> String {
    let mut s = path.display().to_string();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
    }
    if !field.is_empty() {
        s.push_str(&format!(": {field}"));
    }
    format!("{s}: {reason} (format: docs/gpu-trace-format.md)")
}

/// Something that can list a host's GPUs.
pub trait GpuSource: Send {
    /// The current state of every GPU.
    fn snapshot(&mut self) -> Result<Vec<Gpu>, GpuError>;
    /// `"nvml"`, `"fake"` or `"none"`, for display.
    fn kind(&self) -> &'static str;
    /// Why the host reports no GPUs, when that is the case.
    fn note(&self) -> Option<String> {
        None
    }
}

/// A fixed, explicitly requested fake inventory.
#[derive(Debug, Clone)]
pub struct FakeGpus {
    gpus: Vec<Gpu>,
}

impl FakeGpus {
    /// Parse `"2xA100-80GB,1xRTX4090-24GB"`: COUNT x MODEL-MEMORYGB, comma
    /// separated. `host` makes the fake UUIDs unique per host.
    pub fn parse(spec: &str, host: &str) -> Result<FakeGpus, GpuError> {
        let bad = |reason: String| GpuError::BadFakeSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut gpus = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (count, rest) = match part.split_once(['x', 'X']) {
                Some((c, r)) if c.chars().all(|ch| ch.is_ascii_digit()) && !c.is_empty() => (
                    c.parse::<u32>().map_err(|e| bad(format!("{part}: {e}")))?,
                    r,
                ),
                _ => (1, part),
            };
            let (model, mem) = rest
                .rsplit_once('-')
                .ok_or_else(|| bad(format!("{part}: no -MEMORYGB suffix")))?;
            let gb: u64 = mem
                .strip_suffix("GB")
                .or_else(|| mem.strip_suffix("gb"))
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| bad(format!("{part}: memory {mem:?} is not like 80GB")))?;
            if model.is_empty() || count == 0 || count > 64 {
                return Err(bad(format!("{part}: need a model and a count of 1..=64")));
            }
            for _ in 0..count {
                let index = gpus.len() as u32;
                gpus.push(Gpu {
                    index,
                    uuid: format!("GPU-fake-{host}-{index}"),
                    name: format!("Fake {model}"),
                    memory_total_mib: gb * 1024,
                    memory_used_mib: 0,
                    utilization_pct: Some(0),
                    temperature_c: Some(30),
                    power_w: Some(50),
                    energy_mj: None,
                    processes: Vec::new(),
                });
            }
        }
        if gpus.is_empty() {
            return Err(bad("no GPUs listed".into()));
        }
        Ok(FakeGpus { gpus })
    }
}

impl GpuSource for FakeGpus {
    fn snapshot(&mut self) -> Result<Vec<Gpu>, GpuError> {
        Ok(self.gpus.clone())
    }
    fn kind(&self) -> &'static str {
        "fake"
    }
}

/// The real driver through NVML, with one handle for the life of the process.
pub struct NvmlGpus {
    nvml: nvml_wrapper::Nvml,
}

impl NvmlGpus {
    /// Load and initialize NVML.
    pub fn init() -> Result<NvmlGpus, GpuError> {
        nvml_wrapper::Nvml::init()
            .map(|nvml| NvmlGpus { nvml })
            .map_err(|e| GpuError::NoNvml(e.to_string()))
    }
}

impl GpuSource for NvmlGpus {
    fn snapshot(&mut self) -> Result<Vec<Gpu>, GpuError> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let q = |what: &'static str, index: u32| {
            move |e: nvml_wrapper::error::NvmlError| GpuError::Query {
                what,
                index,
                reason: e.to_string(),
            }
        };
        let n = self.nvml.device_count().map_err(q("device_count", 0))?;
        let mut out = Vec::with_capacity(n as usize);
        for index in 0..n {
            let d = self
                .nvml
                .device_by_index(index)
                .map_err(q("device_by_index", index))?;
            let mem = d.memory_info().map_err(q("memory_info", index))?;
            let processes = d
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_mib: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b >> 20),
                        UsedGpuMemory::Unavailable => None,
                    },
                    user: None,
                })
                .collect();
            out.push(Gpu {
                index,
                uuid: d.uuid().map_err(q("uuid", index))?,
                name: d.name().map_err(q("name", index))?,
                memory_total_mib: mem.total >> 20,
                memory_used_mib: mem.used >> 20,
                utilization_pct: d.utilization_rates().ok().map(|u| u.gpu),
                temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
                power_w: d.power_usage().ok().map(|mw| mw / 1000),
                // Not supported before Volta: None.
                energy_mj: d.total_energy_consumption().ok(),
                processes,
            });
        }
        Ok(out)
    }
    fn kind(&self) -> &'static str {
        "nvml"
    }
}

/// A host with no usable GPUs; remembers why.
pub struct NoGpus {
    /// Why (shown once by the agent).
    pub reason: String,
}

impl GpuSource for NoGpus {
    fn snapshot(&mut self) -> Result<Vec<Gpu>, GpuError> {
        Ok(Vec::new())
    }
    fn kind(&self) -> &'static str {
        "none"
    }
    fn note(&self) -> Option<String> {
        Some(self.reason.clone())
    }
}

/// The inventory for this host: the fake one if `fake` is given (explicitly,
/// by flag or `TRAINYARD_FAKE_GPUS`), else NVML, else none (with a warning).
pub fn detect(fake: Option<&str>, host: &str) -> Result<Box<dyn GpuSource>, GpuError> {
    if let Some(spec) = fake {
        tracing::warn!(spec, "using a FAKE GPU inventory, as requested");
        return Ok(Box::new(FakeGpus::parse(spec, host)?));
    }
    match NvmlGpus::init() {
        Ok(n) => Ok(Box::new(n)),
        Err(e) => {
            tracing::warn!("{e}");
            Ok(Box::new(NoGpus {
                reason: e.to_string(),
            }))
        }
    }
}

/// [`detect`], or with a trace file (`--fake-gpu-trace`, only with a fake
/// inventory) the fake GPUs replaying it on the real clock.
pub fn detect_traced(
    fake: Option<&str>,
    trace: Option<&Path>,
    host: &str,
) -> Result<Box<dyn GpuSource>, GpuError> {
    let Some(path) = trace else {
        return detect(fake, host);
    };
    let spec = fake.ok_or_else(|| GpuError::TraceWithoutFakes(path.to_path_buf()))?;
    let trace = Trace::load(path)?;
    tracing::warn!(spec, trace = %path.display(), "using a FAKE GPU inventory replaying a trace, as requested");
    Ok(Box::new(TraceGpus::new(
        &FakeGpus::parse(spec, host)?,
        trace,
        real_clock(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_spec_parses_and_errors_name_the_part() {
        let mut f = FakeGpus::parse("2xA100-80GB, 1xRTX4090-24GB", "h1").unwrap();
        let g = f.snapshot().unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].uuid, "GPU-fake-h1-0");
        assert_eq!(g[2].name, "Fake RTX4090");
        assert_eq!(g[2].memory_total_mib, 24 * 1024);
        for bad in ["", "2xA100", "0xA100-80GB", "2xA100-80", "2x-80GB"] {
            let e = FakeGpus::parse(bad, "h").unwrap_err().to_string();
            assert!(e.contains("invalid fake GPU spec"), "{bad}: {e}");
        }
    }

    #[test]
    fn without_a_driver_nvml_says_so_and_detect_reports_no_gpus() {
        // This machine has no NVIDIA driver; where one exists this checks the real path.
        match NvmlGpus::init() {
            Err(e) => {
                assert!(e.to_string().contains("NVML is not available"));
                let mut s = detect(None, "h").unwrap();
                assert_eq!(s.kind(), "none");
                assert!(s.snapshot().unwrap().is_empty());
            }
            Ok(mut n) => {
                let gpus = n.snapshot().unwrap();
                assert!(gpus
                    .iter()
                    .all(|g| g.uuid.starts_with("GPU-") && g.memory_total_mib > 0));
            }
        }
        assert_eq!(detect(Some("1xH100-80GB"), "h").unwrap().kind(), "fake");
    }
}
