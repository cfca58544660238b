//! "Lend this computer's GPUs to the lab": the desktop's local agent leaves
//! the local daemon and joins the remembered lab daemon as an agent, with
//! the lab's token, until the user takes the GPUs back (or quits). One agent
//! at a time owns the GPUs: the local daemon keeps serving (datasets, runs,
//! its queue) but runs no job while they are lent.
//!
//! The agent is the same identity and the same code as the local one
//! (`trainyard::agent::Handle`); only the daemon it talks to changes.

use std::sync::atomic::{AtomicBool, Ordering};

use tauri::{AppHandle, Manager};
use trainyard::agent::{Handle, Setup};
use trainyard::client::Client;
use trainyard::daemon::{Daemon, AGENT_STOP_LIMIT};
use trainyard::Home;

use crate::{lab, DesktopError};

/// The in-process daemon this app started, if it started one (not when it
/// attached to `trainyard up`): stopped when the app exits.
pub(crate) struct Embedded(pub(crate) tokio::sync::Mutex<Option<Daemon>>);

/// How the local agent was started, to start it again or lend it.
pub(crate) struct LocalAgent {
    pub(crate) home: Home,
    pub(crate) setup: Setup,
}

/// The agent lent to the lab, while it is.
pub(crate) struct Lent(pub(crate) tokio::sync::Mutex<Option<Handle>>);

/// The lab daemon the GPUs are lent to, if they are.
pub(crate) fn lent_to(app: &AppHandle) -> Option<String> {
    app.state::<Lent>()
        .0
        .try_lock()
        .ok()
        .and_then(|l| l.as_ref().map(|h| h.server().to_string()))
}

fn refuse(message: impl Into<String>) -> DesktopError {
    DesktopError::Lend(message.into())
}

/// Lend the GPUs to the remembered lab daemon: check it answers with its
/// token, refuse while local jobs run (they would be stopped), stop the
/// local agent, start the same agent for the lab.
pub(crate) async fn lend(app: &AppHandle) -> Result<(), DesktopError> {
    let lent = app.state::<Lent>();
    let mut lent = lent.0.lock().await;
    if lent.is_some() {
        return Ok(());
    }
    let Some(local) = app.try_state::<LocalAgent>() else {
        return Err(refuse(
            "this window shows a daemon started by `trainyard up`, not by the app: lend this \
             computer's GPUs with `trainyard agent --server URL` instead",
        ));
    };
    let url = crate::remembered_lab(app)
        .ok_or_else(|| refuse("connect to a lab server first: its GPUs are lent to that one"))?;
    let token = crate::token_for(app, &url, None).await?;
    lab::probe(&url, &token).await?;
    let embedded = app.state::<Embedded>();
    let mut daemon = embedded.0.lock().await;
    let Some(d) = daemon.as_mut() else {
        return Err(refuse("the local daemon is stopping"));
    };
    // The local agent's jobs would be stopped: say so instead.
    if let Some(name) = d.agent_name() {
        let busy = d
            .client()
            .agents()
            .await
            .map_err(|e| refuse(format!("the local daemon did not answer: {e}")))?
            .into_iter()
            .find(|a| a.name == name)
            .map_or(0, |a| a.report.attempts.len());
        if busy > 0 {
            return Err(refuse(format!(
                "{busy} job{} still run{} on this computer: wait for {} or cancel {} before \
                 lending its GPUs",
                if busy == 1 { "" } else { "s" },
                if busy == 1 { "s" } else { "" },
                if busy == 1 { "it" } else { "them" },
                if busy == 1 { "it" } else { "them" },
            )));
        }
    }
    d.stop_agent().await;
    let (home, setup) = (local.home.clone(), local.setup.clone());
    let ready = tauri::async_runtime::spawn_blocking(move || setup.prepare_again(&home))
        .await
        .expect("a blocking task does not panic");
    let ready = match ready {
        Ok(r) => r,
        Err(e) => {
            // Nothing lent: the GPUs go back to the local daemon.
            let _ = d.start_agent(local.setup.clone()).await;
            return Err(refuse(format!("the agent could not start: {e}")));
        }
    };
    let handle = Handle::spawn(ready, Client::new(&url, Some(token)));
    tracing::info!(lab = %url, agent = handle.name(), "this computer's GPUs are lent to the lab");
    // The lab refusing the agent (its name is another live agent's) takes
    // the GPUs back, saying why.
    let failed = handle.failed();
    let a = app.clone();
    tauri::async_runtime::spawn(async move {
        let e = failed.await;
        tracing::error!(error = %e, "the agent lent to the lab stopped");
        let _ = take_back(&a).await;
        a.state::<crate::Desktop>().state().last_error =
            Some(format!("The lab server refused this computer's agent: {e}"));
        crate::refresh_tray(&a);
    });
    *lent = Some(handle);
    Ok(())
}

/// Take the GPUs back: the lent agent stops (the lab hears its jobs ended)
/// and the local agent starts again.
pub(crate) async fn take_back(app: &AppHandle) -> Result<(), DesktopError> {
    let handle = app.state::<Lent>().0.lock().await.take();
    let Some(handle) = handle else {
        return Ok(());
    };
    handle.stop(AGENT_STOP_LIMIT).await;
    tracing::info!("this computer's GPUs are back with its own daemon");
    let Some(local) = app.try_state::<LocalAgent>() else {
        return Ok(());
    };
    let embedded = app.state::<Embedded>();
    let mut daemon = embedded.0.lock().await;
    if let Some(d) = daemon.as_mut() {
        d.start_agent(local.setup.clone())
            .await
            .map_err(|e| refuse(format!("the local agent did not start again: {e}")))?;
    }
    Ok(())
}

/// Where quitting stands: [`quit`] runs [`shut_down`] once, on the runtime,
/// and lets the app exit when it is done.
#[derive(Default)]
pub(crate) struct Quitting {
    started: AtomicBool,
    done: AtomicBool,
}

/// The app was asked to exit (its last window closed, or Quit): returns
/// whether to hold the exit back. The first request starts [`shut_down`]
/// on the runtime while the event loop goes on (tray, menu and window calls
/// from other threads wait for that loop, so it must not be blocked on the
/// shutdown), and exits with `code` once it is done.
pub(crate) fn quit(app: &AppHandle, code: i32) -> bool {
    let q = app.state::<Quitting>();
    if q.done.load(Ordering::SeqCst) {
        return false;
    }
    if !q.started.swap(true, Ordering::SeqCst) {
        let a = app.clone();
        tauri::async_runtime::spawn(async move {
            shut_down(&a).await;
            a.state::<Quitting>().done.store(true, Ordering::SeqCst);
            a.exit(code);
        });
    }
    true
}

/// Quitting: the lent agent first (the lab hears of its jobs), then the
/// daemon in its order (its agent, then the server).
pub(crate) async fn shut_down(app: &AppHandle) {
    if let Some(h) = app.state::<Lent>().0.lock().await.take() {
        h.stop(AGENT_STOP_LIMIT).await;
    }
    let daemon = app.state::<Embedded>().0.lock().await.take();
    if let Some(d) = daemon {
        if let Err(e) = d.stop().await {
            tracing::error!(error = %e, "the daemon did not stop cleanly");
        }
    }
}
