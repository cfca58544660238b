//! `trainyard notify`: notification sinks and their delivery log, over the
//! daemon's API (`/api/v1/notify`). Sinks in the daemon's config.toml are
//! listed but edited only there.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::jobs::{client, rt, DaemonArgs};
use super::{output, Ctx};
use trainyard::api::AddSinkRequest;
use trainyard::notify::{DeliveryState, SinkKind};

/// `trainyard notify …`.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Add a sink: where notifications go and which ones.
    ///
    /// Example: trainyard notify add team --slack "$SLACK_WEBHOOK_URL" --events job_failed,idle_stopped --project detr
    ///
    /// The URL is a secret: the daemon keeps it in its 0600 queue.db and
    /// shows only its scheme and host. Prefer passing it from an
    /// environment variable, as above, so it stays out of shell history.
    Add(Box<AddArgs>),
    /// List the sinks (URLs as scheme and host only).
    Ls {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Remove a sink added with `notify add` (its pending notifications
    /// become dead letters).
    Rm {
        /// The sink.
        name: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Send a test message to a sink and wait for the outcome.
    Test {
        /// The sink.
        name: String,
        /// How long to wait for the delivery.
        #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Deliveries, newest first: delivered, pending (with their next try)
    /// and dead letters (given up on after the last try).
    Log {
        /// Only deliveries in this state: pending, delivered or dead.
        #[arg(long, value_name = "STATE", value_parser = ["pending", "delivered", "dead"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// `trainyard notify add`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sink").required(true).args(["webhook", "slack", "discord", "ntfy", "desktop"])))]
pub struct AddArgs {
    /// The sink's name (lowercase letters, digits, '-', '_').
    name: String,
    /// A generic JSON webhook URL (the event as JSON; docs/notify-format.md).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// A Slack incoming-webhook URL.
    #[arg(long, value_name = "URL")]
    slack: Option<String>,
    /// A Discord webhook URL.
    #[arg(long, value_name = "URL")]
    discord: Option<String>,
    /// An ntfy topic URL (https://ntfy.sh/TOPIC, or your server's).
    #[arg(long, value_name = "URL")]
    ntfy: Option<String>,
    /// The desktop app's native notifications.
    #[arg(long)]
    desktop: bool,
    /// Only these events (comma-separated): job_succeeded, job_failed,
    /// job_cancelled, job_lost, idle_warned, idle_stopped, schedule_fired,
    /// schedule_missed, wandb_sync_failed, agent_lost, disk_low [default: all].
    #[arg(long, value_name = "EVENTS", value_delimiter = ',')]
    events: Vec<String>,
    /// Only jobs of this user (repeat for several).
    #[arg(long, value_name = "USER")]
    user: Vec<String>,
    /// Only jobs of this project (repeat for several).
    #[arg(long, value_name = "PROJECT")]
    project: Vec<String>,
    /// Only jobs with this tag (repeat for several).
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,
    /// ntfy priority, 1 (min) to 5 (max) [default: 4 for failures, 3 otherwise].
    #[arg(long, value_name = "1-5")]
    priority: Option<i64>,
    /// Send a summary per period instead ("3 jobs done, 2.1 GPU-h, 1
    /// stopped for idling"): daily (after midnight in the lab's zone) or
    /// weekly (Monday). With --events, those events still come one by
    /// one besides the digest.
    #[arg(long, value_name = "PERIOD", value_parser = ["daily", "weekly"])]
    digest: Option<String>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

pub fn run(ctx: &Ctx, cmd: NotifyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NotifyCommand::Add(a) => add(ctx, *a),
        NotifyCommand::Ls { daemon } => ls(ctx, &daemon),
        NotifyCommand::Rm { name, daemon } => {
            rt()?.block_on(client(ctx, &daemon)?.notify_remove(&name))?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed sink {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::Test { name, wait, daemon } => test(ctx, &daemon, &name, wait),
        NotifyCommand::Log {
            state,
            limit,
            daemon,
        } => log(ctx, &daemon, state.as_deref(), limit),
    }
}

fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<ExitCode> {
    let (kind, url) = if let Some(u) = a.webhook {
        (SinkKind::Webhook, Some(u))
    } else if let Some(u) = a.slack {
        (SinkKind::Slack, Some(u))
    } else if let Some(u) = a.discord {
        (SinkKind::Discord, Some(u))
    } else if let Some(u) = a.ntfy {
        (SinkKind::Ntfy, Some(u))
    } else {
        (SinkKind::Desktop, None)
    };
    // Refuse here what cannot work, naming the flag (the daemon checks again).
    let flag = format!("--{}", kind.as_str());
    trainyard::notify::config::check_sink_url(&flag, kind, url.as_deref())?;
    trainyard::notify::config::parse_events("--events", &a.events)?;
    trainyard::notify::config::check_priority("--priority", a.priority)?;
    let req = AddSinkRequest {
        name: a.name,
        kind,
        url,
        events: a.events,
        users: a.user,
        projects: a.project,
        tags: a.tag,
        priority: a.priority,
        digest: a.digest,
    };
    let s = rt()?.block_on(client(ctx, &a.daemon)?.notify_add(&req))?;
    if ctx.json {
        output::json(&s)?;
    } else {
        println!(
            "added {} sink {}{}",
            s.kind.as_str(),
            s.name,
            s.url.map(|u| format!(" ({u})")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn ls(ctx: &Ctx, d: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let sinks = rt()?.block_on(client(ctx, d)?.notify_sinks())?;
    if ctx.json {
        output::json(&sinks)?;
        return Ok(ExitCode::SUCCESS);
    }
    if sinks.is_empty() {
        println!("no notification sinks (add one with `trainyard notify add`, or in config.toml)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<8} {:<28} {:<7} {:<30} {:<7} WHO",
        "NAME", "KIND", "URL", "FROM", "EVENTS", "DIGEST"
    );
    for s in sinks {
        let events: Vec<String> = s.events.iter().map(|e| e.to_string()).collect();
        let mut who = Vec::new();
        if !s.users.is_empty() {
            who.push(format!("users={}", list(&s.users)));
        }
        if !s.projects.is_empty() {
            who.push(format!("projects={}", list(&s.projects)));
        }
        if !s.tags.is_empty() {
            who.push(format!("tags={}", list(&s.tags)));
        }
        println!(
            "{:<16} {:<8} {:<28} {:<7} {:<30} {:<7} {}",
            output::clean(&s.name),
            s.kind.as_str(),
            s.url.unwrap_or_else(|| "-".into()),
            match s.origin {
                trainyard::notify::Origin::Config => "config",
                trainyard::notify::Origin::Cli => "cli",
            },
            match (events.is_empty(), s.digest.is_some()) {
                (true, true) => "-".to_string(),
                (true, false) => "all".to_string(),
                _ => events.join(","),
            },
            s.digest.map(|d| d.as_str()).unwrap_or("-"),
            if who.is_empty() {
                "everyone".to_string()
            } else {
                output::clean(&who.join(" "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn test(ctx: &Ctx, d: &DaemonArgs, name: &str, wait: Duration) -> anyhow::Result<ExitCode> {
    let c = client(ctx, d)?;
    let rt = rt()?;
    let t = rt.block_on(c.notify_test(name))?;
    let end = Instant::now() + wait;
    // The newest deliveries come first; the test's is among the latest.
    let found = loop {
        let log = rt.block_on(c.notify_log(None, 200))?;
        let mine = log
            .deliveries
            .into_iter()
            .find(|x| x.event_id == t.event_id && x.sink == t.sink);
        match mine {
            Some(x) if x.state != DeliveryState::Pending || Instant::now() >= end => break Some(x),
            None if Instant::now() >= end => break None,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    if ctx.json {
        output::json(
            &serde_json::json!({ "event_id": t.event_id, "sink": t.sink, "delivery": found }),
        )?;
    }
    match found {
        Some(x) if x.state == DeliveryState::Delivered => {
            if !ctx.json {
                println!("test message delivered to {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(x) => bail!(
            "the test message to {name} is {} after {} tries: {}",
            x.state.as_str(),
            x.attempts,
            x.last_error.as_deref().unwrap_or("no answer yet")
        ),
        None => bail!("the test message to {name} was not seen in the delivery log"),
    }
}

fn log(ctx: &Ctx, d: &DaemonArgs, state: Option<&str>, limit: usize) -> anyhow::Result<ExitCode> {
    let log = rt()?.block_on(client(ctx, d)?.notify_log(state, limit))?;
    if ctx.json {
        output::json(&log)?;
        return Ok(ExitCode::SUCCESS);
    }
    if log.deliveries.is_empty() {
        println!("no deliveries");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<6} {:<18} {:<6} {:<16} {:<10} {:<5} {:<20} ERROR",
        "EVENT", "KIND", "JOB", "SINK", "STATE", "TRIES", "WHEN"
    );
    for x in log.deliveries {
        let when = match x.state {
            DeliveryState::Pending => x
                .next_ns
                .map(|n| format!("next {}", output::time(n)))
                .unwrap_or_default(),
            _ => x.done_ns.map(output::time).unwrap_or_default(),
        };
        println!(
            "{:<6} {:<18} {:<6} {:<16} {:<10} {:<5} {:<20} {}",
            x.event_id,
            x.kind,
            x.job.map(|j| j.to_string()).unwrap_or_else(|| "-".into()),
            output::clean(&x.sink),
            x.state.as_str(),
            x.attempts,
            when,
            output::clean(x.last_error.as_deref().unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}
