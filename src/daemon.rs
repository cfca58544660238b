//! The daemon as one call: what `trainyard up`, the desktop shell and
//! in-process tests run. [`Daemon::start`] stops what a killed predecessor's
//! local agent left running, binds the server ([`Server::bind`]), serves it,
//! and starts the local agent, an ordinary HTTP client of its own daemon
//! over loopback; [`Daemon::stop`] ends them in order: the agent first, so
//! it reports the jobs it stops while the server still listens, then the
//! server.
//!
//! It prints nothing and reads no flags or environment: callers say what
//! they want from [`Daemon::url`] and [`Daemon::token`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::agent::{self, AgentError, Setup, SetupError};
use crate::api::Event;
use crate::client::Client;
use crate::secret::Secret;
use crate::server::{self, Server, ServerError};

/// How long [`Daemon::stop`] waits for the local agent to stop its jobs and
/// report them before it stops the server anyway.
pub const AGENT_STOP_LIMIT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server: home, address, lease, host names, token, retention.
    pub server: server::Config,
    /// The local agent for this host's GPUs; `None` for a coordinator of
    /// other hosts' agents only.
    pub agent: Option<Setup>,
    /// A second listener serving only `GET /metrics`, without the token.
    pub metrics_bind: Option<std::net::SocketAddr>,
}

impl Config {
    /// A daemon for `home` on loopback only, at `port` (0: any free port),
    /// with the home's token, a 30 s lease, the default retention and
    /// notification settings, no separate metrics listener, and `agent` as
    /// its local agent: what the desktop app, `trainyard demo` and
    /// in-process tests start (adjust the fields they need otherwise).
    pub fn loopback(home: crate::Home, port: u16, agent: Option<Setup>) -> Config {
        Config {
            server: server::Config {
                home,
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                lease: Duration::from_secs(30),
                allow_hosts: Vec::new(),
                token: None,
                retention: Default::default(),
                notify: Default::default(),
            },
            agent,
            metrics_bind: None,
        }
    }
}

/// Why the daemon could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The local agent could not be set up (its identity is held by another
    /// agent, a bad fake GPU inventory).
    #[error(transparent)]
    Agent(#[from] SetupError),
    /// The server could not start, or failed while serving.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A task of the daemon panicked or was cancelled.
    #[error("daemon task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running daemon: the server and, unless none was asked for, its local
/// agent. Dropping it stops both without waiting and without order; call
/// [`Daemon::stop`] instead.
pub struct Daemon {
    url: String,
    addr: std::net::SocketAddr,
    token: Secret,
    home: crate::Home,
    events: broadcast::WeakSender<Event>,
    agent: Option<agent::Handle>,
    stop_server: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), ServerError>>,
    metrics: Option<(std::net::SocketAddr, JoinHandle<Result<(), ServerError>>)>,
}

impl Daemon {
    /// Start the daemon. With another daemon already serving the home this
    /// fails naming it, having taken no agent identity and touched none of
    /// the other daemon's jobs.
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        let home = config.server.home.clone();
        let ready = match config.agent {
            Some(setup) if !server::home_in_use(&home) => {
                let home = home.clone();
                // Jobs a killed predecessor left running are stopped before
                // the server listens: it could requeue them to another agent,
                // and agents' requests waiting in a listening socket would see
                // their leases age. Blocking: file locks, NVML, signals.
                let ready = tokio::task::spawn_blocking(move || {
                    let ready = setup.prepare(&home)?;
                    agent::stop_left_behind(&ready.config);
                    Ok::<_, SetupError>(ready)
                })
                .await??;
                Some(ready)
            }
            _ => None,
        };
        let server = Server::bind(config.server).await?;
        let url = server.url();
        let addr = server.addr();
        let token = server.token().clone();
        let events = server.events();
        let metrics = match config.metrics_bind {
            Some(a) => {
                let m = server.bind_metrics(a).await?;
                let bound = m.addr();
                Some((bound, tokio::spawn(m.serve(std::future::pending()))))
            }
            None => None,
        };
        let (stop_server, stop_server_rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stop_server_rx.await;
        }));
        let agent = ready.map(|ready| {
            // The local agent reaches the daemon over loopback whatever the bind.
            agent::Handle::spawn(ready, loopback_client(addr, &token))
        });
        Ok(Daemon {
            url,
            addr,
            token,
            home,
            events: events.downgrade(),
            agent,
            stop_server,
            serving,
            metrics,
        })
    }

    /// Where the metrics-only listener listens, when asked for.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(a, _)| *a)
    }

    /// The base URL clients use (`http://ADDR:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The token every API call but `GET /api/v1/health` must carry.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// A client of this daemon, at its URL with its token.
    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(self.token.clone()))
    }

    /// The local agent's name, if one runs.
    pub fn agent_name(&self) -> Option<&str> {
        self.agent.as_ref().map(agent::Handle::name)
    }

    /// Stop the local agent, as [`Daemon::stop`] does, and go on serving
    /// without it: for a workstation whose GPUs are lent to another daemon
    /// (the desktop's "lend this computer's GPUs to the lab"). Its jobs are
    /// stopped and reported ended, so this daemon can requeue them. Returns
    /// whether one was running.
    pub async fn stop_agent(&mut self) -> bool {
        match self.agent.take() {
            Some(a) => {
                a.stop(AGENT_STOP_LIMIT).await;
                true
            }
            None => false,
        }
    }

    /// Start a local agent from `setup` again (after [`Daemon::stop_agent`];
    /// nothing happens while one runs). Fails like [`Daemon::start`] when
    /// its identity is held or its GPUs cannot be read.
    pub async fn start_agent(&mut self, setup: Setup) -> Result<(), DaemonError> {
        if self.agent.is_some() {
            return Ok(());
        }
        let home = self.home.clone();
        let ready = tokio::task::spawn_blocking(move || setup.prepare_again(&home)).await??;
        self.agent = Some(agent::Handle::spawn(
            ready,
            loopback_client(self.addr, &self.token),
        ));
        Ok(())
    }

    /// Every change the daemon announces from now on (the events of
    /// `/api/v1/events`), for in-process observers such as the desktop
    /// shell. Closed once the server has stopped.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        match self.events.upgrade() {
            Some(s) => s.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Resolves if the local agent stops by itself (a live agent of another
    /// identity holds its name), with why; the daemon goes on serving
    /// without it. Never resolves while it runs, or when there is none.
    pub fn agent_failed(&self) -> impl Future<Output = Arc<AgentError>> + Send + 'static {
        let failed = self.agent.as_ref().map(agent::Handle::failed);
        async move {
            match failed {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        }
    }

    /// Stop the local agent (its jobs are stopped and reported ended while
    /// the server still listens; at most [`AGENT_STOP_LIMIT`]), then the
    /// server (long-lived streams get two seconds). Returns the server's
    /// error if serving failed.
    pub async fn stop(self) -> Result<(), DaemonError> {
        if let Some(a) = self.agent {
            a.stop(AGENT_STOP_LIMIT).await;
        }
        if let Some((_, m)) = self.metrics {
            m.abort();
        }
        let _ = self.stop_server.send(());
        self.serving.await??;
        Ok(())
    }
}

/// A client of the daemon at `addr` over loopback, as its local agent uses.
fn loopback_client(addr: std::net::SocketAddr, token: &Secret) -> Client {
    Client::new(
        &format!("http://127.0.0.1:{}", addr.port()),
        Some(token.clone()),
    )
}
