//! `trainyard demo`: starts a daemon on a throwaway home seeded by
//! `trainyard::demo` (fake GPUs, a dataset with two versions, wandb runs,
//! jobs in every state) and opens the UI; Ctrl-C stops it and deletes the
//! home.

use std::process::{ExitCode, Stdio};

use anyhow::Context;
use clap::Args;
use trainyard::daemon::{self, Daemon};
use trainyard::server;
use trainyard::Home;

use super::Ctx;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Port for the demo's daemon (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print the UI's address instead of opening a browser.
    #[arg(long)]
    no_open: bool,
    /// Keep the throwaway home when the demo stops (its path is printed).
    #[arg(long)]
    keep: bool,
}

/// Opens `url` in the desktop's browser; false where there is no display
/// or no opener.
fn open_browser(url: &str) -> bool {
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if display {
        "xdg-open"
    } else {
        return false;
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .is_ok()
}

pub fn demo(ctx: &Ctx, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("trainyard-demo-")
        .tempdir()
        .context("creating the demo's throwaway home")?;
    let home = Home::at(dir.path());
    home.ensure()?;
    let seeded = trainyard::demo::prepare(&home)?;
    let config = daemon::Config::loopback(
        home.clone(),
        args.port,
        Some(trainyard::agent::Setup {
            name: Some("demo".into()),
            fake_gpus: Some(trainyard::demo::FAKE_GPUS.into()),
            fake_gpu_trace: Some(seeded.trace.clone()),
            ..Default::default()
        }),
    );
    let rt = super::daemon::runtime()?;
    let code = rt.block_on(async {
        let stop = super::daemon::stop_signal();
        let daemon = Daemon::start(config).await?;
        let user = trainyard::user::current();
        let jobs = daemon
            .client()
            .submit(trainyard::demo::jobs(&user))
            .await
            .context("submitting the demo's jobs")?;
        let url = daemon.url().to_string();
        let login = server::ui_login_url(&url, daemon.token());
        let root = dir.path().display();
        if ctx.json {
            println!(
                "{}",
                serde_json::json!({
                    "url": url,
                    "home": dir.path(),
                    "gpus": trainyard::demo::FAKE_GPUS,
                    "dataset": seeded.dataset,
                    "versions": seeded.versions,
                    "runs": seeded.runs,
                    "jobs": jobs.iter().map(|j| j.0).collect::<Vec<_>>(),
                })
            );
        } else {
            println!("Trainyard demo on a throwaway home: {root}");
            println!(
                "  FAKE GPUs ({}), replaying a trace; dataset `{}` with versions v1 and v2; {} wandb runs; {} jobs",
                trainyard::demo::FAKE_GPUS,
                seeded.dataset,
                seeded.runs,
                jobs.len()
            );
            let opened = !args.no_open && open_browser(&login);
            if opened {
                println!("  opened the UI in your browser");
            } else {
                println!("  open the UI: {login}");
            }
            println!("  the CLI against it: TRAINYARD_HOME={root} trainyard ps   (or gpus, data log sample, runs ls)");
            println!(
                "  Ctrl-C stops the demo{}",
                if args.keep {
                    " and keeps its home"
                } else {
                    " and deletes its home"
                }
            );
        }
        let agent_failed = daemon.agent_failed();
        tokio::select! {
            _ = stop => {}
            e = agent_failed => eprintln!("error: the demo's agent stopped: {e}"),
        }
        daemon.stop().await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })?;
    if args.keep {
        let kept = dir.keep();
        eprintln!("kept the demo's home: {}", kept.display());
    } else {
        dir.close().context("deleting the demo's home")?;
    }
    Ok(code)
}
