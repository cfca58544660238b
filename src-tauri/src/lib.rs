//! Trainyard's desktop shell (Tauri v2). Thin by design: on launch it
//! attaches to the daemon already running for its home, or starts one
//! in-process (`trainyard::daemon`, as `trainyard up` does) on loopback with
//! the home's token and a local agent, stopped in the daemon's order when the
//! app exits (or, with `TRAINYARD_URL`, uses a daemon elsewhere), and opens a
//! window on the daemon's web UI. Native extras only: a tray icon with a
//! queue/GPU summary, a notification when a job ends, and a folder picker
//! for dataset snapshots. Everything else is the UI talking to the API.

use std::sync::Mutex;
use std::time::Duration;

use tauri::menu::{Menu, MenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, RunEvent, WebviewUrl, WebviewWindowBuilder};
use tauri_plugin_dialog::DialogExt;
use tauri_plugin_notification::NotificationExt;
use trainyard::api::Event;
use trainyard::client::Client;
use trainyard::daemon::{self, Daemon};
use trainyard::queue::{JobId, JobState};
use trainyard::server::{Config, Secret};
use trainyard::Home;

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

/// The daemon this app started, if it started one: stopped when the app exits.
struct Embedded(Mutex<Option<Daemon>>);

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
    let config = daemon::Config {
        server: Config {
            home,
            addr: "127.0.0.1:0".parse()?,
            lease: Duration::from_secs(30),
            allow_hosts: Vec::new(),
            // The home's token, so the CLI works against this daemon too.
            token: None,
            retention: Default::default(),
            notify: Default::default(),
        },
        // The local agent: NVML, or a fake inventory only when asked for.
        agent: Some(trainyard::agent::Setup {
            fake_gpus: std::env::var(trainyard::gpu::FAKE_GPUS_ENV).ok(),
            fake_gpu_trace: std::env::var_os(trainyard::gpu::FAKE_GPU_TRACE_ENV).map(Into::into),
            ..Default::default()
        }),
        metrics_bind: None,
    };
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
    *app.state::<Embedded>()
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(daemon);
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

/// The tray's one-line summary, refreshed every few seconds.
async fn tray_summary(app: AppHandle, client: Client) {
    loop {
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
                format!("Trainyard — {running} running, {queued} queued; {held}/{gpus} GPUs in use")
            }
            (Err(e), _) | (_, Err(e)) => format!("Trainyard — daemon unreachable: {e}"),
        };
        if let Some(tray) = app.tray_by_id("main") {
            let _ = tray.set_tooltip(Some(&text));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Launch the desktop app.
pub fn run() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tauri::Builder::default()
        .manage(Embedded(Mutex::new(None)))
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_notification::init())
        .invoke_handler(tauri::generate_handler![pick_folder])
        .setup(|app| {
            let handle = app.handle().clone();
            let d = start_daemon(&handle)?;
            let mut url: tauri::Url = d.url.parse()?;
            if let Some(t) = &d.token {
                url.set_fragment(Some(&format!("token={t}")));
            }
            WebviewWindowBuilder::new(app, "main", WebviewUrl::External(url))
                .title("Trainyard")
                .inner_size(1280.0, 800.0)
                .build()?;
            let open = MenuItem::with_id(app, "open", "Open Trainyard", true, None::<&str>)?;
            let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
            let menu = Menu::with_items(app, &[&open, &quit])?;
            TrayIconBuilder::with_id("main")
                .icon(app.default_window_icon().cloned().ok_or("no app icon")?)
                .tooltip("Trainyard")
                .menu(&menu)
                .on_menu_event(|app, ev| match ev.id.as_ref() {
                    "open" => {
                        if let Some(w) = app.get_webview_window("main") {
                            let _ = w.show();
                            let _ = w.set_focus();
                        }
                    }
                    "quit" => app.exit(0),
                    _ => {}
                })
                .build(app)?;
            tauri::async_runtime::spawn(tray_summary(handle, d.client));
            Ok(())
        })
        .build(tauri::generate_context!())
        .expect("the Tauri application builds")
        .run(|app, event| {
            if let RunEvent::Exit = event {
                // The daemon's order: the local agent stops and reports its
                // jobs while the server still listens, then the server.
                let daemon = app
                    .state::<Embedded>()
                    .0
                    .lock()
                    .ok()
                    .and_then(|mut d| d.take());
                if let Some(d) = daemon {
                    if let Err(e) = tauri::async_runtime::block_on(d.stop()) {
                        tracing::error!(error = %e, "the daemon did not stop cleanly");
                    }
                }
            }
        });
}
