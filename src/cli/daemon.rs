//! `trainyard up` (the daemon, with an embedded local agent) and
//! `trainyard agent` (a headless agent on a LAN GPU server).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use trainyard::agent::{run_agent, Ready, Setup};
use trainyard::client::Client;
use trainyard::daemon::{self, Daemon};
use trainyard::gpu::FAKE_GPUS_ENV;
use trainyard::server::{self, Config, Secret};

use super::Ctx;

/// GPU inventory and job slots of an agent.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent name, unique in the lab [default: the host name].
    #[arg(long = "agent-name", visible_alias = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// Use a FAKE GPU inventory instead of NVML, for tests and demos:
    /// COUNTxMODEL-MEMORY, comma separated, e.g. "2xA100-80GB,1xRTX4090-24GB".
    #[arg(long, env = FAKE_GPUS_ENV, value_name = "SPEC")]
    pub fake_gpus: Option<String>,
    /// Replay this trace on the fake GPUs (needs --fake-gpus): per GPU,
    /// utilization, memory, power and temperature over the seconds since
    /// the agent started (format: docs/gpu-trace-format.md).
    #[arg(long, env = trainyard::gpu::FAKE_GPU_TRACE_ENV, value_name = "FILE", requires = "fake_gpus")]
    pub fake_gpu_trace: Option<PathBuf>,
    /// How often the agent samples its GPUs for the daemon's telemetry
    /// history (and its heartbeat's GPU state).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// CPU-only jobs run at once [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    pub cpu_slots: Option<u32>,
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Keep each attempt's work directory (checkout, inputs) after it ends.
    #[arg(long)]
    pub keep_work: bool,
    /// Also give jobs these variables of the agent's environment (repeat, or
    /// comma-separate in TRAINYARD_PASS_ENV; `*` and `?` globs, e.g. HF_*).
    /// Jobs otherwise see only PATH, HOME, USER, LOGNAME, SHELL, LANG,
    /// LANGUAGE, LC_*, TZ, TERM, TMPDIR, LD_LIBRARY_PATH, CUDA_* and
    /// NVIDIA_*; TRAINYARD_TOKEN is never passed.
    #[arg(long = "pass-env", env = "TRAINYARD_PASS_ENV", value_delimiter = ',', value_name = "PATTERN", value_parser = trainyard::agent::env::check_pattern)]
    pub pass_env: Vec<String>,
    /// Run jobs in process groups only, even where cgroup v2 would let each
    /// attempt have its own cgroup (which also catches processes that
    /// leave the group with setsid).
    #[arg(long)]
    pub no_cgroup: bool,
}

/// `trainyard up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on. Loopback by default; every API call needs the
    /// token (daemon.token in the Trainyard home) whatever the address.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    bind: IpAddr,
    /// Also answer to this host name (a LAN name agents use, a reverse
    /// proxy's), besides IP addresses, localhost and, beyond loopback, this
    /// machine's name. Requests for any other name are refused (DNS
    /// rebinding). Repeatable.
    #[arg(
        long = "allow-host",
        value_name = "NAME",
        env = "TRAINYARD_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    allow_hosts: Vec<String>,
    /// Port to listen on (0: any free port; the URL is written to daemon.json).
    #[arg(long, default_value_t = server::DEFAULT_PORT)]
    port: u16,
    /// How long an attempt survives without its agent's heartbeat before it
    /// is marked lost (and requeued if attempts are left).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Kept for scripts: the token is now always required.
    #[arg(long, hide = true)]
    require_token: bool,
    /// Do not run jobs on this host (a coordinator for LAN agents only).
    #[arg(long)]
    no_agent: bool,
    /// Keep at most this many finished jobs (the most recently finished),
    /// with their logs; 0 keeps them all.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    keep_jobs: u64,
    /// Forget finished jobs (and their logs) that ended longer ago than
    /// this, e.g. 30d; 0 keeps them whatever their age.
    #[arg(long, value_name = "DURATION", default_value = "90days", value_parser = humantime::parse_duration)]
    keep_for: Duration,
    /// Cap each attempt's log at this size, e.g. 64MiB or 1GB: past it, the
    /// start of the log is dropped and a marker line says how much; 0 keeps
    /// whole logs.
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    max_log_size: String,
    /// Also serve GET /metrics (Prometheus) on this address, without the
    /// token, and nothing else there; e.g. 0.0.0.0:9400 for a Prometheus
    /// server elsewhere. On the API's address /metrics needs the token
    /// except over loopback.
    #[arg(long, value_name = "ADDR:PORT", env = "TRAINYARD_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// How often the daemon applies --keep-jobs and --keep-for.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    retention_every: Duration,
    /// Links in notifications point at this UI address [default: the daemon's URL].
    #[arg(long, value_name = "URL", env = "TRAINYARD_UI_URL")]
    ui_url: Option<String>,
    /// Wait this long before retrying a notification that failed; the
    /// wait doubles with each further failure, up to an hour.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "TRAINYARD_NOTIFY_RETRY", value_parser = humantime::parse_duration)]
    notify_retry: Duration,
    /// Tries per notification and sink before it becomes a dead letter
    /// (`trainyard notify log`).
    #[arg(long, value_name = "N", default_value_t = 10, env = "TRAINYARD_NOTIFY_TRIES", value_parser = clap::value_parser!(u32).range(1..))]
    notify_tries: u32,
    #[command(flatten)]
    agent: AgentArgs,
}

/// `trainyard agent`.
#[derive(Debug, Args)]
pub struct AgentCmdArgs {
    /// The daemon's URL, e.g. http://gpu-coordinator:7171.
    #[arg(long, env = "TRAINYARD_URL", value_name = "URL")]
    server: String,
    /// The daemon's token (prefer TRAINYARD_TOKEN or --token-file: command
    /// lines are visible to other users).
    #[arg(
        long,
        env = "TRAINYARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Read the token from this file (must be mode 0600) [default: the
    /// home's daemon.token, when an agent shares its daemon's home].
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    agent: AgentArgs,
}

impl AgentArgs {
    /// The flags as the library's agent set-up.
    fn setup(&self) -> Setup {
        Setup {
            name: self.name.clone(),
            fake_gpus: self.fake_gpus.clone(),
            cpu_slots: self.cpu_slots,
            grace: self.grace,
            keep_work: self.keep_work,
            pass_env: self.pass_env.clone(),
            cgroups: !self.no_cgroup,
            fake_gpu_trace: self.fake_gpu_trace.clone(),
            sample_every: self.sample_every,
        }
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM right after the
/// daemon said it is ready (systemd's stop) must not kill it uncleanly.
pub(super) fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

pub fn up(ctx: &Ctx, args: UpArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    if args.require_token {
        tracing::info!("--require-token: the token is always required now");
    }
    let max_log_mib = trainyard::queue::parse_memory_mib("--max-log-size", &args.max_log_size)?;
    let config = daemon::Config {
        server: Config {
            home: ctx.home.clone(),
            addr: SocketAddr::new(args.bind, args.port),
            lease: args.lease,
            allow_hosts: args.allow_hosts.clone(),
            token: None,
            retention: server::Retention {
                keep_jobs: (args.keep_jobs > 0).then_some(args.keep_jobs),
                keep_for: (!args.keep_for.is_zero()).then_some(args.keep_for),
                max_log_bytes: (max_log_mib > 0).then_some(max_log_mib << 20),
                every: args.retention_every,
            },
            notify: trainyard::notify::send::Settings {
                backoff: trainyard::notify::Backoff {
                    first: args.notify_retry,
                    tries: args.notify_tries,
                    ..Default::default()
                },
                ui_url: match &args.ui_url {
                    Some(u) => Some(
                        trainyard::notify::sink::check_url("--ui-url", u)?
                            .as_str()
                            .trim_end_matches('/')
                            .to_string(),
                    ),
                    None => None,
                },
                ..Default::default()
            },
        },
        agent: (!args.no_agent).then(|| args.agent.setup()),
        metrics_bind: args.metrics_bind,
    };
    rt.block_on(async move {
        let stop = stop_signal();
        let daemon = Daemon::start(config).await?;
        let url = daemon.url();
        if let Some(m) = daemon.metrics_addr() {
            eprintln!("metrics (Prometheus, no token) on http://{m}/metrics");
        }
        eprintln!(
            "trainyard daemon listening on {url} (home {})",
            ctx.home.root().display()
        );
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // Like Jupyter: a login link on the terminal, never in a log file.
            eprintln!("open the UI: {}", server::ui_login_url(url, daemon.token()));
        } else {
            eprintln!("open the UI: `trainyard ui` prints a login address");
        }
        if let Some(notice) =
            server::remote_access_notice(args.bind, daemon.addr().port(), &ctx.home.token_path())
        {
            eprintln!("{notice}");
        }
        if ctx.json {
            println!(
                "{}",
                serde_json::json!({ "url": url, "pid": std::process::id() })
            );
        }
        // Under systemd (`trainyard service install up`): ready now that
        // it listens.
        trainyard::service::notify_ready(&format!("listening on {url}"));
        let agent_failed = daemon.agent_failed();
        tokio::select! {
            _ = stop => {}
            e = agent_failed => {
                eprintln!("error: the local agent stopped: {e}");
                stop_signal().await;
            }
        }
        eprintln!("stopping: ending local jobs, then the daemon");
        trainyard::service::notify_stopping("ending local jobs, then the daemon");
        daemon.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn agent(ctx: &Ctx, args: AgentCmdArgs) -> anyhow::Result<ExitCode> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(Secret::new(t.trim())),
        (None, Some(f)) => Some(server::read_token(f)?),
        // An agent beside its daemon (same home) uses the home's token.
        (None, None) => {
            let f = ctx.home.token_path();
            f.exists().then(|| server::read_token(&f)).transpose()?
        }
    };
    let Ready {
        config: cfg,
        gpus,
        identity: _identity,
    } = args.agent.setup().prepare(&ctx.home)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let stop = stop_signal();
        let client = Client::new(&args.server, token);
        // "connected" only once the daemon accepted the token: an
        // authenticated call, not the open health route.
        match client.agents().await {
            Ok(_) => eprintln!("agent {} connected to {}", cfg.name, args.server),
            // A refused token will not fix itself: say so and stop.
            Err(e @ trainyard::client::ClientError::Unauthorized { .. }) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "agent {} cannot join {}: pass the daemon's token with --token-file FILE or \
                     TRAINYARD_TOKEN (it is daemon.token in the daemon's home)",
                    cfg.name, args.server
                )));
            }
            Err(e) => eprintln!("warning: {e}; retrying in the background"),
        }
        trainyard::service::notify_ready(&format!("agent {} for {}", cfg.name, args.server));
        run_agent(cfg, client, gpus, async {
            stop.await;
            trainyard::service::notify_stopping("ending jobs");
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}
