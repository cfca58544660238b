//! `trainyard watch …`: add, ls, pause, resume, rm and log watch rules
//! over the daemon's API (the daemon runs them). The rules live in
//! `trainyard::watch`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use trainyard::watch::{LogEntry, NewWatch, WatchInfo};

use super::jobs::{self, DaemonArgs};
use super::output::{self, short};
use super::Ctx;

/// `trainyard watch`.
#[derive(Debug, Subcommand)]
pub enum WatchCommand {
    /// Watch a directory: snapshot a dataset when its files stop changing
    /// (or a marker file appears), or sync the wandb runs under it when
    /// they end. Local filesystems are watched with inotify; NFS, SMB/CIFS,
    /// FUSE and 9p mounts are polled.
    ///
    /// Examples:
    ///   trainyard watch add /data/imagenet --snapshot imagenet --quiet 60s --push lab-s3
    ///   trainyard watch add /nas/exports/day --snapshot day --when-file _SUCCESS --tag-format 'auto-{date}'
    ///   trainyard watch add /shared/wandb --sync-wandb --host http://wandb.lab:8080 --live 5m
    #[command(verbatim_doc_comment)]
    Add(Box<AddArgs>),
    /// List watches: path, what they do, state (idle, pending, working,
    /// postponed, missing, paused, failed), events or polling, last action.
    Ls,
    /// Pause a watch: nothing is snapshotted or synced until it is resumed.
    Pause {
        /// The watch: its id, or its path.
        watch: String,
    },
    /// Resume a paused watch (it checks the directory for changes first).
    Resume {
        /// The watch: its id, or its path.
        watch: String,
    },
    /// Remove a watch and its log (versions and synced runs stay).
    Rm {
        /// The watch: its id, or its path.
        watch: String,
    },
    /// Every action of a watch (or of all): what triggered it and what it
    /// produced, or why it failed. Newest last.
    Log {
        /// The watch: its id, or its path [default: all].
        watch: Option<String>,
        /// At most this many lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `trainyard watch add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The directory to watch.
    path: PathBuf,
    /// Snapshot the directory into this dataset when it changes.
    #[arg(long, value_name = "NAME", required_unless_present = "sync_wandb")]
    snapshot: Option<String>,
    /// Sync the wandb runs under the directory to a W&B server as they end.
    #[arg(long, conflicts_with = "snapshot")]
    sync_wandb: bool,
    /// Snapshot once nothing has changed for this long.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    quiet: String,
    /// Snapshot anyway once changes have gone on this long (files still
    /// being written then postpone it: never a torn version).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    max_wait: String,
    /// Snapshot when this file (relative to the directory) is written,
    /// e.g. _SUCCESS, instead of after the quiet period.
    #[arg(long, value_name = "FILE")]
    when_file: Option<String>,
    /// Push each new version to this remote.
    #[arg(long, value_name = "REMOTE")]
    push: Option<String>,
    /// Tag each new version: {date}, {time}, {datetime}, {n} (UTC), e.g. 'auto-{date}'.
    #[arg(long, value_name = "FORMAT")]
    tag_format: Option<String>,
    /// With --sync-wandb: the W&B server [default: WANDB_BASE_URL, else wandb's settings].
    #[arg(long, value_name = "URL", requires = "sync_wandb")]
    host: Option<String>,
    /// With --sync-wandb: stream running runs' new rows at this interval.
    #[arg(long, value_name = "DURATION", requires = "sync_wandb")]
    live: Option<String>,
    /// Poll even if events would work (they are used on local filesystems).
    #[arg(long)]
    poll: bool,
    /// How often to poll.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    poll_interval: String,
}

fn resolve(list: &[WatchInfo], key: &str) -> anyhow::Result<i64> {
    if let Ok(id) = key.parse::<i64>() {
        if list.iter().any(|w| w.id == id) {
            return Ok(id);
        }
    }
    let canon = std::fs::canonicalize(key)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string));
    let hits: Vec<&WatchInfo> = list
        .iter()
        .filter(|w| w.path == key.trim_end_matches('/') || canon.as_deref() == Some(&w.path))
        .collect();
    match hits.as_slice() {
        [w] => Ok(w.id),
        [] => anyhow::bail!("no watch {key:?}; `trainyard watch ls` lists them"),
        _ => anyhow::bail!("several watches have the path {key}; name one by its id"),
    }
}

pub fn run(ctx: &Ctx, d: &DaemonArgs, cmd: WatchCommand) -> anyhow::Result<ExitCode> {
    let c = jobs::client(ctx, d)?;
    let rt = jobs::rt()?;
    match cmd {
        WatchCommand::Add(a) => {
            let a = *a;
            let path = std::path::absolute(&a.path)?;
            let new = NewWatch {
                path,
                snapshot: a.snapshot,
                sync_wandb: a.sync_wandb,
                quiet: Some(a.quiet),
                max_wait: Some(a.max_wait),
                when_file: a.when_file,
                push: a.push,
                tag_format: a.tag_format,
                host: a.host,
                live: a.live,
                poll: a.poll,
                poll_interval: Some(a.poll_interval),
            };
            let info = rt.block_on(c.add_watch(&new))?;
            if ctx.json {
                output::json(&info)?;
            } else {
                println!("added watch {}: {}", info.id, what(&info));
            }
        }
        WatchCommand::Ls => {
            let list = rt.block_on(c.watches())?;
            if ctx.json {
                output::json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                println!("no watches (add one with trainyard watch add)");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>4} {:<36} {:<24} {:<10} {:<8} LAST",
                "ID", "PATH", "DOES", "STATE", "MODE"
            );
            for w in &list {
                let last = w.last.as_ref().map(line).unwrap_or_else(|| "-".into());
                println!(
                    "{:>4} {:<36} {:<24} {:<10} {:<8} {}",
                    w.id,
                    short(&output::clean(&w.path), 36),
                    short(&does(w), 24),
                    w.state.as_str(),
                    w.mode,
                    short(&output::clean(&last), 70)
                );
                if !w.detail.is_empty() {
                    println!("     {}", output::clean(&w.detail));
                }
            }
        }
        WatchCommand::Pause { watch } => {
            let id = resolve(&rt.block_on(c.watches())?, &watch)?;
            let info = rt.block_on(c.pause_watch(id, true))?;
            print_info(ctx, &info, "paused")?;
        }
        WatchCommand::Resume { watch } => {
            let id = resolve(&rt.block_on(c.watches())?, &watch)?;
            let info = rt.block_on(c.pause_watch(id, false))?;
            print_info(ctx, &info, "resumed")?;
        }
        WatchCommand::Rm { watch } => {
            let id = resolve(&rt.block_on(c.watches())?, &watch)?;
            rt.block_on(c.remove_watch(id))?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": id }))?;
            } else {
                println!("removed watch {id} (its versions and synced runs stay)");
            }
        }
        WatchCommand::Log { watch, limit } => {
            let id = match watch {
                Some(w) => Some(resolve(&rt.block_on(c.watches())?, &w)?),
                None => None,
            };
            let mut log = rt.block_on(c.watch_log(id, limit))?;
            log.reverse();
            if ctx.json {
                output::json(&log)?;
                return Ok(ExitCode::SUCCESS);
            }
            if log.is_empty() {
                println!("nothing logged yet");
            }
            for e in &log {
                println!(
                    "{}",
                    output::clean(&format!("{} #{} {}", when(e.at_ns), e.watch, line(e)))
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_info(ctx: &Ctx, info: &WatchInfo, what: &str) -> anyhow::Result<()> {
    if ctx.json {
        output::json(info)
    } else {
        println!("{what} watch {}", info.id);
        Ok(())
    }
}

fn does(w: &WatchInfo) -> String {
    match &w.dataset {
        Some(d) => format!("snapshot {d}"),
        None => "sync wandb runs".into(),
    }
}

fn what(w: &WatchInfo) -> String {
    let mut s = format!("{} {}", does(w), w.path);
    if let Some(m) = &w.when_file {
        s.push_str(&format!(" when {m} is written"));
    } else if w.dataset.is_some() {
        s.push_str(&format!(
            " after {} quiet (at most {})",
            humantime::format_duration(w.quiet()),
            humantime::format_duration(w.max_wait())
        ));
    }
    if let Some(r) = &w.push {
        s.push_str(&format!(", push to {r}"));
    }
    if w.poll {
        s.push_str(&format!(
            ", polling every {}",
            humantime::format_duration(w.poll_interval())
        ));
    }
    s
}

fn when(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ns.to_string())
}

/// `snapshot created (quiet for 60s after 3 changes): imagenet@1a2b3c…`
fn line(e: &LogEntry) -> String {
    let mut s = format!("{} {} ({})", e.action, e.result, e.trigger);
    if !e.detail.is_empty() {
        s.push_str(": ");
        s.push_str(&e.detail);
    }
    s
}
