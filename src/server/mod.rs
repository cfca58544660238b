//! The daemon's server: the HTTP API (`/api/v1`, axum) over the queue, the
//! scheduler loop, and the agents' rendezvous. [`Server::bind`] and
//! [`Server::serve`] are started, with the local agent, by
//! `crate::daemon::Daemon`, which `trainyard up` and the desktop shell use.
//!
//! It binds 127.0.0.1 by default. Every API call but `GET /api/v1/health`
//! needs the bearer token (`daemon.token`, 0600, in the Trainyard home), on
//! loopback too, and `guard` refuses foreign Host names, cross-origin
//! browser requests and bodies not declared as JSON before any handler runs.
//! The server never runs jobs itself: agents (the embedded one included)
//! talk to it over HTTP like any remote agent.

mod auth;
mod clusters;
mod coord;
mod datasets;
mod digest;
mod error;
mod guard;
mod idle_watch;
mod links;
mod notify;
mod routes;
mod runs;
mod schedules;
mod tele_state;
mod telemetry;
mod ui;
mod usage;
mod watches;

pub use auth::{
    load_or_create as load_or_create_token, read_token, remote_access_notice, Secret, TokenError,
};
pub use telemetry::MetricsServer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::queue::{Queue, QueueError};
use crate::Home;

/// Default port of `trainyard up`.
pub const DEFAULT_PORT: u16 = 7171;

/// The names of the daemon's files in the home (`Home::daemon_file_path`,
/// `Home::token_path`, `Home::daemon_lock_path` join them): `daemon.json`
/// (its URL and pid, so local clients find it without flags), `daemon.token`,
/// and `daemon.lock`, held exclusively for its lifetime: one daemon per home
/// (one scheduler per `queue.db`).
pub use crate::home::{DAEMON_FILE, LOCK_FILE, TOKEN_FILE};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its home (queue database, logs, token).
    pub home: Home,
    /// Address to listen on (127.0.0.1:7171 by default).
    pub addr: SocketAddr,
    /// How long an attempt's lease lasts without a heartbeat.
    pub lease: Duration,
    /// Host names the daemon answers to besides IP literals, `localhost`
    /// and (when bound beyond loopback) this machine's name: a LAN name, a
    /// reverse proxy's. Any other Host header is refused (DNS rebinding).
    pub allow_hosts: Vec<String>,
    /// Use this token instead of the home's `daemon.token` (the desktop
    /// shell's per-launch token).
    pub token: Option<Secret>,
    /// How long finished jobs and their logs are kept, and how big a log grows.
    pub retention: Retention,
    /// Notification delivery: retries, timeouts, the UI address in links,
    /// the disk-space floor.
    pub notify: crate::notify::send::Settings,
}

/// What the daemon keeps of finished jobs, applied at start and then every
/// `every`. `None` keeps everything on that count.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Keep at most this many finished jobs (the most recently finished).
    pub keep_jobs: Option<u64>,
    /// Forget finished jobs that ended longer ago than this.
    pub keep_for: Option<Duration>,
    /// Cap each attempt's log at this many bytes: past it, the head is
    /// dropped and a marker line says how much (see `docs/queue-format.md`).
    pub max_log_bytes: Option<u64>,
    /// How often retention runs.
    pub every: Duration,
}

impl Default for Retention {
    /// 100,000 finished jobs, 90 days, 64 MiB per attempt log, every minute.
    fn default() -> Retention {
        Retention {
            keep_jobs: Some(100_000),
            keep_for: Some(Duration::from_secs(90 * 24 * 3600)),
            max_log_bytes: Some(64 << 20),
            every: Duration::from_secs(60),
        }
    }
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon runs for this home.
    #[error(
        "another daemon is running for the Trainyard home {home}: {url} (pid {pid}); use it (the \
         CLI and the desktop app find it by themselves), stop it, or start this one with another \
         --home"
    )]
    Running {
        /// The home.
        home: PathBuf,
        /// The running daemon's URL, as its daemon.json says.
        url: String,
        /// Its pid.
        pid: String,
    },
    /// The lock file could not be opened.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another daemon running? try --port)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The queue database.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The lab config (`config.toml`) is unusable: the daemon does not start.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The notification outbox.
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    /// The telemetry database.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The watch database (`watch.db`).
    #[error(transparent)]
    Watch(#[from] crate::db::DbError),
    /// Serving failed.
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving, daemon.
pub struct Server {
    /// Held (locked) until `serve` returns.
    _lock: std::fs::File,
    listener: tokio::net::TcpListener,
    coord: Arc<coord::Coord>,
    guard: Arc<guard::Guard>,
    addr: SocketAddr,
    home: Home,
    token: Secret,
}

/// What `daemon.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonFile {
    /// The base URL.
    pub url: String,
    /// The daemon's pid.
    pub pid: u32,
}

impl Server {
    /// Open the queue, load or create the token, and bind the address.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let home = config.home.clone();
        let lock = lock_home(&home)?;
        let token = match config.token {
            Some(t) => t,
            None => auth::load_or_create(&home.token_path())?,
        };
        let lab = crate::config::LabConfig::load(&home.config_path())?;
        let queue_path = home.queue_path();
        let queue = tokio::task::spawn_blocking(move || Queue::open(&queue_path))
            .await
            .expect("opening the queue does not panic")?;
        let tele_path = home.telemetry_path();
        let zone = lab
            .zone()
            .map_err(|source| crate::config::ConfigError::Invalid {
                path: home.config_path(),
                field: "usage.timezone",
                source: Box::new(source),
            })?;
        let telemetry = tokio::task::spawn_blocking(move || {
            crate::telemetry::Telemetry::open(&tele_path, Default::default())?.with_day_zone(&zone)
        })
        .await
        .expect("opening the telemetry database does not panic")?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        let notifier = {
            let sinks = lab.notify_sinks(&home.config_path())?;
            let queue_path = home.queue_path();
            let disks = vec![("store", home.store_dir()), ("logs", home.logs_dir())];
            let settings = config.notify.clone();
            let url = format!("http://{addr}");
            tokio::task::spawn_blocking(move || {
                let outbox = crate::notify::Outbox::open(&queue_path)?;
                crate::notify::Notifier::new(outbox, sinks, settings, &url, disks)
            })
            .await
            .expect("opening the notification outbox does not panic")?
        };
        let coord = Arc::new(coord::Coord::new(
            queue,
            home.clone(),
            config.lease,
            config.retention,
            telemetry,
            lab,
            Arc::new(notifier),
        ));
        coord
            .notify
            .set_desktop(notify::desktop_out(coord.events.clone()));
        let watch_home = home.clone();
        let watcher = tokio::task::spawn_blocking(move || crate::watch::Watcher::open(&watch_home))
            .await
            .expect("opening the watch database does not panic")?;
        let _ = coord.watches.set(Arc::new(watcher));
        let guard = Arc::new(guard::Guard::new(token.clone(), addr, &config.allow_hosts));
        Ok(Server {
            _lock: lock,
            listener,
            coord,
            guard,
            addr,
            home,
            token,
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every change the daemon will announce (the same events as
    /// `/api/v1/events`), for in-process observers such as the desktop shell.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::api::Event> {
        self.coord.events.subscribe()
    }

    /// The channel of those events, for holders that subscribe later.
    pub(crate) fn events(&self) -> tokio::sync::broadcast::Sender<crate::api::Event> {
        self.coord.events.clone()
    }

    /// The token every API call but `GET /api/v1/health` must carry.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// Serve until `shutdown` completes; long-lived streams get two seconds
    /// to end after that.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let daemon_file = self.home.daemon_file_path();
        let info = DaemonFile {
            url: self.url(),
            pid: std::process::id(),
        };
        // Owner-only (0600), also when a stale file of a crashed daemon had another mode.
        let write = |bytes: &[u8]| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&daemon_file)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)
        };
        if let Err(e) = write(&serde_json::to_vec_pretty(&info).expect("serializes")) {
            tracing::warn!(path = %daemon_file.display(), error = %e, "cannot write the daemon file");
        }
        tracing::info!(url = %info.url, "daemon listening");
        let sched = tokio::spawn(scheduler_loop(self.coord.clone()));
        let schedules = tokio::spawn(schedule_loop(self.coord.clone()));
        let retention = tokio::spawn(retention_loop(self.coord.clone()));
        let compact = tokio::spawn(telemetry::compact_loop(self.coord.clone()));
        let stats = tokio::spawn(telemetry::stats_loop(self.coord.clone()));
        let notify = tokio::spawn(self.coord.notify.clone().run());
        let digests = tokio::spawn(digest::digest_loop(self.coord.clone()));
        // The watch rules run in threads of their own (they hash and walk).
        if let Some(w) = self.coord.watches.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || w.reconcile()).await;
        }
        let clusters = tokio::spawn(clusters::follow_loop(self.coord.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = routes::router(self.coord.clone(), self.guard.clone());
        // The peer address: `/metrics` needs no token over loopback.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(());
        });
        let result = tokio::select! {
            r = serve => r.map_err(ServerError::Serve),
            _ = async {
                let _ = rx.await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            } => Ok(()),
        };
        sched.abort();
        schedules.abort();
        retention.abort();
        compact.abort();
        stats.abort();
        notify.abort();
        digests.abort();
        if let Some(w) = self.coord.watches.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || w.stop_all()).await;
        }
        clusters.abort();
        // Only remove the file if it is still ours.
        if let Ok(text) = std::fs::read_to_string(&daemon_file) {
            if serde_json::from_str::<DaemonFile>(&text).is_ok_and(|d| d.pid == info.pid) {
                let _ = std::fs::remove_file(&daemon_file);
            }
        }
        tracing::info!("daemon stopped");
        result
    }
}

/// Take the home's daemon lock, or say which daemon holds it.
fn lock_home(home: &Home) -> Result<std::fs::File, ServerError> {
    use rustix::fs::{flock, FlockOperation};
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.daemon_lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ServerError::Lock {
            path: path.clone(),
            source,
        })?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let running = running_daemon(home);
            Err(ServerError::Running {
                home: home.root().to_path_buf(),
                url: running.as_ref().map_or_else(
                    || "(starting; no daemon.json yet)".into(),
                    |d| d.url.clone(),
                ),
                pid: running.map_or_else(|| "?".into(), |d| d.pid.to_string()),
            })
        }
        Err(e) => Err(ServerError::Lock {
            path,
            source: e.into(),
        }),
    }
}

/// Whether a daemon holds this home's lock now (starting or serving).
pub fn home_in_use(home: &Home) -> bool {
    use rustix::fs::{flock, FlockOperation};
    std::fs::File::open(home.daemon_lock_path())
        .is_ok_and(|f| flock(&f, FlockOperation::NonBlockingLockShared).is_err())
}

/// The daemon that serves this home now, if one does: its `daemon.json`,
/// trusted only while some process holds the home's daemon lock (a killed
/// daemon leaves a stale file behind).
pub fn running_daemon(home: &Home) -> Option<DaemonFile> {
    use rustix::fs::{flock, FlockOperation};
    let info = std::fs::read_to_string(home.daemon_file_path())
        .ok()
        .and_then(|t| serde_json::from_str::<DaemonFile>(&t).ok())?;
    let lock = std::fs::File::open(home.daemon_lock_path()).ok()?;
    match flock(&lock, FlockOperation::NonBlockingLockShared) {
        // Nobody holds it: the file is stale.
        Ok(()) => None,
        Err(_) => Some(info),
    }
}

/// Run a scheduling pass whenever something changed, and besides every
/// second while LAN jobs are queued, assigned or running (leases, start
/// windows, delayed retries), every quarter lease up to 10 s otherwise
/// (agents gone silent). Passes are at least 2 ms apart, so a
/// burst of submissions or ends is handled by one pass, not one each.
async fn scheduler_loop(coord: Arc<coord::Coord>) {
    // With work in the queue a pass every second at most (leases, start
    // windows, delayed retries are time-based); with none, a quarter lease
    // (lost agents): submissions, finishes and new agents wake it anyway.
    let busy = (coord.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let idle = (coord.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = busy;
    loop {
        let _ = tokio::time::timeout(tick, coord.wake_sched.notified()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let c = coord.clone();
        match tokio::task::spawn_blocking(move || c.schedule()).await {
            Ok(Ok(work)) => tick = if work { busy } else { idle },
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scheduling pass failed");
                tokio::time::sleep(tick).await;
            }
            Err(e) => tracing::error!(error = %e, "scheduling pass panicked"),
        }
    }
}

/// Evaluate the schedules now, then whenever the next one is due (at most
/// a minute apart, so a changed clock is noticed) or one was added or
/// resumed. The evaluation takes the time as an argument; only this loop
/// reads the system clock.
async fn schedule_loop(coord: Arc<coord::Coord>) {
    const IDLE: Duration = Duration::from_secs(60);
    loop {
        let c = coord.clone();
        let next =
            match tokio::task::spawn_blocking(move || c.evaluate_schedules(jiff::Timestamp::now()))
                .await
            {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "schedule evaluation failed");
                    jiff::Timestamp::now()
                        .checked_add(Duration::from_secs(1))
                        .ok()
                }
                Err(e) => {
                    tracing::error!(error = %e, "schedule evaluation panicked");
                    jiff::Timestamp::now()
                        .checked_add(Duration::from_secs(1))
                        .ok()
                }
            };
        let wait = next
            .and_then(|t| {
                let d = t.duration_since(jiff::Timestamp::now());
                Duration::try_from(d).ok()
            })
            // A few ms past the fire time, so the occurrence is due.
            .map(|d| (d + Duration::from_millis(5)).min(IDLE))
            .unwrap_or(if next.is_some() {
                Duration::from_millis(5)
            } else {
                IDLE
            });
        let _ = tokio::time::timeout(wait, coord.wake_schedules.notified()).await;
    }
}

/// Apply retention now and then every `retention.every`.
async fn retention_loop(coord: Arc<coord::Coord>) {
    let every = coord.retention.every.max(Duration::from_millis(100));
    loop {
        let c = coord.clone();
        match tokio::task::spawn_blocking(move || c.apply_retention()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention panicked"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The address of the UI that logs in with `token`: the UI keeps the token
/// from the URL fragment for the tab's session and removes it from the
/// address bar (a fragment is never sent to a server or in a Referer).
pub fn ui_login_url(url: &str, token: &Secret) -> String {
    let t: String = token
        .expose()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{}/#token={t}", url.trim_end_matches('/'))
}

/// The daemon URL and token a local client should use: `TRAINYARD_URL`
/// style overrides are the caller's; this reads the home's files.
pub fn local_daemon(home: &Home) -> (Option<String>, Option<PathBuf>) {
    let url = std::fs::read_to_string(home.daemon_file_path())
        .ok()
        .and_then(|t| serde_json::from_str::<DaemonFile>(&t).ok())
        .map(|d| d.url);
    let token = home.token_path();
    (url, token.exists().then_some(token))
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is in the OpenAPI document, and the
    /// document lists no route that does not exist.
    #[test]
    fn openapi_paths_match_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::routes::OPENAPI).unwrap();
        let mut documented: Vec<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        let src = include_str!("routes.rs");
        // `.route("/path", ...)`, also where rustfmt broke the call over lines.
        let mut routed: Vec<String> = src
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .map(|l| format!("{}{}", crate::api::PREFIX, &l[..l.find('"').unwrap()]))
            .collect();
        routed.sort();
        assert_eq!(documented, routed);
    }
}
