//! An agent running as a task of this process: the daemon's local agent,
//! or the desktop's agent lent to a lab daemon. The agent itself is the
//! ordinary HTTP client of whichever daemon `client` talks to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::Client;

use super::setup::Ready;
use super::worker::{run, AgentError};

/// A running in-process agent. Dropping it stops the agent without waiting;
/// [`Handle::stop`] waits until its jobs are stopped and reported.
pub struct Handle {
    name: String,
    server: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    failed: watch::Receiver<Option<Arc<AgentError>>>,
}

impl Handle {
    /// Run `ready` for the daemon `client` talks to, on the current tokio
    /// runtime. Its identity is released as soon as the agent ends.
    pub fn spawn(ready: Ready, client: Client) -> Handle {
        let (stop, rx) = oneshot::channel::<()>();
        let (failed_tx, failed) = watch::channel(None);
        let name = ready.config.name.clone();
        let server = client.url().to_string();
        let task = tokio::spawn(async move {
            let Ready {
                config,
                gpus,
                identity,
            } = ready;
            let r = run(config, client, gpus, async move {
                let _ = rx.await;
            })
            .await;
            // The name is free again as soon as the agent is gone.
            drop(identity);
            if let Err(e) = r {
                let _ = failed_tx.send(Some(Arc::new(e)));
            }
        });
        Handle {
            name,
            server,
            stop: Some(stop),
            task: Some(task),
            failed,
        }
    }

    /// Its name in the daemon's pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon it serves (its URL).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Resolves if the agent stops by itself (a live agent of another
    /// identity holds its name), with why. Never resolves while it runs,
    /// or once it was stopped.
    pub fn failed(&self) -> impl Future<Output = Arc<AgentError>> + Send + 'static {
        let mut rx = self.failed.clone();
        async move {
            loop {
                if let Some(e) = rx.borrow_and_update().clone() {
                    return e;
                }
                if rx.changed().await.is_err() {
                    // It ended without an error: nothing to report, ever.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Stop it: its jobs get SIGTERM (then SIGKILL after the grace) and are
    /// reported ended to its daemon, which may run them elsewhere. Waits at
    /// most `limit`.
    pub async fn stop(mut self, limit: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(limit, task).await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
