//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! the GPU gauges must carry the DCGM exporter's exact names, labels and
//! types (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` is a counter without a
//! `_total` suffix, which an OpenMetrics encoder would add), and every value
//! is computed at scrape time from state the daemon already holds, so a
//! registry of live metric objects would only be a second copy of it.
//!
//! [`Exposition`] keeps each family's samples together after one `# HELP`
//! and `# TYPE`, escapes label values and help text as the format says, and
//! writes numbers as Prometheus parses them (`NaN`, `+Inf`, `-Inf`).

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::gpu::Gpu;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (until the process restarts).
    Counter,
    /// Cumulative buckets, a sum and a count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    families: BTreeSet<String>,
}

/// Whether `name` is a valid metric or label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`;
/// label names without `:`).
fn valid_name(name: &str, label: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (!label && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (!label && c == ':'))
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A number as the format spells it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust prints the shortest string that reads back as the same f64.
        format!("{v}")
    }
}

impl Exposition {
    /// A new, empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Start family `name`: its help and type. Its samples follow, before
    /// the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        assert!(valid_name(name, false), "metric name {name:?}");
        assert!(
            self.families.insert(name.to_string()),
            "family {name} written twice"
        );
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
    }

    /// One sample of the current family (`name` may carry the family's
    /// `_bucket`, `_sum` or `_count` suffix).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                assert!(valid_name(k, true), "label name {k:?}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    /// A histogram's samples: cumulative `_bucket`s (with `+Inf`), `_sum`
    /// and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, bound) in h
            .bounds
            .iter()
            .chain(std::iter::once(&f64::INFINITY))
            .enumerate()
        {
            cumulative += h.counts[i];
            let le = format_value(*bound);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A histogram's state: counts per bucket (the last one above every bound).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending).
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Count one value.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A GPU as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct GpuMetric<'a> {
    /// The host's name (`Hostname`).
    pub hostname: &'a str,
    /// The GPU's live state.
    pub gpu: &'a Gpu,
    /// The job holding it, if any (`hpc_job`).
    pub job: Option<String>,
}

/// The GPU gauges, with the DCGM exporter's names, units and labels (`gpu`,
/// `UUID`, `modelName`, `Hostname`; `hpc_job` on a GPU an attempt holds), so
/// dashboards made for that exporter work unchanged. A value the GPU does
/// not report is left out, as DCGM leaves out unsupported fields. The
/// holding job is `hpc_job`, as the DCGM exporter's HPC job mapping names
/// it: a `job` label would collide with Prometheus' scrape job and be
/// renamed `exported_job`.
pub fn dcgm(out: &mut Exposition, gpus: &[GpuMetric<'_>]) {
    type Field = fn(&Gpu) -> Option<f64>;
    let fields: [(&str, Kind, &str, Field); 6] = [
        (
            "DCGM_FI_DEV_GPU_UTIL",
            Kind::Gauge,
            "GPU utilization (in %).",
            |g| g.utilization_pct.map(f64::from),
        ),
        (
            "DCGM_FI_DEV_FB_USED",
            Kind::Gauge,
            "Framebuffer memory used (in MiB).",
            |g| Some(g.memory_used_mib as f64),
        ),
        (
            "DCGM_FI_DEV_FB_FREE",
            Kind::Gauge,
            "Framebuffer memory free (in MiB).",
            |g| Some(g.memory_free_mib() as f64),
        ),
        (
            "DCGM_FI_DEV_GPU_TEMP",
            Kind::Gauge,
            "GPU temperature (in C).",
            |g| g.temperature_c.map(f64::from),
        ),
        (
            "DCGM_FI_DEV_POWER_USAGE",
            Kind::Gauge,
            "Power draw (in W).",
            |g| g.power_w.map(f64::from),
        ),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            Kind::Counter,
            "Total energy consumption since boot (in mJ).",
            |g| g.energy_mj.map(|e| e as f64),
        ),
    ];
    for (name, kind, help, value) in fields {
        let mut started = false;
        for m in gpus {
            let Some(v) = value(m.gpu) else { continue };
            if !started {
                out.family(name, kind, help);
                started = true;
            }
            let index = m.gpu.index.to_string();
            let mut labels = vec![
                ("gpu", index.as_str()),
                ("UUID", m.gpu.uuid.as_str()),
                ("modelName", m.gpu.name.as_str()),
                ("Hostname", m.hostname),
            ];
            if let Some(job) = &m.job {
                labels.push(("hpc_job", job));
            }
            out.sample(name, &labels, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_escapes_and_groups() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "a \\ help\nline");
        e.sample("x_total", &[("a", "q\"uo\\te\nd")], 1.0);
        e.sample("x_total", &[], f64::NAN);
        e.family("h", Kind::Histogram, "h");
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        e.histogram("h", &[("k", "v")], &h);
        assert_eq!(
            e.finish(),
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\\nd\"} 1\nx_total NaN\n\
             # HELP h h\n# TYPE h histogram\n\
             h_bucket{k=\"v\",le=\"1\"} 2\nh_bucket{k=\"v\",le=\"10\"} 3\n\
             h_bucket{k=\"v\",le=\"+Inf\"} 4\nh_sum{k=\"v\"} 56.5\nh_count{k=\"v\"} 4\n"
        );
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(-f64::INFINITY), "-Inf");
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_is_written_once() {
        let mut e = Exposition::new();
        e.family("a", Kind::Gauge, "");
        e.family("a", Kind::Gauge, "");
    }
}
