//! `trainyard schedule …`: add, ls, show, pause, resume, rm and run
//! schedules over the daemon's API. The job of a schedule is built from
//! the same flags as `submit`; the rules live in `trainyard::schedule`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use trainyard::schedule::{self, CatchUp, NewSchedule, Occurrence, Outcome, Overlap};

use super::jobs::{self, DaemonArgs, SubmitArgs};
use super::output::{self, short};
use super::Ctx;

/// `trainyard schedule`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: a job (or sweep) submitted on a cron pattern, or
    /// when a new version (or a matching tag) of a dataset appears. Takes
    /// every `submit` option for the job.
    ///
    /// Examples:
    ///   trainyard schedule add nightly --cron "0 3 * * *" --tz Asia/Seoul --gpus 1 -- python eval.py
    ///   trainyard schedule add retrain --on-dataset imagenet --tag-pattern 'v*' -f train.toml
    #[command(verbatim_doc_comment)]
    Add(Box<AddArgs>),
    /// List schedules with their next fire time, last outcome and missed
    /// occurrences.
    Ls,
    /// One schedule: its settings, next 5 fire times, last runs and their
    /// outcomes, and missed occurrences.
    Show {
        /// The schedule.
        name: String,
    },
    /// Pause a schedule: nothing fires until it is resumed.
    Pause {
        /// The schedule.
        name: String,
    },
    /// Resume a paused schedule. What came due while it was paused is
    /// neither run nor counted as missed.
    Resume {
        /// The schedule.
        name: String,
    },
    /// Remove a schedule (the jobs it submitted stay in the queue).
    Rm {
        /// The schedule.
        name: String,
    },
    /// Fire a schedule now (under its --overlap policy); a data schedule
    /// runs on the newest version of its dataset.
    Run {
        /// The schedule.
        name: String,
    },
}

/// `trainyard schedule add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The schedule's name (1-48 letters, digits, '.', '_', '-'); its jobs
    /// are tagged schedule:NAME.
    #[arg(value_name = "NAME", id = "schedule_name")]
    schedule_name: String,
    /// A cron pattern: 5 fields (minute hour day-of-month month
    /// day-of-week) with L, #, W and names, or @hourly, @daily, @weekly,
    /// @monthly, @yearly. E.g. "0 3 * * *" (03:00 every day).
    #[arg(long, value_name = "PATTERN")]
    cron: Option<String>,
    /// The IANA time zone of the pattern and the window, e.g. Asia/Seoul
    /// [default: the daemon's [usage] timezone, else its system zone].
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
    /// When an occurrence comes while the previous run is still queued or
    /// running: skip it, queue it behind the previous run, or replace
    /// (cancel) the previous run.
    #[arg(long, value_name = "POLICY", default_value = "skip",
          value_parser = ["skip", "queue", "replace"])]
    overlap: String,
    /// Occurrences that came due while the daemon was down: skip them
    /// (listed as missed), run the latest once, or run all (at most 10).
    #[arg(long, value_name = "POLICY", default_value = "skip",
          value_parser = ["skip", "once", "all"])]
    catch_up: String,
    /// The fired job may only start inside this daily window (in --tz),
    /// e.g. 22:00-06:00; if it cannot get GPUs before the window closes it
    /// is cancelled, saying so.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    window: Option<String>,
    /// Fire when a new version of this dataset appears (in the daemon's
    /// store); the job gets that exact version as an input
    /// (TRAINYARD_INPUT_<NAME> points at its checkout).
    #[arg(long, value_name = "DATASET", conflicts_with = "cron")]
    on_dataset: Option<String>,
    /// With --on-dataset: fire when a tag matching this pattern ('*', '?')
    /// appears or moves, e.g. 'v*', instead of on every new version.
    #[arg(long, value_name = "PATTERN")]
    tag_pattern: Option<String>,
    #[command(flatten)]
    job: Box<SubmitArgs>,
}

pub fn run(ctx: &Ctx, d: &DaemonArgs, cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let c = jobs::client(ctx, d)?;
    let rt = jobs::rt()?;
    let name_of = |n: &str| -> anyhow::Result<String> {
        schedule::check_name(n)?;
        Ok(n.to_string())
    };
    match cmd {
        ScheduleCommand::Add(a) => {
            let a = *a;
            let (job, grid) = jobs::build_specs(*a.job)?;
            let new = NewSchedule {
                name: a.schedule_name,
                cron: a.cron,
                tz: a.tz,
                overlap: Overlap::from_name(&a.overlap).context("--overlap")?,
                catch_up: CatchUp::from_name(&a.catch_up).context("--catch-up")?,
                window: a.window,
                on_dataset: a.on_dataset,
                tag_pattern: a.tag_pattern,
                job,
                sweep: (!grid.is_empty()).then_some(grid),
            };
            let info = rt.block_on(c.add_schedule(&new))?;
            if ctx.json {
                output::json(&info)?;
            } else {
                let when = match (&info.next_fire, &info.on_dataset) {
                    (Some(t), _) => format!("next fire {t}"),
                    (None, Some(ds)) => format!("fires on new versions of {ds}"),
                    _ => String::new(),
                };
                println!("added schedule {} ({when})", info.name);
            }
        }
        ScheduleCommand::Ls => {
            let list = rt.block_on(c.schedules())?;
            if ctx.json {
                output::json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                println!("no schedules (add one with trainyard schedule add)");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<34} {:<26} {:<28} {:>6}",
                "NAME", "TRIGGER", "NEXT", "LAST", "MISSED"
            );
            for s in &list {
                let next = if s.paused {
                    "paused".to_string()
                } else {
                    s.next_fire.clone().unwrap_or_else(|| "on new data".into())
                };
                println!(
                    "{:<20} {:<34} {:<26} {:<28} {:>6}",
                    short(&s.name, 20),
                    short(&trigger(s), 34),
                    short(&next, 26),
                    short(&s.last.as_ref().map(last).unwrap_or_else(|| "-".into()), 28),
                    s.missed
                );
            }
        }
        ScheduleCommand::Show { name } => {
            let d = rt.block_on(c.schedule(&name_of(&name)?))?;
            if ctx.json {
                output::json(&d)?;
                return Ok(ExitCode::SUCCESS);
            }
            let s = &d.schedule;
            let field = |k: &str, v: &str| println!("{k:>10}  {v}");
            field("name", &s.name);
            field("trigger", &trigger(s));
            field("state", if s.paused { "paused" } else { "active" });
            field("overlap", s.overlap.as_str());
            if s.cron.is_some() {
                field("catch-up", s.catch_up.as_str());
            }
            if let Some(w) = &s.window {
                field("window", &format!("{w} ({})", s.tz));
            }
            field("job", &output::clean(&s.job.argv().join(" ")));
            if let Some(g) = &s.sweep {
                field(
                    "sweep",
                    &format!("{} jobs per run", trainyard::queue::sweep_len(g)),
                );
            }
            field("user", &s.user);
            if !d.next.is_empty() {
                println!("\nnext fire times:");
                for t in &d.next {
                    println!("  {}", t.at);
                }
            }
            println!("\nlast runs:");
            if d.runs.is_empty() {
                println!("  none yet");
            }
            for o in &d.runs {
                println!("  {}", occurrence(o));
            }
            println!("\nmissed ({} in all):", s.missed);
            if d.missed.is_empty() {
                println!("  none");
            }
            for o in &d.missed {
                println!("  {}", occurrence(o));
            }
        }
        ScheduleCommand::Pause { name } => {
            let info = rt.block_on(c.pause_schedule(&name_of(&name)?, true))?;
            print_info(ctx, &info, "paused")?;
        }
        ScheduleCommand::Resume { name } => {
            let info = rt.block_on(c.pause_schedule(&name_of(&name)?, false))?;
            print_info(ctx, &info, "resumed")?;
        }
        ScheduleCommand::Rm { name } => {
            let name = name_of(&name)?;
            rt.block_on(c.remove_schedule(&name))?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed schedule {name} (its jobs stay in the queue)");
            }
        }
        ScheduleCommand::Run { name } => {
            let answer = rt.block_on(c.run_schedule(&name_of(&name)?))?;
            let o = &answer.occurrence;
            if ctx.json {
                output::json(&answer)?;
            } else {
                match o.outcome {
                    Outcome::Fired => println!(
                        "schedule {}: submitted job{} {}",
                        answer.name,
                        if o.jobs.len() == 1 { "" } else { "s" },
                        jobs_text(o)
                    ),
                    _ => eprintln!(
                        "schedule {}: nothing submitted: {}",
                        answer.name,
                        o.detail.as_deref().unwrap_or(o.outcome.as_str())
                    ),
                }
            }
            return Ok(output::exit_code(o.outcome != Outcome::Fired));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_info(ctx: &Ctx, info: &schedule::ScheduleInfo, what: &str) -> anyhow::Result<()> {
    if ctx.json {
        output::json(info)
    } else {
        println!("{what} schedule {}", info.name);
        Ok(())
    }
}

fn trigger(s: &schedule::ScheduleInfo) -> String {
    match (&s.cron, &s.on_dataset) {
        (Some(c), _) => format!("cron {c} ({})", s.tz),
        (None, Some(ds)) => match &s.tag_pattern {
            Some(p) => format!("dataset {ds}, tags {p}"),
            None => format!("dataset {ds}"),
        },
        _ => "-".into(),
    }
}

fn jobs_text(o: &Occurrence) -> String {
    match (o.jobs.first(), o.jobs.last()) {
        (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
        (Some(a), _) => a.to_string(),
        _ => "-".into(),
    }
}

/// `fired: job 12 succeeded`, `skipped`, `missed`.
fn last(o: &Occurrence) -> String {
    match (o.outcome, o.state) {
        (Outcome::Fired, Some(st)) => format!("job {} {st}", jobs_text(o)),
        (Outcome::Fired, None) => format!("job {} (forgotten)", jobs_text(o)),
        (other, _) => other.as_str().to_string(),
    }
}

fn occurrence(o: &Occurrence) -> String {
    let mut line = format!("{}  {:<8} {}", o.at, o.outcome.as_str(), last(o));
    if o.outcome != Outcome::Fired {
        line = format!("{}  {:<8}", o.at, o.outcome.as_str());
    }
    if let Some(d) = &o.detail {
        line.push_str("  ");
        line.push_str(&output::clean(d));
    }
    line
}
