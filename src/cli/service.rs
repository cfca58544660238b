//! `trainyard service install|uninstall|status`: the daemon or an agent as
//! a systemd service. The unit itself is `trainyard::service`'s; this file
//! checks the flags the unit will run with, using the CLI's own parser.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use trainyard::service::{self, Role, Scope, Unit};

use super::Ctx;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write a systemd unit that runs `trainyard up` or `trainyard agent`
    /// with the given flags: restarted on failure, started after the
    /// network is up, ready once it listens (`systemctl start` waits for
    /// it), logs in the journal. A system unit by default (run as root,
    /// e.g. with sudo); --user for your own.
    ///
    /// Examples: sudo trainyard service install up --bind 0.0.0.0 --no-agent;
    /// trainyard service install --user --now agent --server http://lab:7171 --token-file ~/.trainyard-token
    Install(InstallArgs),
    /// Stop and disable the service and remove its unit.
    Uninstall(WhichArgs),
    /// Whether a unit is installed, what it runs, and (where systemd runs)
    /// whether it is enabled and active.
    Status(StatusArgs),
}

/// Which program the unit runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// The daemon (`trainyard up`).
    Up,
    /// An agent for a daemon elsewhere (`trainyard agent`).
    Agent,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Up => Role::Up,
            RoleArg::Agent => Role::Agent,
        }
    }
}

/// Where the unit goes.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// A user unit (~/.config/systemd/user), started with your session
    /// (at boot too after `loginctl enable-linger`), instead of a system one.
    #[arg(long)]
    user: bool,
    /// Use this directory instead of systemd's (to look at the unit, or to
    /// ship it in a package); systemctl is not called.
    #[arg(long, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        if self.user {
            Scope::User
        } else {
            Scope::System
        }
    }

    fn dir(&self) -> anyhow::Result<PathBuf> {
        match &self.unit_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(self.scope().unit_dir()?),
        }
    }

    /// Whether to call systemctl: systemd runs and the unit is in its
    /// directory.
    fn manage(&self) -> bool {
        self.unit_dir.is_none() && service::systemd_running()
    }
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// System units: the user the service runs as [default: $SUDO_USER,
    /// else the current user].
    #[arg(long, value_name = "USER", conflicts_with = "user")]
    run_as: Option<String>,
    /// Then enable and start it (`systemctl enable --now`).
    #[arg(long)]
    now: bool,
    /// `up` (the daemon) or `agent`.
    role: RoleArg,
    /// The flags of `trainyard up` or `trainyard agent` (see their --help),
    /// checked now. Secrets never go here: an agent reads its token from a
    /// 0600 --token-file.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    flags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WhichArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// `up` or `agent`.
    role: RoleArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// `up` or `agent` [default: both].
    role: Option<RoleArg>,
}

pub fn run(ctx: &Ctx, cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::Install(a) => install(ctx, a),
        ServiceCommand::Uninstall(a) => uninstall(ctx, a),
        ServiceCommand::Status(a) => status(ctx, a),
    }
}

/// Flags whose value is a path: made absolute, since a service runs in `/`.
const PATH_FLAGS: [&str; 2] = ["--token-file", "--fake-gpu-trace"];

/// The flags as the unit will carry them: parsed by the CLI's own parser
/// (so a typo fails now, not at boot), paths made absolute, secrets and
/// `--home` refused.
fn checked_flags(
    ctx: &Ctx,
    role: Role,
    flags: &[String],
) -> anyhow::Result<(Vec<String>, Duration)> {
    let cmd = role.command();
    // `--home` and `--json` are the CLI's global flags: given here, they
    // are taken as `service install`'s own (the unit's home).
    if flags
        .iter()
        .any(|f| f == "--token" || f.starts_with("--token="))
    {
        bail!(
            "--token would put the secret into the unit file, which anyone can read: \
             write it to a file only you can read (chmod 600) and pass --token-file FILE"
        );
    }
    let mut out = Vec::with_capacity(flags.len());
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        if PATH_FLAGS.contains(&f.as_str()) {
            out.push(f.clone());
            if let Some(v) = it.next() {
                out.push(absolute(v)?);
            }
        } else if let Some((p, v)) = PATH_FLAGS
            .iter()
            .find_map(|p| f.strip_prefix(&format!("{p}=")).map(|v| (p, v)))
        {
            out.push(format!("{p}={}", absolute(v)?));
        } else {
            out.push(f.clone());
        }
    }
    let argv = ["trainyard", cmd]
        .into_iter()
        .map(str::to_string)
        .chain(out.iter().cloned());
    super::Cli::try_parse_from(argv).map_err(|e| {
        anyhow::anyhow!(
            "the flags for `trainyard {cmd}` in the unit: {}",
            e.to_string().trim_start_matches("error: ").trim_end()
        )
    })?;
    if role == Role::Agent {
        // Taken from the environment by the parser, but a service does
        // not have the installer's environment.
        if !out
            .iter()
            .any(|f| f == "--server" || f.starts_with("--server="))
        {
            bail!("an agent's unit needs --server URL (the daemon it joins)");
        }
        match token_file(&out) {
            Some(f) => {
                trainyard::server::read_token(Path::new(&f))
                    .with_context(|| format!("--token-file {f}"))?;
            }
            None if ctx.home.token_path().exists() => {}
            None => bail!(
                "an agent's unit needs the daemon's token: write it to a file only the service's user \
                 can read (chmod 600) and pass --token-file FILE"
            ),
        }
    }
    let grace = flag_value(&out, "--grace")
        .map(|g| humantime::parse_duration(&g))
        .transpose()
        .context("--grace")?
        .unwrap_or(Duration::from_secs(10));
    Ok((out, grace))
}

fn absolute(p: &str) -> anyhow::Result<String> {
    let p = std::path::absolute(p).with_context(|| format!("making {p} absolute"))?;
    Ok(p.to_string_lossy().into_owned())
}

fn flag_value(flags: &[String], name: &str) -> Option<String> {
    let eq = format!("{name}=");
    flags.iter().enumerate().find_map(|(i, f)| {
        if f == name {
            flags.get(i + 1).cloned()
        } else {
            f.strip_prefix(&eq).map(str::to_string)
        }
    })
}

fn token_file(flags: &[String]) -> Option<String> {
    flag_value(flags, "--token-file")
}

fn install(ctx: &Ctx, a: InstallArgs) -> anyhow::Result<ExitCode> {
    let role = Role::from(a.role);
    let scope = a.scope.scope();
    let (args, grace) = checked_flags(ctx, role, &a.flags)?;
    let binary = std::env::current_exe().context("finding the trainyard binary")?;
    let home = std::path::absolute(ctx.home.root()).context("making the home absolute")?;
    let user = match scope {
        Scope::System => Some(a.run_as.clone().unwrap_or_else(|| {
            std::env::var("SUDO_USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(trainyard::user::current)
        })),
        Scope::User => None,
    };
    let unit = Unit {
        role,
        scope,
        binary,
        home,
        args,
        user,
        env_file: None,
        grace,
    };
    let dir = a.scope.dir()?;
    let path = unit.write(&dir)?;
    let name = role.unit_name();
    let manage = a.scope.manage();
    if manage {
        service::systemctl(scope, &["daemon-reload"])?;
        if a.now {
            service::systemctl(scope, &["enable", "--now", &name])?;
        }
    }
    let flag = if scope == Scope::User { " --user" } else { "" };
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "path": path,
                "unit": name,
                "scope": scope,
                "user": unit.user,
                "started": manage && a.now,
            })
        );
    } else {
        println!("wrote {}", path.display());
        if let Some(u) = &unit.user {
            println!("it runs as {u} with the home {}", unit.home.display());
        }
        if manage && a.now {
            println!(
                "enabled and started: systemctl{flag} status {name}; journalctl{flag} -u {name}"
            );
        } else if manage {
            println!("start it, now and at boot: systemctl{flag} enable --now {name}");
        } else if a.now {
            println!("not started: systemd does not manage this machine or --unit-dir was given");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(ctx: &Ctx, a: WhichArgs) -> anyhow::Result<ExitCode> {
    let role = Role::from(a.role);
    let scope = a.scope.scope();
    let path = a.scope.dir()?.join(role.unit_name());
    if !path.exists() {
        bail!("no {} unit at {}", role.unit_name(), path.display());
    }
    let manage = a.scope.manage();
    if manage {
        // A unit that never started is not loaded: nothing to stop.
        if let Err(e) = service::systemctl(scope, &["disable", "--now", &role.unit_name()]) {
            tracing::warn!(error = %e, "disabling the unit");
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if manage {
        service::systemctl(scope, &["daemon-reload"])?;
    }
    if ctx.json {
        println!("{}", serde_json::json!({ "removed": path }));
    } else {
        println!("removed {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let dir = a.scope.dir()?;
    let roles = match a.role {
        Some(r) => vec![Role::from(r)],
        None => vec![Role::Up, Role::Agent],
    };
    let all = roles
        .into_iter()
        .map(|r| service::status(r, a.scope.scope(), &dir))
        .collect::<Result<Vec<_>, _>>()?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &all {
        if !s.installed {
            println!(
                "{}: not installed ({})",
                s.role.unit_name(),
                s.path.display()
            );
            continue;
        }
        println!("{}: {}", s.role.unit_name(), s.path.display());
        if let Some(e) = &s.exec_start {
            println!("  runs: {e}");
        }
        match (&s.enabled, &s.active) {
            (Some(en), Some(ac)) => println!("  {en}, {ac}"),
            _ => println!("  (systemd does not manage this machine: no state)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
