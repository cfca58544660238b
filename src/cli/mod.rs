//! Argument parsing (clap derive; the doc comments are the help text),
//! logging set-up, and dispatch to one handler per command family.

mod cluster;
mod daemon;
mod data;
mod demo;
mod jobs;
mod notify;
mod output;
mod remote;
mod runs;
mod schedule;
mod service;
mod sync;
mod usage;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use trainyard::Home;

/// Trainyard: datasets, GPU jobs and experiment tracking for ML workstations
/// and small labs.
///
/// Data lives under the Trainyard home: --home, else $TRAINYARD_HOME, else
/// the XDG data directory (~/.local/share/trainyard).
#[derive(Debug, Parser)]
#[command(
    name = "trainyard",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The Trainyard home directory [env: TRAINYARD_HOME] [default: ~/.local/share/trainyard]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print results as JSON on stdout (one document per command), for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Version datasets: snapshot, compare, tag and check out directories.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Manage dataset remotes (S3 buckets, S3-compatible servers, directories).
    #[command(subcommand)]
    Remote(remote::RemoteCommand),
    /// Browse wandb runs found on this machine (scan, ls, show, history).
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Sync wandb runs to a W&B server (wandb/local) and check what landed.
    #[command(subcommand)]
    Sync(sync::SyncCommand),
    /// Start the daemon: the job queue, the scheduler, the HTTP API and a
    /// local agent for this host's GPUs.
    Up(Box<daemon::UpArgs>),
    /// Run a headless agent that runs jobs on this host's GPUs for a daemon
    /// elsewhere on the LAN.
    Agent(daemon::AgentCmdArgs),
    /// Submit a job (or a sweep of jobs) to the queue.
    ///
    /// Example: trainyard submit --gpus 2 --gpu-mem 40GB --arg lr=1e-3 -- python train.py
    Submit {
        #[command(flatten)]
        args: Box<jobs::SubmitArgs>,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Schedules: jobs submitted on a cron pattern (IANA zones, DST-safe,
    /// catch-up and overlap policies, start windows) or when a dataset
    /// gets a new version.
    ///
    /// Example: trainyard schedule add nightly --cron "0 3 * * *" --tz Asia/Seoul -- python eval.py
    Schedule {
        #[command(subcommand)]
        cmd: schedule::ScheduleCommand,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Watch directories (run by the daemon): snapshot a dataset when its
    /// files stop changing, or sync wandb runs as they end. Events on local
    /// filesystems, polling on NFS/SMB/FUSE.
    ///
    /// Example: trainyard watch add /data/imagenet --snapshot imagenet --quiet 60s
    Watch {
        #[command(subcommand)]
        cmd: watch::WatchCommand,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// List jobs: queued (with the reason they wait), running, recently finished.
    Ps {
        #[command(flatten)]
        args: jobs::PsArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// One job in detail: its spec, reason, and every attempt with its host,
    /// GPU indices, times, exit code and error.
    Show {
        #[command(flatten)]
        args: jobs::ShowArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Print a job's output (-f follows it).
    Logs {
        #[command(flatten)]
        args: jobs::LogsArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Cancel jobs; running ones get SIGTERM, then SIGKILL after the grace period.
    Cancel {
        #[command(flatten)]
        args: jobs::JobsArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Tag a job or a wandb run (or untag it with --remove), also after it
    /// ended: one tagged `ignore-usage` (the lab's ignore tag) leaves the
    /// usage report, retroactively.
    ///
    /// Examples: trainyard tag 42 ignore-usage;
    /// trainyard tag dinit002 ignore-usage
    Tag {
        #[command(flatten)]
        args: jobs::TagArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Queue failed, lost or cancelled jobs again.
    Retry {
        #[command(flatten)]
        args: jobs::JobsArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Every GPU of every agent in one table: memory, utilization, which job
    /// holds it, foreign processes.
    Gpus {
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// GPU-hours allocated, used and idle-allocated, energy, and job and run
    /// counts, by project, user, team, host, GPU model or tag, per day or
    /// month. Days and months are the lab's (`[usage] timezone` in the
    /// daemon's config.toml).
    ///
    /// Example: trainyard usage --by user --daily --since 2026-11-01
    Usage {
        #[command(flatten)]
        args: usage::UsageArgs,
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Notifications: sinks (generic webhook, Slack, Discord, ntfy, the
    /// desktop app), which events go where, test messages, and the
    /// delivery log with its dead letters.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// SLURM clusters: the same queue sends jobs to a cluster
    /// (`submit --on NAME`, `--overflow-after 10m`) and follows them.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// The agents the daemon knows, with their GPUs and last heartbeat.
    Agents {
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// Print the address that opens the web UI logged in (it carries the
    /// daemon token in the URL fragment; the UI keeps it for the tab and
    /// removes it from the address bar). Treat it like the token.
    Ui {
        #[command(flatten)]
        daemon: jobs::DaemonArgs,
    },
    /// A tour in one command: a daemon on a throwaway home with FAKE GPUs,
    /// the sample dataset in two versions, wandb runs and jobs queued,
    /// running, finished and failed; opens the UI (or prints its address).
    /// Ctrl-C stops it and deletes the home.
    Demo(demo::DemoArgs),
    /// Run the daemon or an agent as a systemd service (system or user
    /// unit): install, uninstall, status.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Global settings every handler needs.
pub struct Ctx {
    pub home: Home,
    pub json: bool,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color_stderr())
        .with_target(false);
    if trainyard::service::logs_to_journal() {
        // The journal stamps each line itself.
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

/// Colour in logs only on a terminal, and never with `NO_COLOR` set
/// (no-color.org): `trainyard up > up.log 2>&1` gets plain text.
fn color_stderr() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Run the CLI; errors are printed once, readably, with a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Up(_) | Command::Agent(_) | Command::Demo(_)
    ) {
        // Die quietly on a closed pipe (`trainyard runs history R | head`),
        // as Unix tools do, instead of panicking in println!. Not in the
        // long-running daemon and agent, whose sockets may close any time.
        // SAFETY: restoring SIGPIPE's default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            let mut src = e.source();
            while let Some(s) = src {
                // Library errors often include their cause's text already.
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "trainyard",
            &mut std::io::stdout(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let home = Home::resolve(cli.home.as_deref())?;
    home.ensure()?;
    let ctx = Ctx {
        home,
        json: cli.json,
    };
    match cli.command {
        Command::Data(cmd) => data::run(&ctx, cmd),
        Command::Remote(cmd) => remote::remote(&ctx, cmd),
        Command::Runs(cmd) => runs::run(&ctx, cmd),
        Command::Sync(cmd) => sync::run(&ctx, cmd),
        Command::Up(args) => daemon::up(&ctx, *args),
        Command::Agent(args) => daemon::agent(&ctx, args),
        Command::Submit { args, daemon } => jobs::submit(&ctx, &daemon, *args),
        Command::Schedule { cmd, daemon } => schedule::run(&ctx, &daemon, cmd),
        Command::Watch { cmd, daemon } => watch::run(&ctx, &daemon, cmd),
        Command::Ps { args, daemon } => jobs::ps(&ctx, &daemon, args),
        Command::Show { args, daemon } => jobs::show(&ctx, &daemon, args),
        Command::Logs { args, daemon } => jobs::logs(&ctx, &daemon, args),
        Command::Cancel { args, daemon } => jobs::cancel_or_retry(&ctx, &daemon, args, false),
        Command::Retry { args, daemon } => jobs::cancel_or_retry(&ctx, &daemon, args, true),
        Command::Tag { args, daemon } => jobs::tag(&ctx, &daemon, args),
        Command::Gpus { daemon } => jobs::gpus(&ctx, &daemon),
        Command::Agents { daemon } => jobs::agents(&ctx, &daemon),
        Command::Usage { args, daemon } => usage::usage(&ctx, &daemon, args),
        Command::Notify(cmd) => notify::run(&ctx, cmd),
        Command::Cluster(cmd) => cluster::run(&ctx, cmd),
        Command::Ui { daemon } => jobs::ui(&ctx, &daemon),
        Command::Service(cmd) => service::run(&ctx, cmd),
        Command::Demo(args) => demo::demo(&ctx, args),
        Command::Completions { .. } => unreachable!("handled above"),
    }
}
