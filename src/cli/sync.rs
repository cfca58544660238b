//! `trainyard sync …`: send wandb runs to a W&B server (wandb/local) and
//! check what landed. In-process, no daemon needed, like `runs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use trainyard::wandb::index::{find_run_dirs, RunIndex};
use trainyard::wandb::sync::{
    self, creds, ledger::Ledger, Retry, SyncOptions, SyncOutcome, SyncReport, Syncer,
};
use trainyard::wandb::RunDir;

use super::output::{self, short};
use super::Ctx;

/// Sync runs to experiment trackers.
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Sync wandb runs to a W&B server (e.g. a self-hosted wandb/local), as
    /// `wandb sync` does: the run with its config, tags and name, history,
    /// system metrics, console output, summary, files, and its final state.
    ///
    /// Idempotent and resumable: the server's line counts and a ledger
    /// ($TRAINYARD_HOME/sync.db) decide what is sent, so an interrupted sync
    /// continues where it stopped, a synced run that did not change sends
    /// nothing, and one that grew sends only its new rows. Afterwards the
    /// server's copy is checked against the run (--no-verify skips that).
    ///
    /// A run resumed with its id (wandb.init(id=..., resume="allow")) leaves
    /// one directory per attempt: they are merged into one server run, later
    /// rows after earlier ones, as `wandb sync` does. Artifacts (wandb.Table,
    /// log_artifact) are not synced yet: they are listed per run as "not
    /// synced", count as mismatches, and make the exit status 1.
    ///
    /// The server: --host, else $WANDB_BASE_URL, else base_url in
    /// ~/.config/wandb/settings (what `wandb login --host` writes). The API
    /// key: $WANDB_API_KEY, else the ~/.netrc entry for the server's
    /// host:port. Keys are never stored by Trainyard nor logged.
    ///
    /// Examples:
    ///   trainyard sync wandb ~/proj/wandb/offline-run-20261122_133843-3k9x2a1b
    ///   trainyard sync wandb ~/proj/wandb --project resnet     # every run under it
    ///   trainyard sync wandb --all --host http://wandb.lab:8080
    ///   trainyard sync wandb --verify 3k9x2a1b
    ///   trainyard sync wandb --delete 3k9x2a1b
    #[command(verbatim_doc_comment)]
    Wandb(WandbArgs),
    /// Show every indexed run and its sync state per server.
    Status(StatusArgs),
}

/// `sync wandb`.
#[derive(Debug, Args)]
pub struct WandbArgs {
    /// Runs: run directories, directories to search for runs, or run ids of
    /// indexed runs (`trainyard runs scan`).
    #[arg(
        value_name = "RUN",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    runs: Vec<String>,
    /// Every run in the index.
    #[arg(long)]
    all: bool,
    /// The W&B server's URL [env: WANDB_BASE_URL] [default: base_url in ~/.config/wandb/settings]
    #[arg(long, value_name = "URL")]
    host: Option<String>,
    /// Entity (user or team) to sync into [default: the run's, else the server's default entity].
    #[arg(long, short)]
    entity: Option<String>,
    /// Project to sync into [default: the run's, else "uncategorized"].
    #[arg(long, short)]
    project: Option<String>,
    /// Sync under this run id (one run only), e.g. when the server refuses
    /// the run's own id because a run with it was deleted there.
    #[arg(long)]
    id: Option<String>,
    /// Only compare the server's copy with the run: history, system and
    /// console line counts, summary, state, files (size and MD5). Sends nothing.
    #[arg(long, conflicts_with = "delete")]
    verify: bool,
    /// Skip the check after syncing.
    #[arg(long, conflicts_with = "verify")]
    no_verify: bool,
    /// Delete the runs on the server (through its API) and forget them in the ledger.
    #[arg(long)]
    delete: bool,
    /// Look at runs the ledger says are synced and unchanged, too.
    #[arg(long)]
    force: bool,
    /// Runs synced at once (each uses a few connections).
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Attempts per request on connection errors, 429 and 5xx (backoff 0.25 s doubling to 8 s).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts: u32,
    /// Lines per file_stream request, in KiB (tests make it small).
    #[arg(long, hide = true, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=65536))]
    request_kib: u64,
}

/// `sync status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this server (a base URL as given to `sync wandb`).
    #[arg(long, value_name = "URL")]
    host: Option<String>,
}

pub fn run(ctx: &Ctx, cmd: SyncCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SyncCommand::Wandb(a) => wandb(ctx, a),
        SyncCommand::Status(a) => status(ctx, a),
    }
}

/// The run directories the arguments name.
fn resolve_runs(ctx: &Ctx, a: &WandbArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let index = || RunIndex::open(&ctx.home.runs_path());
    if a.all {
        for r in index()?.list(None, None)? {
            dirs.push(PathBuf::from(r.dir));
        }
        anyhow::ensure!(
            !dirs.is_empty(),
            "no runs indexed; `trainyard runs scan DIR` finds them (or name run directories)"
        );
        return Ok(dirs);
    }
    for r in &a.runs {
        let p = Path::new(r);
        if p.is_dir() {
            if RunDir::open(p).is_ok() {
                dirs.push(p.to_path_buf());
            } else {
                let found = find_run_dirs(p)?;
                anyhow::ensure!(
                    !found.is_empty(),
                    "{r}: no wandb run directories (offline-run-*, run-*) in it"
                );
                dirs.extend(found);
            }
        } else {
            let d = index()?.get(r).map_err(|e| {
                anyhow::anyhow!("{r} is neither a directory nor an indexed run ({e})")
            })?;
            dirs.push(PathBuf::from(d.run.dir));
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

fn wandb(ctx: &Ctx, a: WandbArgs) -> anyhow::Result<ExitCode> {
    let dirs = resolve_runs(ctx, &a)?;
    anyhow::ensure!(
        a.id.is_none() || dirs.len() == 1,
        "--id names one run, but {} runs were given",
        dirs.len()
    );
    let server = creds::resolve(a.host.as_deref(), &creds::process_env)?;
    let ledger = Arc::new(Ledger::open(&ctx.home.sync_path())?);
    let opts = SyncOptions {
        entity: a.entity.clone(),
        project: a.project.clone(),
        id: a.id.clone(),
        verify: !a.no_verify,
        force: a.force,
        jobs: usize::from(a.jobs),
        request_bytes: (a.request_kib * 1024) as usize,
        ..SyncOptions::default()
    };
    let retry = Retry {
        attempts: a.attempts,
        ..Retry::default()
    };
    let syncer = Syncer::new(server, ledger, opts, retry)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if a.delete {
        return delete(ctx, &rt, &syncer, &dirs);
    }
    let bar = output::Bar::new();
    let report = rt.block_on(async {
        if a.verify {
            syncer.verify_dirs(&dirs, &bar).await
        } else {
            syncer.sync_dirs(&dirs, &bar).await
        }
    });
    print_report(ctx, &report)?;
    let failed = report.failures().next().is_some();
    Ok(output::exit_code(failed))
}

fn print_report(ctx: &Ctx, report: &SyncReport) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(report);
    }
    for r in &report.runs {
        let what = r
            .path
            .clone()
            .unwrap_or_else(|| r.dir.display().to_string());
        match r.outcome {
            SyncOutcome::Synced => {
                let exit = r
                    .exit_code
                    .map(|c| format!(", exit {c}"))
                    .unwrap_or_default();
                println!(
                    "synced     {what}: +{} history, +{} system, +{} console lines, {} files{exit}",
                    r.history_sent, r.events_sent, r.log_sent, r.files_uploaded
                );
            }
            SyncOutcome::Unchanged => println!("unchanged  {what}"),
            SyncOutcome::Verified if r.mismatches.is_empty() => println!("verified   {what}"),
            SyncOutcome::Verified => println!("differs    {what}"),
            SyncOutcome::Failed => {}
        }
        for a in &r.artifacts_not_synced {
            println!("  not synced: artifact {a} (trainyard does not sync artifacts yet)");
        }
        for m in r.mismatches.iter().filter(|m| !m.starts_with("artifact ")) {
            println!("  mismatch: {m}");
        }
        for f in &r.files_missing {
            println!("  skipped:  files/{f} (named by the run, missing on disk)");
        }
        for n in &r.notes {
            println!("  note:     {n}");
        }
    }
    let failed: Vec<_> = report.failures().collect();
    let ok = report.runs.len() - failed.len();
    println!(
        "{} of {} runs ok on {} ({} requests)",
        ok,
        report.runs.len(),
        report.server,
        report.requests
    );
    for f in &failed {
        match &f.error {
            Some(e) => eprintln!("failed: {}: {e}", f.dir.display()),
            None => eprintln!(
                "failed: {}: the server's copy differs ({} mismatches)",
                f.dir.display(),
                f.mismatches.len()
            ),
        }
    }
    Ok(())
}

fn delete(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    syncer: &Syncer,
    dirs: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let mut results = Vec::new();
    let mut failed = false;
    for d in dirs {
        match rt.block_on(syncer.delete(d)) {
            Ok(path) => {
                if !ctx.json {
                    println!("deleted    {path} on {}", syncer.server_url());
                }
                results.push(serde_json::json!({"dir": d, "deleted": path}));
            }
            Err(e) => {
                failed = true;
                if !ctx.json {
                    eprintln!("failed: {}: {e}", d.display());
                }
                results.push(serde_json::json!({"dir": d, "error": e.to_string()}));
            }
        }
    }
    if ctx.json {
        output::json(&results)?;
    }
    Ok(output::exit_code(failed))
}

fn status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let index = RunIndex::open(&ctx.home.runs_path())?;
    let ledger = Ledger::open(&ctx.home.sync_path())?;
    let rows = sync::status(&index, &ledger, a.host.as_deref())?;
    if ctx.json {
        output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no runs indexed or synced; `trainyard runs scan DIR` finds runs");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<16} {:<26} {:<10} {:>8} {:>6}  LAST SYNC",
        "RUN", "PROJECT", "SERVER", "STATE", "HISTORY", "FILES"
    );
    for r in &rows {
        let server = r
            .server
            .as_deref()
            .map(|s| s.split_once("://").map_or(s, |(_, h)| h))
            .unwrap_or("-");
        println!(
            "{:<10} {:<16} {:<26} {:<10} {:>8} {:>6}  {}",
            short(&r.run_id, 10),
            short(&r.project, 16),
            short(server, 26),
            r.state,
            r.history_lines
                .map(|n| format!("{n}/{}", r.history_rows))
                .unwrap_or_else(|| "-".into()),
            r.files.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.updated_at
                .map(|t| output::time((t * 1e9) as i64))
                .unwrap_or_else(|| "-".into()),
        );
        if !r.detail.is_empty() {
            println!("  {}", r.detail);
        }
    }
    Ok(ExitCode::SUCCESS)
}
