//! `trainyard usage`: the daemon's usage report as a table, CSV or JSON.

use std::process::ExitCode;

use clap::Args;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::jobs::{client, rt, DaemonArgs};
use super::{output, Ctx};
use trainyard::api::{UsageAnswer, UsageRow};
use trainyard::usage::{self, Dim};

/// `trainyard usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Break the hours down by these, in order (repeat, or comma-separate):
    /// project, user, team, host, model, tag.
    #[arg(long, value_name = "DIM", value_delimiter = ',', value_parser = parse_dim)]
    by: Vec<Dim>,
    /// From this day or time on: 2026-11-01, 2026-11, 2026-11-01T09:00, an
    /// RFC 3339 time, `today`, or an age such as 7d [default: 30 days ago].
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Up to this day (included) or time [default: now].
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// One row per day (of the lab's time zone).
    #[arg(long, conflicts_with = "monthly")]
    daily: bool,
    /// One row per calendar month.
    #[arg(long)]
    monthly: bool,
    /// Print CSV (a header, the rows, then the totals row).
    #[arg(long)]
    csv: bool,
    /// Days and months in this IANA zone instead of the lab's.
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
}

fn parse_dim(s: &str) -> Result<Dim, String> {
    s.trim()
        .parse()
        .map_err(|e: usage::UsageError| e.to_string())
}

pub fn usage(ctx: &Ctx, d: &DaemonArgs, a: UsageArgs) -> anyhow::Result<ExitCode> {
    // Refuse what cannot parse here, naming the flag; the daemon reads the
    // dates in the lab's zone.
    let zone = match &a.tz {
        Some(z) => usage::parse_zone(z)?,
        None => TimeZone::system(),
    };
    usage::parse_range(
        ["--since", "--until"],
        a.since.as_deref(),
        a.until.as_deref(),
        &zone,
        Timestamp::now(),
        i64::MIN,
    )?;
    let mut params: Vec<(&str, String)> = Vec::new();
    if !a.by.is_empty() {
        let by: Vec<&str> = a.by.iter().map(|d| d.name()).collect();
        params.push(("by", by.join(",")));
    }
    for (k, v) in [
        ("since", &a.since),
        ("until", &a.until),
        ("timezone", &a.tz),
    ] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    if a.daily {
        params.push(("period", "daily".into()));
    } else if a.monthly {
        params.push(("period", "monthly".into()));
    }
    let r = rt()?.block_on(client(ctx, d)?.usage(&params))?;
    if ctx.json {
        output::json(&r)?;
    } else if a.csv {
        print!("{}", csv(&r));
    } else {
        print!("{}", table(&r));
    }
    Ok(ExitCode::SUCCESS)
}

const COLUMNS: [&str; 7] = [
    "alloc_gpu_h",
    "used_gpu_h",
    "idle_gpu_h",
    "energy_kwh",
    "peak_mem_mib",
    "jobs",
    "runs",
];

fn numbers(r: &UsageRow) -> [String; 7] {
    [
        format!("{:.2}", r.allocated_gpu_h),
        format!("{:.2}", r.used_gpu_h),
        format!("{:.2}", r.idle_gpu_h),
        format!("{:.3}", r.energy_kwh),
        r.peak_mem_mib.to_string(),
        r.jobs.to_string(),
        r.runs.to_string(),
    ]
}

fn head(r: &UsageAnswer) -> Vec<String> {
    let mut h = Vec::new();
    if r.period != usage::Period::Total {
        h.push("period".to_string());
    }
    h.extend(r.by.iter().map(|d| d.name().to_string()));
    h
}

fn labels(r: &UsageAnswer, row: &UsageRow) -> Vec<String> {
    let mut l = Vec::new();
    if r.period != usage::Period::Total {
        l.push(row.period.clone().unwrap_or_default());
    }
    l.extend(row.key.iter().cloned());
    l
}

fn total_labels(r: &UsageAnswer) -> Vec<String> {
    let mut l = vec![String::new(); head(r).len()];
    match l.first_mut() {
        Some(f) => *f = "total".into(),
        None => l.push("total".into()),
    }
    l
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(r: &UsageAnswer) -> String {
    let mut out = String::new();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",")
            + "\n"
    };
    let mut h = head(r);
    if h.is_empty() {
        h.push("key".into());
    }
    h.extend(COLUMNS.iter().map(|c| c.to_string()));
    out += &line(h);
    for row in &r.rows {
        let mut l = labels(r, row);
        if l.is_empty() {
            l.push(String::new());
        }
        l.extend(numbers(row));
        out += &line(l);
    }
    let mut t = total_labels(r);
    t.extend(numbers(&r.total));
    out += &line(t);
    out
}

fn table(r: &UsageAnswer) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut h: Vec<String> = head(r).iter().map(|s| s.to_uppercase()).collect();
    let keys = h.len();
    if keys == 0 {
        h.push(String::new());
    }
    h.extend(
        [
            "ALLOC GPU-h",
            "USED GPU-h",
            "IDLE GPU-h",
            "ENERGY kWh",
            "PEAK MiB",
            "JOBS",
            "RUNS",
        ]
        .map(String::from),
    );
    rows.push(h);
    // Without a breakdown the totals row says it all.
    if keys > 0 {
        for row in &r.rows {
            let mut l = labels(r, row);
            l.extend(numbers(row));
            rows.push(l);
        }
    }
    let mut t = total_labels(r);
    t.extend(numbers(&r.total));
    rows.push(t);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let key_cols = rows[0].len() - COLUMNS.len();
    let mut out = format!("GPU usage {} to {} ({})\n", r.since, r.until, r.timezone);
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < key_cols {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    if !r.links.is_empty() {
        out += &format!(
            "{} wandb run(s) counted as the job attempts that produced them\n",
            r.links.len()
        );
    }
    for c in &r.conflicts {
        let who: Vec<String> = c.claimants.iter().map(holder).collect();
        let stamp = |ms: i64| {
            Timestamp::from_millisecond(ms)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        out += &format!(
            "overlap on {} {} from {} to {}: {} claimed it at once; counted once, for the first\n",
            c.host,
            c.gpu,
            stamp(c.from_ms),
            stamp(c.to_ms),
            who.join(" and ")
        );
    }
    out
}

fn holder(h: &usage::Holder) -> String {
    match h {
        usage::Holder::Job { job, attempt } => format!("job {job} (attempt {attempt})"),
        usage::Holder::Run { run } => format!("run {run}"),
    }
}
