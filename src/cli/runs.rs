//! `trainyard runs …`: index wandb run directories and look at them. Works on
//! the local index directly (no daemon needed), like `data`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use trainyard::wandb::index::{ListFilter, RunIndex, ScanOptions};
use trainyard::wandb::Value;

use super::output::{self, short};
use super::Ctx;

/// Work with wandb runs found on this machine.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Find wandb run directories (offline-run-*, run-*) under DIRs and index
    /// them: config, summary, history, system metrics, console, files.
    /// Unchanged runs are skipped; runs that grew are read from where the
    /// last scan stopped.
    Scan(ScanArgs),
    /// List indexed runs, newest first.
    Ls(LsArgs),
    /// Show a run: identity, state, config, summary, files.
    Show {
        /// Run id (or run directory).
        run: String,
    },
    /// Print a run's history (wandb.log rows) as a table or CSV.
    History(HistoryArgs),
}

/// `runs scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Directories to search (a run directory, a `wandb/` directory, or any
    /// parent; searched up to 8 levels deep).
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// A run without an exit record whose file has not changed for this long
    /// is shown as killed.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    assume_killed_after: std::time::Duration,
}

/// `runs ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this project.
    #[arg(long)]
    project: Option<String>,
    /// Only this state (running, finished, crashed, killed).
    #[arg(long)]
    state: Option<String>,
    /// Only runs with this tag (repeat for runs with all of them).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only runs started at or after this time: a date (2026-11-22, UTC
    /// midnight), a UTC time (2026-11-22T13:00:00Z), or an age (3d, 12h).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<f64>,
    /// Only runs started before this time (same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<f64>,
    /// Only runs on this host.
    #[arg(long)]
    host: Option<String>,
}

/// A point in time for --since/--until, as Unix seconds.
fn parse_when(s: &str) -> Result<f64, String> {
    let at = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .map_err(|e| e.to_string())
    };
    if let Ok(d) = humantime::parse_duration(s) {
        return at(std::time::SystemTime::now() - d);
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .map_err(|_| {
            format!("{s:?} is not a date (2026-11-22), a UTC time (2026-11-22T13:00:00Z) or an age (3d)")
        })
        .and_then(at)
}

/// `runs history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Run id (or run directory).
    run: String,
    /// Comma-separated metric keys (dotted for nested ones), or globs of
    /// them: `*` matches any run of characters, `?` one (`system.*` is every
    /// system metric, `loss*` every key starting with loss). Quote globs
    /// from the shell. Default: every logged metric.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// Print CSV (step, runtime, then one column per key).
    #[arg(long)]
    csv: bool,
}

pub fn run(ctx: &Ctx, cmd: RunsCommand) -> anyhow::Result<ExitCode> {
    let index = RunIndex::open(&ctx.home.runs_path())?;
    match cmd {
        RunsCommand::Scan(a) => scan(ctx, &index, a),
        RunsCommand::Ls(a) => ls(ctx, &index, a),
        RunsCommand::Show { run } => show(ctx, &index, &run),
        RunsCommand::History(a) => history(ctx, &index, a),
    }
}

fn scan(ctx: &Ctx, index: &RunIndex, a: ScanArgs) -> anyhow::Result<ExitCode> {
    let report = index.scan(
        &a.dirs,
        ScanOptions {
            stale_after: a.assume_killed_after,
        },
    )?;
    let failed = !report.errors.is_empty();
    if ctx.json {
        output::json(&report)?;
    } else {
        for r in &report.runs {
            match (&r.outcome, &r.error) {
                (Some(o), _) => {
                    let what = serde_json::to_value(o)?;
                    let what = what.as_str().unwrap_or("");
                    let rows = if r.rows_added > 0 {
                        format!(" (+{} rows)", r.rows_added)
                    } else {
                        String::new()
                    };
                    println!("{what:<10} {:<10} {}{rows}", r.id, r.dir);
                }
                (None, Some(e)) => eprintln!("error: {e}"),
                (None, None) => {}
            }
        }
        println!(
            "{} runs found: {} new, {} updated, {} unchanged, {} failed",
            report.found,
            report.new,
            report.updated,
            report.unchanged,
            report.errors.len()
        );
    }
    Ok(output::exit_code(failed))
}

fn ls(ctx: &Ctx, index: &RunIndex, a: LsArgs) -> anyhow::Result<ExitCode> {
    if let Some(s) = &a.state {
        anyhow::ensure!(
            ["running", "finished", "crashed", "killed"].contains(&s.as_str()),
            "--state: unknown state {s:?} (running, finished, crashed, killed)"
        );
    }
    if let (Some(s), Some(u)) = (a.since, a.until) {
        anyhow::ensure!(s < u, "--since must be before --until");
    }
    let runs = index.list_filtered(&ListFilter {
        project: a.project,
        state: a.state,
        tags: a.tags,
        since: a.since,
        until: a.until,
        host: a.host,
    })?;
    if ctx.json {
        output::json(&runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs (indexed and matching); `trainyard runs scan DIR` finds them");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<16} {:<22} {:<9} {:<20} {:>9} {:>7}",
        "ID", "PROJECT", "NAME", "STATE", "STARTED", "RUNTIME", "ROWS"
    );
    for r in &runs {
        let started = r
            .start_time
            .map(|t| output::time((t * 1e9) as i64))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<16} {:<22} {:<9} {:<20} {:>9} {:>7}",
            short(&r.id, 10),
            short(&r.project, 16),
            short(&r.name, 22),
            r.state,
            started,
            r.runtime.map(output::secs).unwrap_or_else(|| "-".into()),
            r.history_rows
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tree(prefix: &str, m: &std::collections::BTreeMap<String, Value>) {
    for (k, v) in m {
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                print_tree(&format!("{prefix}{k}."), inner)
            }
            _ => println!("  {prefix}{k} = {}", short(&v.to_extended_json(), 100)),
        }
    }
}

fn show(ctx: &Ctx, index: &RunIndex, run: &str) -> anyhow::Result<ExitCode> {
    let d = index.get(run)?;
    if ctx.json {
        output::json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &d.run;
    println!("run       {}  {}", r.id, r.name);
    println!(
        "project   {}{}",
        if r.entity.is_empty() {
            String::new()
        } else {
            format!("{}/", r.entity)
        },
        r.project
    );
    let exit = r
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    println!("state     {}{exit}", r.state);
    if let Some(t) = r.start_time {
        println!("started   {}", output::time((t * 1e9) as i64));
    }
    if let Some(t) = r.runtime {
        println!("runtime   {}", output::secs(t));
    }
    if !r.tags.is_empty() {
        println!("tags      {}", r.tags.join(", "));
    }
    if !r.host.is_empty() {
        println!("host      {}", r.host);
    }
    if r.gpu_count > 0 || !r.gpu.is_empty() {
        println!("gpu       {} x {}", r.gpu_count, r.gpu);
    }
    println!("dir       {}", r.dir);
    println!(
        "rows      {} history, {} system samples, {} console lines",
        r.history_rows, r.system_rows, d.console_lines
    );
    if let Some(o) = d.meta.incomplete_tail {
        println!(
            "note      incomplete tail at offset {o} (the writer was cut off or is still writing)"
        );
    }
    for diag in &d.meta.diagnostics {
        println!("note      {diag}");
    }
    let config: std::collections::BTreeMap<String, Value> = d
        .config
        .iter()
        .filter(|(k, _)| k.as_str() != "_wandb")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !r.keys.is_empty() {
        println!("metrics   {}", r.keys.join(", "));
    }
    if !d.system_keys.is_empty() {
        println!("system    {}", d.system_keys.join(", "));
    }
    println!("config:");
    print_tree("", &config);
    println!("summary:");
    let summary: std::collections::BTreeMap<String, Value> = r
        .summary
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    print_tree("", &summary);
    if !d.meta.files.is_empty() {
        println!("files:");
        for f in &d.meta.files {
            let size = f
                .size
                .map(output::bytes)
                .unwrap_or_else(|| "dangling".into());
            println!("  {:<40} {size}", f.path);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cell(v: &Option<Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_extended_json(),
    }
}

fn history(ctx: &Ctx, index: &RunIndex, a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let t = index.history(&a.run, &a.keys)?;
    if let Some((k, _)) = t
        .columns
        .iter()
        .find(|(_, c)| c.iter().all(Option::is_none))
    {
        if !a.keys.is_empty() {
            anyhow::bail!(
                "run {} has no metric {k:?}; `trainyard runs show {}` lists its keys",
                a.run,
                a.run
            );
        }
    }
    if ctx.json {
        let cols: serde_json::Map<String, serde_json::Value> = t
            .columns
            .iter()
            .map(|(k, c)| (k.clone(), serde_json::to_value(c).unwrap_or_default()))
            .collect();
        output::json(&serde_json::json!({
            "steps": t.steps, "runtime": t.runtime, "timestamps": t.timestamps, "columns": cols,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if a.csv {
        let mut w = csv_writer();
        let mut head = vec!["step".to_string(), "runtime".to_string()];
        head.extend(t.columns.iter().map(|(k, _)| k.clone()));
        w.row(&head);
        for i in 0..t.steps.len() {
            let mut row = vec![
                t.steps[i].to_string(),
                t.runtime[i].map(|x| x.to_string()).unwrap_or_default(),
            ];
            row.extend(t.columns.iter().map(|(_, c)| cell(&c[i])));
            w.row(&row);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let width = |k: &str| k.len().clamp(8, 24);
    let mut line = format!("{:>8}", "step");
    for (k, _) in &t.columns {
        line.push_str(&format!("  {:>w$}", short(k, 24), w = width(k)));
    }
    println!("{line}");
    for i in 0..t.steps.len() {
        let mut line = format!("{:>8}", t.steps[i]);
        for (k, c) in &t.columns {
            line.push_str(&format!("  {:>w$}", short(&cell(&c[i]), 24), w = width(k)));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// RFC 4180 CSV on stdout (quotes only where needed).
struct Csv(std::io::BufWriter<std::io::Stdout>);

fn csv_writer() -> Csv {
    Csv(std::io::BufWriter::new(std::io::stdout()))
}

impl Csv {
    fn row(&mut self, cells: &[String]) {
        use std::io::Write;
        let line: Vec<String> = cells
            .iter()
            .map(|c| {
                if c.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.clone()
                }
            })
            .collect();
        let _ = writeln!(self.0, "{}", line.join(","));
    }
}
