//! Trainyard's desktop shell (Tauri v2). Thin by design: on launch it
//! attaches to the daemon already running for its home, or starts one
//! in-process (`trainyard::daemon`, as `trainyard up` does) on loopback with
//! the home's token and a local agent, stopped in the daemon's order when the
//! app exits (or, with `TRAINYARD_URL`, uses a daemon elsewhere), and opens a
//! window on the daemon's web UI. Native extras only: a tray icon with a
//! queue/GPU summary, a notification when a job ends, a folder picker for
//! dataset snapshots, and the connection to a lab daemon (`lab` tests it,
//! `tokens` keeps its token, `settings` the rest): the window shows either
//! daemon, switched from the UI or the tray. Everything else is the UI
//! talking to the API.

pub mod lab;
mod lend;
pub mod settings;
pub mod tokens;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tauri::ipc::CapabilityBuilder;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, RunEvent, WebviewUrl, WebviewWindowBuilder, WindowEvent, Wry};
use tauri_plugin_dialog::DialogExt;
use tauri_plugin_notification::NotificationExt;
use trainyard::api::Event;
use trainyard::client::Client;
use trainyard::daemon::{self, Daemon};
use trainyard::queue::{JobId, JobState};
use trainyard::server::Secret;
use trainyard::Home;

use crate::lab::{ConnectError, LabInfo};
use crate::settings::Settings;
use crate::tokens::{TokenError, TokenStore};

/// Set when the user wants WebKit's GPU compositing back (docs/desktop.md).
const ACCELERATED_ENV: &str = "TRAINYARD_DESKTOP_ACCELERATED";

/// Make the window's WebKit light when idle (issue 21's bounds, measured by
/// scripts/bench-desktop): no accelerated compositing, whose layer backing
/// stores doubled the web process's memory (330 MB against 200) and whose
/// repaints cost twice the CPU for a dashboard that never animates; the
/// "document viewer" cache model (no page cache, small memory caches: the
/// UI is one page, served from loopback). `TRAINYARD_DESKTOP_ACCELERATED=1`
/// keeps WebKit's defaults.
#[cfg(target_os = "linux")]
fn light_webview(webview: tauri::webview::PlatformWebview) {
    use webkit2gtk::{
        CacheModel, HardwareAccelerationPolicy, SettingsExt, WebContextExt, WebViewExt,
    };
    if std::env::var_os(ACCELERATED_ENV).is_some_and(|v| v != "0") {
        return;
    }
    let view = webview.inner();
    if let Some(settings) = WebViewExt::settings(&view) {
        settings.set_hardware_acceleration_policy(HardwareAccelerationPolicy::Never);
        settings.set_enable_page_cache(false);
    }
    if let Some(context) = view.context() {
        context.set_cache_model(CacheModel::DocumentViewer);
    }
}

#[cfg(not(target_os = "linux"))]
fn light_webview(_webview: tauri::webview::PlatformWebview) {}

/// The native folder picker, for "snapshot a folder" in the Datasets page.
#[tauri::command]
async fn pick_folder(app: AppHandle) -> Option<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog().file().pick_folder(move |p| {
        let _ = tx.send(p.and_then(|p| p.into_path().ok()));
    });
    rx.await
        .ok()
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Where the window points and how to talk to that daemon.
struct Target {
    url: String,
    client: Client,
    token: Option<String>,
}

/// Start the in-process daemon and local agent, or use `TRAINYARD_URL`.
fn start_daemon(app: &AppHandle) -> Result<Target, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("TRAINYARD_URL") {
        let token = std::env::var("TRAINYARD_TOKEN").ok();
        let client = Client::new(&url, token.clone().map(Secret::new));
        return Ok(Target { url, client, token });
    }
    let home = Home::resolve(None)?;
    home.ensure()?;
    // One daemon per home: attach to the one `trainyard up` (or another
    // window) runs, with the home's token, instead of starting a second.
    if let Some(running) = trainyard::server::running_daemon(&home) {
        let secret = trainyard::server::read_token(&home.token_path())?;
        let client = Client::new(&running.url, Some(secret.clone()));
        tracing::info!(url = %running.url, pid = running.pid, "attaching to the running daemon");
        return Ok(Target {
            url: running.url,
            client,
            token: Some(secret.expose().to_string()),
        });
    }
    let agent = trainyard::agent::Setup {
        fake_gpus: std::env::var(trainyard::gpu::FAKE_GPUS_ENV).ok(),
        fake_gpu_trace: std::env::var_os(trainyard::gpu::FAKE_GPU_TRACE_ENV).map(Into::into),
        ..Default::default()
    };
    // Any free loopback port; the home's token, so the CLI works against
    // this daemon too. The local agent: NVML, or a fake inventory only when
    // asked for.
    let config = daemon::Config::loopback(home.clone(), 0, Some(agent.clone()));
    let daemon = tauri::async_runtime::block_on(Daemon::start(config))?;
    let url = daemon.url().to_string();
    let client = daemon.client();
    let token = daemon.token().expose().to_string();
    let failed = daemon.agent_failed();
    tauri::async_runtime::spawn(async move {
        let e = failed.await;
        tracing::error!(error = %e, "the local agent stopped");
    });
    tauri::async_runtime::spawn(notify_job_ends(
        app.clone(),
        client.clone(),
        daemon.subscribe(),
    ));
    if daemon.agent_name().is_some() {
        // It can be lent to a lab (lend.rs).
        app.manage(lend::LocalAgent {
            home: home.clone(),
            setup: agent,
        });
    }
    *app.state::<lend::Embedded>().0.blocking_lock() = Some(daemon);
    Ok(Target {
        url,
        client,
        token: Some(token),
    })
}

/// A desktop notification when a job succeeds, fails or is lost, and
/// each message for a `desktop` notification sink.
async fn notify_job_ends(
    app: AppHandle,
    client: Client,
    mut events: tokio::sync::broadcast::Receiver<Event>,
) {
    loop {
        let e = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let (id, state) = match e {
            // A `desktop` notification sink's message (`trainyard notify add
            // NAME --desktop`): shown as the daemon formatted it.
            Event::Notification { title, body, .. } => {
                let _ = app.notification().builder().title(title).body(body).show();
                continue;
            }
            Event::Job { id, state } => (id, state),
            _ => continue,
        };
        if !matches!(
            state,
            JobState::Succeeded | JobState::Failed | JobState::Lost
        ) {
            continue;
        }
        let name = match client.job(JobId(id.0)).await {
            Ok(j) => j
                .job
                .spec
                .name
                .clone()
                .unwrap_or_else(|| j.job.spec.argv().join(" ")),
            Err(_) => String::new(),
        };
        let _ = app
            .notification()
            .builder()
            .title(format!("Job {id} {state}"))
            .body(name)
            .show();
    }
}

/// Which daemon the window shows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Showing {
    /// The local daemon (the one this app started or attached to).
    Local,
    /// The lab daemon at this address.
    Lab(String),
}

/// The connection state the commands and the tray share.
struct Desktop {
    /// The local daemon: URL, client, token.
    local: Target,
    /// The app's config directory (`desktop.toml`, `lab-token`).
    config_dir: PathBuf,
    /// Where lab tokens go, or why none can be kept.
    tokens: Result<TokenStore, String>,
    state: Mutex<State>,
}

struct State {
    settings: Settings,
    showing: Showing,
    /// A client of the lab daemon shown, for the tray summary.
    lab_client: Option<Client>,
    /// Why the last automatic reconnect to the lab failed.
    last_error: Option<String>,
    /// Lab origins already given their capability (one each; a capability
    /// cannot be taken back, so it is added once and only ever for an
    /// address the user connected to).
    lab_origins: HashSet<String>,
}

impl Desktop {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settings_path(&self) -> PathBuf {
        self.config_dir.join(settings::FILE_NAME)
    }

    fn tokens(&self) -> Result<&TokenStore, DesktopError> {
        self.tokens
            .as_ref()
            .map_err(|e| DesktopError::NoTokenStore(e.clone()))
    }
}

/// What a connection command failed on; the UI shows `message`.
#[derive(Debug, thiserror::Error)]
enum DesktopError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot keep the lab token: {0}")]
    Token(#[from] TokenError),
    #[error("cannot keep the lab token: {0}")]
    NoTokenStore(String),
    #[error("cannot save the desktop settings: {0}")]
    Settings(Box<settings::SettingsError>),
    #[error("cannot change the autostart entry {path}: {source}")]
    Autostart {
        path: String,
        source: std::io::Error,
    },
    #[error("the window could not show {url}: {source}")]
    Window {
        url: String,
        source: Box<tauri::Error>,
    },
    /// Lending the GPUs to the lab, or taking them back, did not happen.
    #[error("{0}")]
    Lend(String),
}

impl From<settings::SettingsError> for DesktopError {
    fn from(e: settings::SettingsError) -> Self {
        DesktopError::Settings(Box::new(e))
    }
}

impl DesktopError {
    fn kind(&self) -> &'static str {
        match self {
            DesktopError::Connect(ConnectError::BadUrl { .. }) => "bad_url",
            DesktopError::Connect(ConnectError::NoToken { .. }) => "no_token",
            DesktopError::Connect(ConnectError::Unreachable { .. }) => "unreachable",
            DesktopError::Connect(ConnectError::NotTrainyard { .. }) => "not_trainyard",
            DesktopError::Connect(ConnectError::Incompatible { .. }) => "incompatible",
            DesktopError::Connect(ConnectError::WrongToken { .. }) => "wrong_token",
            DesktopError::Token(_) | DesktopError::NoTokenStore(_) => "token_store",
            DesktopError::Settings(_) => "settings",
            DesktopError::Autostart { .. } => "autostart",
            DesktopError::Window { .. } => "window",
            DesktopError::Lend(_) => "lend",
        }
    }
}

/// `{kind, message}`, what `invoke` rejects with.
impl Serialize for DesktopError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("DesktopError", 2)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}

/// What the Connect page shows.
#[derive(Debug, Serialize)]
struct ConnectionView {
    /// `local` or `lab`.
    showing: &'static str,
    /// The local daemon's address.
    local_url: String,
    /// The remembered lab daemon.
    lab: Option<String>,
    /// `keyring` or `file`, or null when no token can be kept.
    token_store: Option<&'static str>,
    /// Why no token can be kept.
    token_store_error: Option<String>,
    /// Why the last automatic reconnect failed.
    last_error: Option<String>,
    close_to_tray: bool,
    autostart: bool,
    /// The lab daemon this computer's GPUs are lent to.
    lent_to: Option<String>,
    /// Whether they can be lent: the app started the local daemon and its agent.
    can_lend: bool,
}

fn view(app: &AppHandle) -> ConnectionView {
    let d = app.state::<Desktop>();
    let st = d.state();
    ConnectionView {
        showing: match st.showing {
            Showing::Local => "local",
            Showing::Lab(_) => "lab",
        },
        local_url: d.local.url.clone(),
        lab: st.settings.lab.clone(),
        token_store: d.tokens.as_ref().ok().map(TokenStore::kind),
        token_store_error: d.tokens.as_ref().err().cloned(),
        last_error: st.last_error.clone(),
        close_to_tray: st.settings.close_to_tray,
        autostart: settings::autostart_path().is_some_and(|p| settings::autostart_on(&p)),
        lent_to: lend::lent_to(app),
        can_lend: app.try_state::<lend::LocalAgent>().is_some(),
    }
}

/// The lab daemon the app remembers.
fn remembered_lab(app: &AppHandle) -> Option<String> {
    app.state::<Desktop>().state().settings.lab.clone()
}

/// Blocking work (D-Bus, files) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .expect("a blocking task does not panic")
}

/// The commands the local daemon's page may call (besides the folder
/// picker, which `capabilities/main.json` gives every loopback page).
const LOCAL_PERMISSIONS: &[&str] = &[
    "allow-connection",
    "allow-use-local",
    "allow-test-lab",
    "allow-connect-lab",
    "allow-forget-lab",
    "allow-set-close-to-tray",
    "allow-set-autostart",
    "allow-lend-gpus",
    // Closing its own window, as the title bar's button does (with close to
    // tray on, that hides it): what the desktop test presses.
    "core:window:allow-close",
];

/// The commands a lab daemon's page may call: read the connection and
/// switch back to the local daemon. Not the folder picker (a folder of
/// this computer means nothing to a lab server), not connecting elsewhere,
/// not the settings.
const LAB_PERMISSIONS: &[&str] = &["allow-connection", "allow-use-local"];

/// Let the page at `origin` call `permissions`, in the main window only.
fn allow(app: &AppHandle, id: &str, origin: &str, permissions: &[&str]) -> tauri::Result<()> {
    let mut cap = CapabilityBuilder::new(id)
        .remote(origin.to_string())
        .local(false)
        .window("main");
    for p in permissions {
        cap = cap.permission(*p);
    }
    app.add_capability(cap)
}

/// Point the window at `url` with `token` in the fragment.
fn navigate(
    app: &AppHandle,
    url: &str,
    token: Option<&Secret>,
    route: Option<&str>,
) -> Result<(), DesktopError> {
    let werr = |source| DesktopError::Window {
        url: url.to_string(),
        source: Box::new(source),
    };
    let mut u: tauri::Url = url.parse().map_err(|e| werr(tauri::Error::InvalidUrl(e)))?;
    let fragment = match (token, route) {
        (Some(t), Some(r)) => format!("token={}&{r}", t.expose()),
        (Some(t), None) => format!("token={}", t.expose()),
        (None, Some(r)) => r.to_string(),
        (None, None) => "/gpus".to_string(),
    };
    u.set_fragment(Some(&fragment));
    let w = app
        .get_webview_window("main")
        .ok_or_else(|| werr(tauri::Error::WindowNotFound))?;
    w.navigate(u).map_err(werr)?;
    let _ = w.show();
    Ok(())
}

/// Show the local daemon (optionally on a route such as `/connect`).
fn show_local(app: &AppHandle, route: Option<&str>) -> Result<(), DesktopError> {
    let d = app.state::<Desktop>();
    let token = d.local.token.clone().map(Secret::new);
    navigate(app, &d.local.url, token.as_ref(), route)?;
    {
        let mut st = d.state();
        st.showing = Showing::Local;
        st.lab_client = None;
    }
    refresh_tray(app);
    Ok(())
}

/// Show the lab daemon at `url` (already probed with `token`).
fn show_lab(app: &AppHandle, url: &str, token: &Secret) -> Result<(), DesktopError> {
    let d = app.state::<Desktop>();
    let first = d.state().lab_origins.insert(url.to_string());
    if first {
        let id = format!("lab-{}", d.state().lab_origins.len());
        allow(app, &id, url, LAB_PERMISSIONS).map_err(|source| DesktopError::Window {
            url: url.to_string(),
            source: Box::new(source),
        })?;
    }
    navigate(app, url, Some(token), None)?;
    {
        let mut st = d.state();
        st.showing = Showing::Lab(url.to_string());
        st.lab_client = Some(Client::new(url, Some(token.clone())));
        st.last_error = None;
    }
    refresh_tray(app);
    Ok(())
}

/// The token to test or connect with: the one typed, else the one kept for
/// this address.
async fn token_for(
    app: &AppHandle,
    url: &str,
    typed: Option<String>,
) -> Result<Secret, DesktopError> {
    if let Some(t) = typed
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return Ok(Secret::new(t));
    }
    let remembered = app.state::<Desktop>().state().settings.lab.as_deref() == Some(url);
    if remembered {
        let (a, u) = (app.clone(), url.to_string());
        let kept = blocking(move || {
            a.state::<Desktop>()
                .tokens()?
                .load(&u)
                .map_err(DesktopError::from)
        })
        .await?;
        if let Some(t) = kept {
            return Ok(t);
        }
    }
    Err(ConnectError::NoToken {
        url: url.to_string(),
    }
    .into())
}

fn save_settings(app: &AppHandle, change: impl FnOnce(&mut Settings)) -> Result<(), DesktopError> {
    let d = app.state::<Desktop>();
    let mut next = d.state().settings.clone();
    change(&mut next);
    next.save(&d.settings_path())?;
    d.state().settings = next;
    Ok(())
}

/// The connection state, for the Connect page and the header.
#[tauri::command]
async fn connection(app: AppHandle) -> ConnectionView {
    view(&app)
}

/// Show the local daemon: one click back from a lab.
#[tauri::command]
async fn use_local(app: AppHandle) -> Result<ConnectionView, DesktopError> {
    show_local(&app, None)?;
    save_settings(&app, |s| s.show_lab = false)?;
    Ok(view(&app))
}

/// Test a lab daemon without switching to it.
#[tauri::command]
async fn test_lab(
    app: AppHandle,
    url: String,
    token: Option<String>,
) -> Result<LabInfo, DesktopError> {
    let url = lab::normalize_url(&url)?;
    let token = token_for(&app, &url, token).await?;
    Ok(lab::probe(&url, &token).await?)
}

/// Test a lab daemon and, when it answers, remember it (its token in the
/// keyring or the token file) and show it. Any failure changes nothing.
#[tauri::command]
async fn connect_lab(
    app: AppHandle,
    url: String,
    token: Option<String>,
) -> Result<ConnectionView, DesktopError> {
    let url = lab::normalize_url(&url)?;
    let token = token_for(&app, &url, token).await?;
    lab::probe(&url, &token).await?;
    let previous = app.state::<Desktop>().state().settings.lab.clone();
    {
        let (app, url, token) = (app.clone(), url.clone(), token.clone());
        blocking(move || -> Result<(), DesktopError> {
            let d = app.state::<Desktop>();
            let store = d.tokens()?;
            store.save(&url, &token)?;
            // One lab is remembered: the token of the one it replaces goes.
            if let Some(old) = previous.filter(|p| *p != url) {
                store.forget(&old)?;
            }
            Ok(())
        })
        .await?;
    }
    save_settings(&app, |s| {
        s.lab = Some(url.clone());
        s.show_lab = true;
    })?;
    show_lab(&app, &url, &token)?;
    tracing::info!(url = %url, "showing the lab daemon");
    Ok(view(&app))
}

/// Forget the remembered lab daemon and its token (showing the local
/// daemon first if the lab is shown).
#[tauri::command]
async fn forget_lab(app: AppHandle) -> Result<ConnectionView, DesktopError> {
    // GPUs lent to it come back first.
    lend::take_back(&app).await?;
    if matches!(app.state::<Desktop>().state().showing, Showing::Lab(_)) {
        show_local(&app, None)?;
    }
    let remembered = app.state::<Desktop>().state().settings.lab.clone();
    if let Some(url) = remembered {
        let a = app.clone();
        blocking(move || -> Result<(), DesktopError> {
            Ok(a.state::<Desktop>().tokens()?.forget(&url)?)
        })
        .await?;
    }
    save_settings(&app, |s| {
        s.lab = None;
        s.show_lab = false;
        s.lend_gpus = false;
    })?;
    refresh_tray(&app);
    Ok(view(&app))
}

/// Lend this computer's GPUs to the remembered lab daemon (its agent joins
/// the lab's pool), or take them back; kept across launches.
#[tauri::command]
async fn lend_gpus(app: AppHandle, on: bool) -> Result<ConnectionView, DesktopError> {
    if on {
        lend::lend(&app).await?;
    } else {
        lend::take_back(&app).await?;
    }
    save_settings(&app, |s| s.lend_gpus = on)?;
    refresh_tray(&app);
    Ok(view(&app))
}

/// Closing the window hides it in the tray (jobs keep running) or quits.
#[tauri::command]
async fn set_close_to_tray(app: AppHandle, on: bool) -> Result<ConnectionView, DesktopError> {
    save_settings(&app, |s| s.close_to_tray = on)?;
    refresh_tray(&app);
    Ok(view(&app))
}

/// Start the app (hidden in the tray) with the desktop session, or not.
#[tauri::command]
async fn set_autostart(app: AppHandle, on: bool) -> Result<ConnectionView, DesktopError> {
    toggle_autostart(on)?;
    refresh_tray(&app);
    Ok(view(&app))
}

fn toggle_autostart(on: bool) -> Result<(), DesktopError> {
    let path = settings::autostart_path().ok_or_else(|| DesktopError::Autostart {
        path: "~/.config/autostart".into(),
        source: std::io::Error::other("neither XDG_CONFIG_HOME nor HOME is set"),
    })?;
    let exe = std::env::current_exe().map_err(|source| DesktopError::Autostart {
        path: path.display().to_string(),
        source,
    })?;
    settings::set_autostart(&path, &exe, on).map_err(|source| DesktopError::Autostart {
        path: path.display().to_string(),
        source,
    })
}

/// The tray menu's items that change.
struct TrayItems {
    status: MenuItem<Wry>,
    /// Jobs and GPUs of the daemon shown (`tray_summary`).
    summary: MenuItem<Wry>,
    /// Wakes `tray_summary` when what the window shows changed.
    summary_now: tokio::sync::Notify,
    local: MenuItem<Wry>,
    lab: MenuItem<Wry>,
    close_to_tray: CheckMenuItem<Wry>,
    autostart: CheckMenuItem<Wry>,
}

/// `Trainyard (this computer)` or `Trainyard (lab http://…)`.
fn showing_label(showing: &Showing) -> String {
    match showing {
        Showing::Local => "Trainyard (this computer)".to_string(),
        Showing::Lab(url) => format!("Trainyard (lab {url})"),
    }
}

/// Bring the tray menu and tooltip in line with the state. Tray and menu calls run on
/// the main (GTK) thread and a call from elsewhere waits for it; this posts
/// the update there instead of waiting, so a tokio worker never blocks on
/// the main thread (which itself blocks on the runtime while the app quits:
/// a worker waiting for it would never be freed).
fn refresh_tray(app: &AppHandle) {
    let a = app.clone();
    let _ = app.run_on_main_thread(move || refresh_tray_now(&a));
}

fn refresh_tray_now(app: &AppHandle) {
    let Some(items) = app.try_state::<TrayItems>() else {
        return;
    };
    let d = app.state::<Desktop>();
    let (showing, lab, close) = {
        let st = d.state();
        (
            st.showing.clone(),
            st.settings.lab.clone(),
            st.settings.close_to_tray,
        )
    };
    let lent = lend::lent_to(app)
        .map(|u| format!(" · GPUs lent to {u}"))
        .unwrap_or_default();
    let _ = items.status.set_text(format!(
        "Showing: {}{lent}",
        match &showing {
            Showing::Local => "this computer's daemon".to_string(),
            Showing::Lab(u) => format!("lab server {u}"),
        }
    ));
    let _ = items.local.set_enabled(showing != Showing::Local);
    match &lab {
        Some(u) => {
            let _ = items.lab.set_text(format!("Show lab server {u}"));
            let _ = items.lab.set_enabled(showing == Showing::Local);
        }
        None => {
            let _ = items.lab.set_text("Show lab server (none remembered)");
            let _ = items.lab.set_enabled(false);
        }
    }
    items.summary_now.notify_one();
    let _ = items.close_to_tray.set_checked(close);
    let _ = items
        .autostart
        .set_checked(settings::autostart_path().is_some_and(|p| settings::autostart_on(&p)));
    if let Some(tray) = app.tray_by_id("main") {
        let _ = tray.set_tooltip(Some(format!("{}{lent}", showing_label(&showing))));
    }
}

/// Reconnect to the remembered lab at launch, or stay local saying why.
async fn reconnect_lab(app: AppHandle, url: String) {
    let a = app.clone();
    let u = url.clone();
    let token = blocking(move || {
        a.state::<Desktop>()
            .tokens()
            .and_then(|s| s.load(&u).map_err(DesktopError::from))
    })
    .await;
    let result = match token {
        Ok(Some(t)) => match lab::probe(&url, &t).await {
            Ok(_) => show_lab(&app, &url, &t),
            Err(e) => Err(e.into()),
        },
        Ok(None) => Err(ConnectError::NoToken { url: url.clone() }.into()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "not reconnected to the lab daemon");
        app.state::<Desktop>().state().last_error = Some(format!(
            "Not reconnected to the lab server at launch; showing this computer's daemon. {e}"
        ));
    }
}

/// How long the tray's summary may go without a refresh.
const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// The tray's one-line summary of the daemon shown (jobs running and
/// queued, GPUs in use), in the menu (Linux trays show no tooltip) and the
/// tooltip. Refreshed when the local daemon announces a job change (a burst
/// costs one refresh a second), when the window switches daemons, and
/// otherwise every [`SUMMARY_EVERY`]: an idle app asks its daemon for
/// nothing more often than that (polling every 5 s cost the hidden app
/// ~0.3 % of a core).
async fn tray_summary(app: AppHandle, mut events: Option<tokio::sync::broadcast::Receiver<Event>>) {
    loop {
        let (label, client) = {
            let d = app.state::<Desktop>();
            let st = d.state();
            let client = st
                .lab_client
                .clone()
                .unwrap_or_else(|| d.local.client.clone());
            (showing_label(&st.showing), client)
        };
        let text = match (
            client
                .jobs(&[JobState::Queued, JobState::Assigned, JobState::Running])
                .await,
            client.agents().await,
        ) {
            (Ok(jobs), Ok(agents)) => {
                let running = jobs.iter().filter(|j| j.state == JobState::Running).count();
                let queued = jobs.iter().filter(|j| j.state == JobState::Queued).count();
                let gpus: usize = agents.iter().map(|a| a.report.gpus.len()).sum();
                let held: usize = agents.iter().map(|a| a.held.len()).sum();
                format!("{running} running, {queued} queued; {held}/{gpus} GPUs in use")
            }
            (Err(e), _) | (_, Err(e)) => format!("daemon unreachable: {e}"),
        };
        // Posted, not waited for (see `refresh_tray`).
        let a = app.clone();
        let _ = app.run_on_main_thread(move || {
            if let Some(items) = a.try_state::<TrayItems>() {
                let _ = items.summary.set_text(&text);
            }
            if let Some(tray) = a.tray_by_id("main") {
                let _ = tray.set_tooltip(Some(format!("{label} — {text}")));
            }
        });
        next_summary(&app, &mut events).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Wait for the next reason to refresh the tray's summary.
async fn next_summary(
    app: &AppHandle,
    events: &mut Option<tokio::sync::broadcast::Receiver<Event>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(items) = app.try_state::<TrayItems>() else {
        return tokio::time::sleep(SUMMARY_EVERY).await;
    };
    let timeout = tokio::time::sleep(SUMMARY_EVERY);
    tokio::pin!(timeout);
    loop {
        tokio::select! {
            () = &mut timeout => return,
            () = items.summary_now.notified() => return,
            e = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match e {
                Ok(Event::Job { .. }) | Err(RecvError::Lagged(_)) => return,
                Ok(_) => {}
                Err(RecvError::Closed) => *events = None,
            },
        }
    }
}

fn on_tray_menu(app: &AppHandle, id: &str) {
    let result = match id {
        "open" => {
            if let Some(w) = app.get_webview_window("main") {
                let _ = w.show();
                let _ = w.unminimize();
                let _ = w.set_focus();
            }
            Ok(())
        }
        "local" => show_local(app, None).and_then(|()| save_settings(app, |s| s.show_lab = false)),
        "connect" => show_local(app, Some("/connect")),
        "lab" => {
            let remembered = app.state::<Desktop>().state().settings.lab.clone();
            if let Some(url) = remembered {
                let app = app.clone();
                tauri::async_runtime::spawn(async move {
                    if let Err(e) = connect_lab(app.clone(), url, None).await {
                        tracing::warn!(error = %e, "the lab daemon cannot be shown");
                        app.state::<Desktop>().state().last_error = Some(e.to_string());
                        let _ = show_local(&app, Some("/connect"));
                    }
                });
            }
            Ok(())
        }
        "close_to_tray" => {
            let on = !app.state::<Desktop>().state().settings.close_to_tray;
            save_settings(app, |s| s.close_to_tray = on)
        }
        "autostart" => {
            let on = !settings::autostart_path().is_some_and(|p| settings::autostart_on(&p));
            toggle_autostart(on)
        }
        "quit" => {
            app.exit(0);
            Ok(())
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, item = id, "tray menu action failed");
        let _ = app
            .notification()
            .builder()
            .title("Trainyard")
            .body(e.to_string())
            .show();
    }
    refresh_tray(app);
}

fn build_tray(app: &tauri::App) -> tauri::Result<()> {
    let items = TrayItems {
        status: MenuItem::with_id(
            app,
            "status",
            "Showing: this computer's daemon",
            false,
            None::<&str>,
        )?,
        summary: MenuItem::with_id(app, "summary", "…", false, None::<&str>)?,
        summary_now: tokio::sync::Notify::new(),
        local: MenuItem::with_id(
            app,
            "local",
            "Show this computer's daemon",
            false,
            None::<&str>,
        )?,
        lab: MenuItem::with_id(
            app,
            "lab",
            "Show lab server (none remembered)",
            false,
            None::<&str>,
        )?,
        close_to_tray: CheckMenuItem::with_id(
            app,
            "close_to_tray",
            "Close to tray (jobs keep running)",
            true,
            false,
            None::<&str>,
        )?,
        autostart: CheckMenuItem::with_id(
            app,
            "autostart",
            "Start with the session",
            true,
            false,
            None::<&str>,
        )?,
    };
    let open = MenuItem::with_id(app, "open", "Open Trainyard", true, None::<&str>)?;
    let connect = MenuItem::with_id(
        app,
        "connect",
        "Connect to a lab server…",
        true,
        None::<&str>,
    )?;
    let quit = MenuItem::with_id(
        app,
        "quit",
        "Quit (stops this computer's daemon)",
        true,
        None::<&str>,
    )?;
    let menu = Menu::with_items(
        app,
        &[
            &items.status,
            &items.summary,
            &items.local,
            &items.lab,
            &connect,
            &PredefinedMenuItem::separator(app)?,
            &items.close_to_tray,
            &items.autostart,
            &PredefinedMenuItem::separator(app)?,
            &open,
            &quit,
        ],
    )?;
    app.manage(items);
    TrayIconBuilder::with_id("main")
        .icon(
            app.default_window_icon()
                .cloned()
                .ok_or_else(|| tauri::Error::AssetNotFound("the app icon".into()))?,
        )
        .tooltip("Trainyard")
        .menu(&menu)
        .on_menu_event(|app, ev| on_tray_menu(app, ev.id.as_ref()))
        .build(app)?;
    Ok(())
}

/// Launch the desktop app. `--hidden` (the autostart entry's) starts it
/// in the tray with no window shown.
pub fn run() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let hidden = std::env::args().any(|a| a == settings::HIDDEN_ARG);
    tauri::Builder::default()
        .manage(lend::Embedded(tokio::sync::Mutex::new(None)))
        .manage(lend::Lent(tokio::sync::Mutex::new(None)))
        .manage(lend::Quitting::default())
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_notification::init())
        .invoke_handler(tauri::generate_handler![
            pick_folder,
            connection,
            use_local,
            test_lab,
            connect_lab,
            forget_lab,
            set_close_to_tray,
            set_autostart,
            lend_gpus
        ])
        .setup(move |app| {
            let handle = app.handle().clone();
            let local = start_daemon(&handle)?;
            let config_dir = app.path().app_config_dir()?;
            let tokens = TokenStore::open(&config_dir).map_err(|e| e.to_string());
            let settings =
                Settings::load(&config_dir.join(settings::FILE_NAME)).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "desktop settings unreadable: using the defaults");
                    Settings::default()
                });
            let local_origin = tauri::Url::parse(&local.url)?
                .origin()
                .ascii_serialization();
            let reconnect = settings.lab.clone().filter(|_| settings.show_lab);
            let lend_at_launch = settings.lend_gpus && settings.lab.is_some();
            let mut url: tauri::Url = local.url.parse()?;
            if let Some(t) = &local.token {
                url.set_fragment(Some(&format!("token={t}")));
            }
            app.manage(Desktop {
                local,
                config_dir,
                tokens,
                state: Mutex::new(State {
                    settings,
                    showing: Showing::Local,
                    lab_client: None,
                    last_error: None,
                    lab_origins: HashSet::new(),
                }),
            });
            allow(&handle, "local-daemon", &local_origin, LOCAL_PERMISSIONS)?;
            let window = WebviewWindowBuilder::new(app, "main", WebviewUrl::External(url))
                .title("Trainyard")
                .inner_size(1280.0, 800.0)
                .visible(!hidden)
                .build()?;
            window.with_webview(light_webview)?;
            build_tray(app)?;
            refresh_tray(&handle);
            if let Some(lab) = reconnect {
                tauri::async_runtime::spawn(reconnect_lab(handle.clone(), lab));
            }
            if lend_at_launch {
                let a = handle.clone();
                tauri::async_runtime::spawn(async move {
                    if let Err(e) = lend::lend(&a).await {
                        tracing::warn!(error = %e, "this computer's GPUs were not lent to the lab again");
                        a.state::<Desktop>().state().last_error = Some(format!(
                            "This computer's GPUs were not lent to the lab server again at launch: {e}"
                        ));
                    }
                    refresh_tray(&a);
                });
            }
            let events = handle
                .state::<lend::Embedded>()
                .0
                .blocking_lock()
                .as_ref()
                .map(Daemon::subscribe);
            tauri::async_runtime::spawn(tray_summary(handle, events));
            Ok(())
        })
        .on_window_event(|window, event| {
            if let WindowEvent::CloseRequested { api, .. } = event {
                let close_to_tray = window
                    .app_handle()
                    .try_state::<Desktop>()
                    .is_some_and(|d| d.state().settings.close_to_tray);
                if close_to_tray {
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
        })
        .build(tauri::generate_context!())
        .expect("the Tauri application builds")
        .run(|app, event| match event {
            // The lent agent first, then the daemon's order: the local agent
            // stops and reports its jobs while the server still listens,
            // then the server. The event loop runs on meanwhile.
            RunEvent::ExitRequested { code, api, .. } if lend::quit(app, code.unwrap_or(0)) => {
                api.prevent_exit();
            }
            // Nothing is left to stop after `quit`; an exit that skipped
            // the request still stops the daemon.
            RunEvent::Exit => tauri::async_runtime::block_on(lend::shut_down(app)),
            _ => {}
        });
}
