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

use tokio::sync::{broadcast, oneshot, watch};
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
    events: broadcast::WeakSender<Event>,
    agent_name: Option<String>,
    agent_failed: watch::Receiver<Option<Arc<AgentError>>>,
    stop_agent: Option<oneshot::Sender<()>>,
    agent_task: Option<JoinHandle<()>>,
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
        let (failed_tx, agent_failed) = watch::channel(None);
        let (agent_name, stop_agent, agent_task) = match ready {
            None => (None, None, None),
            Some(ready) => {
                // The local agent reaches the daemon over loopback whatever the bind.
                let client = Client::new(
                    &format!("http://127.0.0.1:{}", addr.port()),
                    Some(token.clone()),
                );
                let (tx, rx) = oneshot::channel::<()>();
                let name = ready.config.name.clone();
                let task = tokio::spawn(async move {
                    let agent::Ready {
                        config,
                        gpus,
                        identity,
                    } = ready;
                    let r = agent::run_agent(config, client, gpus, async move {
                        let _ = rx.await;
                    })
                    .await;
                    // The name is free again as soon as the agent is gone.
                    drop(identity);
                    if let Err(e) = r {
                        let _ = failed_tx.send(Some(Arc::new(e)));
                    }
                });
                (Some(name), Some(tx), Some(task))
            }
        };
        Ok(Daemon {
            url,
            addr,
            token,
            events: events.downgrade(),
            agent_name,
            agent_failed,
            stop_agent,
            agent_task,
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

    /// The local agent's name, if one was started.
    pub fn agent_name(&self) -> Option<&str> {
        self.agent_name.as_deref()
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
        let mut rx = self.agent_failed.clone();
        async move {
            loop {
                if let Some(e) = rx.borrow_and_update().clone() {
                    return e;
                }
                if rx.changed().await.is_err() {
                    // The agent ended without an error: nothing to report, ever.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Stop the local agent (its jobs are stopped and reported ended while
    /// the server still listens; at most [`AGENT_STOP_LIMIT`]), then the
    /// server (long-lived streams get two seconds). Returns the server's
    /// error if serving failed.
    pub async fn stop(self) -> Result<(), DaemonError> {
        if let Some(tx) = self.stop_agent {
            let _ = tx.send(());
        }
        if let Some(task) = self.agent_task {
            let _ = tokio::time::timeout(AGENT_STOP_LIMIT, task).await;
        }
        if let Some((_, m)) = self.metrics {
            m.abort();
        }
        let _ = self.stop_server.send(());
        self.serving.await??;
        Ok(())
    }
}
