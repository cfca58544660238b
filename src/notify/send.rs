//! The daemon's sender: [`Notifier`] holds the outbox, the sinks (the
//! config's, read at start, and those added with `notify add`) and the
//! HTTP client; [`Notifier::run`] routes new events, sends due deliveries
//! (several at once, each with a timeout), and records each outcome:
//! delivered, retry at `now + backoff`, or dead after the last try. It
//! also watches the free space of the store and the logs (`disk_low`).
//!
//! Delivery is at least once: a delivery is marked delivered only after
//! the sink answered 2xx, so only a crash in that instant can send one
//! twice; webhook receivers get the event id (and an `Idempotency-Key`
//! header) to drop such a repeat.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::event::{Event, EventKind};
use super::format;
use super::outbox::{Due, Outbox};
use super::sink::{check_name, redact, Origin, Sink, SinkKind};
use super::NotifyError;
use crate::db::now_ns;

/// When to try a failed delivery again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure; doubled after each further one.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Tries in all; a delivery that fails this many times is dead.
    pub tries: u32,
}

impl Default for Backoff {
    /// 10 s, doubling, at most 1 h, 10 tries (about 2.8 h in all).
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            tries: 10,
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed tries (1 for the first), or
    /// `None` when none is left.
    pub fn after(&self, failures: u32) -> Option<Duration> {
        if failures >= self.tries.max(1) {
            return None;
        }
        let shift = failures.saturating_sub(1).min(30);
        Some(self.first.saturating_mul(1 << shift).min(self.max))
    }
}

/// Free space under which a disk counts as low: below `min_percent` of
/// its size or below `min_bytes`, whichever is larger.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskLimits {
    /// Percent of the file system's size.
    pub min_percent: f64,
    /// Bytes.
    pub min_bytes: u64,
}

impl Default for DiskLimits {
    /// 5 % or 2 GiB.
    fn default() -> DiskLimits {
        DiskLimits {
            min_percent: 5.0,
            min_bytes: 2 << 30,
        }
    }
}

impl DiskLimits {
    /// Whether `avail` of `total` bytes is low.
    pub fn low(&self, avail: u64, total: u64) -> bool {
        let floor = (total as f64 * self.min_percent / 100.0) as u64;
        avail < floor.max(self.min_bytes).min(total)
    }
}

/// What time it is (ns since the epoch) for digests: the system clock,
/// or one a test moves by hand.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(now_ns))
    }
    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }
    /// Now.
    pub fn now_ns(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// How the sender runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Retries.
    pub backoff: Backoff,
    /// How long one request may take.
    pub timeout: Duration,
    /// The UI's base URL for links (`UI/#/queue/ID`); the daemon's URL
    /// when `None`.
    pub ui_url: Option<String>,
    /// When the store's or the logs' disk is low.
    pub disk: DiskLimits,
    /// How often the disks are checked.
    pub disk_every: Duration,
    /// How often the daemon looks for digests that are due.
    pub digest_every: Duration,
    /// The clock digests go by (periods end by it).
    pub clock: Clock,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            backoff: Backoff::default(),
            timeout: Duration::from_secs(10),
            ui_url: None,
            disk: DiskLimits::default(),
            disk_every: Duration::from_secs(60),
            digest_every: Duration::from_secs(30),
            clock: Clock::system(),
        }
    }
}

/// A notification for the desktop app to show.
#[derive(Debug, Clone, PartialEq)]
pub struct DesktopNotice {
    /// The event's id.
    pub id: i64,
    /// Its kind.
    pub kind: EventKind,
    /// One line.
    pub title: String,
    /// The facts and detail.
    pub body: String,
    /// Where to look in the UI.
    pub link: String,
}

/// Hands a desktop notice to whoever shows them; false when nobody listens.
pub type DesktopOut = Box<dyn Fn(DesktopNotice) -> bool + Send + Sync>;

/// The notification state of a daemon.
pub struct Notifier {
    outbox: Outbox,
    config_sinks: Vec<Sink>,
    sinks: RwLock<Arc<Vec<Sink>>>,
    settings: Settings,
    ui_url: String,
    http: reqwest::Client,
    wake: tokio::sync::Notify,
    desktop: std::sync::OnceLock<DesktopOut>,
    disks: Vec<(&'static str, PathBuf)>,
    disk_low: Mutex<HashMap<&'static str, bool>>,
}

/// Why one try failed.
struct TryError {
    message: String,
    /// Retrying cannot help (the sink refused the request as such).
    permanent: bool,
}

impl Notifier {
    /// A notifier over `outbox`, with the config's sinks; `daemon_url` is
    /// the UI's address in links unless the settings name another, `disks`
    /// the directories whose free space is watched.
    pub fn new(
        outbox: Outbox,
        config_sinks: Vec<Sink>,
        settings: Settings,
        daemon_url: &str,
        disks: Vec<(&'static str, PathBuf)>,
    ) -> Result<Notifier, NotifyError> {
        let ui_url = settings
            .ui_url
            .clone()
            .unwrap_or_else(|| daemon_url.to_string());
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A webhook that redirects would have us post the event elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("trainyard/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with these settings builds");
        let n = Notifier {
            outbox,
            config_sinks,
            sinks: RwLock::new(Arc::new(Vec::new())),
            settings,
            ui_url,
            http,
            wake: tokio::sync::Notify::new(),
            desktop: std::sync::OnceLock::new(),
            disks,
            disk_low: Mutex::new(HashMap::new()),
        };
        n.reload()?;
        Ok(n)
    }

    /// Where `desktop` sinks' notices go (the daemon's event channel); set
    /// once. Until then, and when it says nobody listens, they are retried.
    pub fn set_desktop(&self, out: DesktopOut) {
        let _ = self.desktop.set(out);
    }

    /// How the sender runs.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Every sink: the config's, then those added with `notify add`.
    pub fn sinks(&self) -> Arc<Vec<Sink>> {
        self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reload(&self) -> Result<(), NotifyError> {
        let mut all = self.config_sinks.clone();
        for s in self.outbox.sinks()? {
            if all.iter().any(|c| c.name == s.name) {
                tracing::warn!(
                    sink = s.name,
                    "a stored sink has a config sink's name; the config's wins"
                );
                continue;
            }
            all.push(s);
        }
        *self.sinks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
        Ok(())
    }

    /// Add a sink (`notify add`); it gets the events that happen from now on.
    pub fn add(&self, sink: Sink) -> Result<(), NotifyError> {
        check_name(&sink.name)?;
        if self.sinks().iter().any(|s| s.name == sink.name) {
            return Err(NotifyError::SinkExists { name: sink.name });
        }
        self.outbox.add_sink(&Sink {
            origin: Origin::Cli,
            ..sink.clone()
        })?;
        self.reload()?;
        tracing::info!(sink = sink.name, kind = sink.kind.as_str(), url = ?sink.shown_url(), "notification sink added");
        Ok(())
    }

    /// Remove a sink added with `notify add`; its pending deliveries become
    /// dead letters.
    pub fn remove(&self, name: &str) -> Result<(), NotifyError> {
        if self.config_sinks.iter().any(|s| s.name == name) {
            return Err(NotifyError::ConfigSink {
                name: name.to_string(),
            });
        }
        if !self.outbox.remove_sink(name)? {
            return Err(NotifyError::UnknownSink {
                name: name.to_string(),
            });
        }
        self.outbox.abandon(name, "the sink was removed")?;
        self.reload()?;
        tracing::info!(sink = name, "notification sink removed");
        Ok(())
    }

    /// Queue a test message to one sink; returns the event's id.
    pub fn test(&self, name: &str) -> Result<i64, NotifyError> {
        if !self.sinks().iter().any(|s| s.name == name) {
            return Err(NotifyError::UnknownSink {
                name: name.to_string(),
            });
        }
        let ev = Event {
            detail: Some(format!(
                "Sent by `trainyard notify test {name}`: this sink works."
            )),
            ..Event::default()
        };
        let id = self.outbox.record_for(EventKind::Test, &ev, name)?;
        self.wake();
        Ok(id)
    }

    /// The digests owed at `now_ns` in `tz`: each digest sink with the
    /// periods that ended since its mark, oldest first. A sink seen for
    /// the first time (or whose `digest` changed) gets its mark set to
    /// now: its first digest covers the period now holds. Blocking.
    pub fn digests_owed(
        &self,
        now_ns: i64,
        tz: &jiff::tz::TimeZone,
    ) -> Result<Vec<(Sink, Vec<super::digest::Period>)>, NotifyError> {
        let mut out = Vec::new();
        for s in self.sinks().iter() {
            let Some(every) = s.rule.digest else {
                continue;
            };
            match self.outbox.digest_mark(&s.name)? {
                Some((e, through)) if e == every => {
                    let (owed, skipped) = super::digest::owed(every, through, now_ns, tz);
                    if skipped > 0 {
                        tracing::warn!(
                            sink = s.name,
                            skipped,
                            "the daemon was away for long: the oldest digests are skipped"
                        );
                    }
                    if !owed.is_empty() {
                        out.push((s.clone(), owed));
                    }
                }
                _ => {
                    tracing::info!(sink = s.name, every = %every, "digests start");
                    self.outbox.set_digest_mark(&s.name, every, now_ns)?;
                }
            }
        }
        Ok(out)
    }

    /// Record `sink`'s digest of `period` with its numbers (once: `None`
    /// when it was recorded before). Blocking.
    pub fn record_digest(
        &self,
        sink: &str,
        period: &super::digest::Period,
        counts: super::digest::Counts,
    ) -> Result<Option<i64>, NotifyError> {
        let ev = Event {
            digest: Some(super::digest::Digest {
                period: period.clone(),
                counts,
            }),
            ..Event::default()
        };
        let id = self.outbox.record_digest(sink, period, &ev)?;
        if let Some(id) = id {
            tracing::info!(sink, period = period.label, event = id, "digest recorded");
            self.wake();
        }
        Ok(id)
    }

    /// Record an event (agent lost, disk low, a failed sync; idle and
    /// schedule events) for routing and delivery. Blocking (SQLite).
    pub fn record(&self, kind: EventKind, event: &Event) -> Result<i64, NotifyError> {
        let id = self.outbox.record(kind, event)?;
        self.wake();
        Ok(id)
    }

    /// Wake the sender (an event was written).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Check the watched disks now; records `disk_low` when one becomes
    /// low (once, until it has room again). Blocking.
    pub fn check_disks(&self) {
        for (what, dir) in &self.disks {
            let Ok(st) = rustix::fs::statvfs(dir) else {
                continue;
            };
            let avail = st.f_bavail.saturating_mul(st.f_frsize);
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            let low = self.settings.disk.low(avail, total);
            let was = self
                .disk_low
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*what, low)
                .unwrap_or(false);
            if low && !was {
                tracing::warn!(disk = what, dir = %dir.display(), avail, total, "disk space low");
                let ev = Event {
                    detail: Some(format!(
                        "The {what} directory {} has {} free of {} ({:.1} %).",
                        dir.display(),
                        gib(avail),
                        gib(total),
                        if total > 0 {
                            avail as f64 * 100.0 / total as f64
                        } else {
                            0.0
                        }
                    )),
                    ..Event::default()
                };
                if let Err(e) = self.record(EventKind::DiskLow, &ev) {
                    tracing::error!(error = %e, "cannot record a notification");
                }
            }
        }
    }

    /// Send notifications until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut disks_checked: Option<Instant> = None;
        loop {
            if disks_checked.is_none_or(|t| t.elapsed() >= self.settings.disk_every) {
                disks_checked = Some(Instant::now());
                let n = self.clone();
                let _ = tokio::task::spawn_blocking(move || n.check_disks()).await;
            }
            let n = self.clone();
            let due = tokio::task::spawn_blocking(move || {
                n.outbox.route(&n.sinks())?;
                n.outbox.due(now_ns(), 32)
            })
            .await;
            let due = match due {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "notification outbox");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "notification outbox task");
                    continue;
                }
            };
            if !due.is_empty() {
                let full = due.len() == 32;
                let sinks = self.sinks();
                let outcomes =
                    futures_util::future::join_all(due.iter().map(|d| self.deliver(&sinks, d)))
                        .await;
                let n = self.clone();
                let _ = tokio::task::spawn_blocking(move || n.settle(&due, outcomes)).await;
                if full {
                    continue;
                }
            }
            let n = self.clone();
            let next = tokio::task::spawn_blocking(move || n.outbox.next_due())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let wait = next
                .map(|t| Duration::from_nanos(t.saturating_sub(now_ns()).max(0) as u64))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// Record each try's outcome. Blocking.
    fn settle(&self, due: &[Due], outcomes: Vec<Result<(), TryError>>) {
        for (d, r) in due.iter().zip(outcomes) {
            let res = match r {
                Ok(()) => {
                    tracing::info!(event = d.event_id, sink = d.sink, kind = %d.kind, "notification delivered");
                    self.outbox.delivered(d.event_id, &d.sink)
                }
                Err(e) => {
                    let failures = d.attempts + 1;
                    let next = if e.permanent {
                        None
                    } else {
                        self.settings.backoff.after(failures)
                    };
                    match next {
                        Some(w) => {
                            tracing::warn!(event = d.event_id, sink = d.sink, tries = failures, retry_in = ?w, error = %e.message, "notification not delivered; will retry")
                        }
                        None => {
                            tracing::error!(event = d.event_id, sink = d.sink, tries = failures, error = %e.message, "notification not delivered; given up (dead letter)")
                        }
                    }
                    let at = next.map(|w| {
                        now_ns().saturating_add(w.as_nanos().min(i64::MAX as u128) as i64)
                    });
                    self.outbox.failed(d.event_id, &d.sink, &e.message, at)
                }
            };
            if let Err(e) = res {
                tracing::error!(error = %e, "cannot record a notification's delivery");
            }
        }
    }

    async fn deliver(&self, sinks: &[Sink], d: &Due) -> Result<(), TryError> {
        let Some(sink) = sinks.iter().find(|s| s.name == d.sink) else {
            return Err(TryError {
                message: format!("no sink named {:?} any more", d.sink),
                permanent: true,
            });
        };
        let m = format::message(&self.ui_url, d.kind, &d.event);
        if sink.kind == SinkKind::Desktop {
            let notice = DesktopNotice {
                id: d.event_id,
                kind: d.kind,
                title: m.title.clone(),
                body: format::plain_body(&m),
                link: m.link.clone(),
            };
            let shown = self.desktop.get().is_some_and(|out| out(notice));
            return if shown {
                Ok(())
            } else {
                Err(TryError {
                    message: "no desktop app is listening".into(),
                    permanent: false,
                })
            };
        }
        let Some(url) = sink.url.as_ref() else {
            return Err(TryError {
                message: format!("the {} sink has no URL", sink.kind.as_str()),
                permanent: true,
            });
        };
        let (target, ntfy) = if sink.kind == SinkKind::Ntfy {
            match format::ntfy_target(url.expose()) {
                Some((root, topic)) => (root, Some(topic)),
                None => {
                    return Err(TryError {
                        message: format!("{} names no ntfy topic", redact(url.expose())),
                        permanent: true,
                    })
                }
            }
        } else {
            (url.expose().to_string(), None)
        };
        let body = format::payload(
            sink.kind,
            d.event_id,
            d.created_ns,
            d.kind,
            &d.event,
            &m,
            ntfy.as_deref().map(|t| (t, sink.priority)),
        );
        let shown = redact(url.expose());
        let resp = self
            .http
            .post(&target)
            .header(
                "Idempotency-Key",
                format!("trainyard-{}-{}", d.event_id, sink.name),
            )
            .json(&body)
            .send()
            .await
            .map_err(|e| TryError {
                // reqwest's message names the URL: drop it, show scheme and host.
                message: format!("POST {shown}: {}", causes(&e.without_url())),
                permanent: false,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text = format::clip(text.trim(), 200);
        let permanent =
            status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429);
        Err(TryError {
            message: format!(
                "POST {shown}: HTTP {}{}",
                status.as_u16(),
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            ),
            permanent,
        })
    }
}

/// An error and its causes, `a: b: c` (a connection refused says so).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let b = Backoff {
            first: Duration::from_secs(10),
            max: Duration::from_secs(60),
            tries: 5,
        };
        let waits: Vec<Option<Duration>> = (1..=5).map(|f| b.after(f)).collect();
        assert_eq!(
            waits,
            vec![
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(20)),
                Some(Duration::from_secs(40)),
                Some(Duration::from_secs(60)),
                None
            ]
        );
        let one = Backoff { tries: 1, ..b };
        assert_eq!(one.after(1), None);
        let huge = Backoff {
            tries: 100,
            ..Backoff::default()
        };
        assert_eq!(huge.after(99), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn disks_are_low_under_the_larger_floor() {
        let l = DiskLimits::default();
        let gb = 1u64 << 30;
        assert!(l.low(gb, 100 * gb), "1 GiB of 100: under 2 GiB and 5 %");
        assert!(l.low(4 * gb, 100 * gb), "4 %");
        assert!(!l.low(6 * gb, 100 * gb));
        assert!(l.low(gb, 10 * gb), "10 % but under 2 GiB");
        assert!(!l.low(3 * gb, 10 * gb));
        assert!(!l.low(0, 0), "no size: nothing to say");
    }
}
