//! Running the daemon or an agent as a systemd service: the unit files
//! `trainyard service install` writes (system or user), their removal and
//! state, and the readiness notification (`sd_notify`) that makes
//! `systemctl start` return once the daemon listens.
//!
//! A unit names the binary by its absolute path, the Trainyard home, and
//! the `up`/`agent` flags given at install time, already checked by the
//! CLI. It never holds a secret: the daemon's token is the home's
//! `daemon.token` (0600), an agent's comes from a 0600 `--token-file`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Which program the unit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `trainyard up`: the daemon (with its local agent unless `--no-agent`).
    Up,
    /// `trainyard agent`: an agent for a daemon elsewhere.
    Agent,
}

impl Role {
    /// The subcommand.
    pub fn command(self) -> &'static str {
        match self {
            Role::Up => "up",
            Role::Agent => "agent",
        }
    }

    /// The unit's file name.
    pub fn unit_name(self) -> String {
        format!("trainyard-{}.service", self.command())
    }

    fn description(self) -> &'static str {
        match self {
            Role::Up => "Trainyard daemon (job queue, scheduler, HTTP API)",
            Role::Agent => "Trainyard agent (runs jobs on this host's GPUs)",
        }
    }
}

/// The system's service manager or the user's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `/etc/systemd/system`, run as a named user, started at boot.
    System,
    /// `~/.config/systemd/user`, started with the user's session (or at
    /// boot with `loginctl enable-linger`).
    User,
}

impl Scope {
    /// Where units of this scope live.
    pub fn unit_dir(self) -> Result<PathBuf, ServiceError> {
        match self {
            Scope::System => Ok(PathBuf::from("/etc/systemd/system")),
            Scope::User => {
                let base = std::env::var_os("XDG_CONFIG_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .filter(|v| !v.is_empty())
                            .map(|h| PathBuf::from(h).join(".config"))
                    })
                    .ok_or(ServiceError::NoConfigDir)?;
                Ok(base.join("systemd/user"))
            }
        }
    }

    /// `systemctl`'s arguments for this scope.
    fn systemctl(self) -> Vec<&'static str> {
        match self {
            Scope::System => vec![],
            Scope::User => vec!["--user"],
        }
    }
}

/// What a unit runs, as `service install` was asked.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Daemon or agent.
    pub role: Role,
    /// System or user unit.
    pub scope: Scope,
    /// The `trainyard` binary, absolute.
    pub binary: PathBuf,
    /// The Trainyard home, absolute.
    pub home: PathBuf,
    /// The flags after the subcommand, checked by the caller.
    pub args: Vec<String>,
    /// System units: the user the service runs as.
    pub user: Option<String>,
    /// An optional `EnvironmentFile=` (read if present) for settings the
    /// flags take from the environment, e.g. `TRAINYARD_URL` for an agent.
    /// Never for the token: that stays in its own 0600 file.
    pub env_file: Option<PathBuf>,
    /// The grace between SIGTERM and SIGKILL the jobs get: the unit's stop
    /// timeout leaves room for it.
    pub grace: Duration,
}

/// Where the `.deb` keeps the system units it ships (`packaging/systemd/`
/// in the repository, installed disabled into `/usr/lib/systemd/system`).
pub const PACKAGED_DIR: &str = "packaging/systemd";

/// The system units the `.deb` ships: the daemon and an agent, as the
/// system user `trainyard` with its home `/var/lib/trainyard` (both made by
/// the package's `postinst`). The admin puts flags the environment carries
/// into `/etc/default/trainyard-up` or `-agent` (an agent needs
/// `TRAINYARD_URL`) and an agent's token into `/etc/trainyard/agent.token`
/// (0600), then `systemctl enable --now trainyard-up` (or `-agent`).
pub fn packaged() -> Vec<Unit> {
    [Role::Up, Role::Agent]
        .into_iter()
        .map(|role| Unit {
            role,
            scope: Scope::System,
            binary: "/usr/bin/trainyard".into(),
            home: "/var/lib/trainyard".into(),
            args: match role {
                Role::Up => Vec::new(),
                Role::Agent => vec!["--token-file".into(), "/etc/trainyard/agent.token".into()],
            },
            user: Some("trainyard".into()),
            env_file: Some(format!("/etc/default/trainyard-{}", role.command()).into()),
            grace: Duration::from_secs(10),
        })
        .collect()
}

/// Why a unit cannot be written, removed or read.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Neither `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("cannot find the user's configuration directory: set HOME or XDG_CONFIG_HOME")]
    NoConfigDir,
    /// A path in the unit is not absolute.
    #[error("{what} must be an absolute path in a unit file: {path}")]
    NotAbsolute { what: &'static str, path: PathBuf },
    /// A value a unit file cannot carry.
    #[error("{what} cannot go into a unit file: {value:?} ({why})")]
    BadValue {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    /// Reading or writing a unit file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `systemctl` failed.
    #[error("`systemctl {args}` failed: {detail}")]
    Systemctl { args: String, detail: String },
}

/// One argument quoted for `ExecStart=` (systemd.service(5), "Command
/// lines"): double quotes when needed, `\` and `"` escaped, and `%` and `$`
/// doubled so that systemd neither expands specifiers nor variables.
fn exec_quote(what: &'static str, arg: &str) -> Result<String, ServiceError> {
    if arg.chars().any(|c| c.is_control()) {
        return Err(ServiceError::BadValue {
            what,
            value: arg.to_string(),
            why: "control characters",
        });
    }
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%$".contains(c));
    if plain {
        return Ok(escaped);
    }
    let mut q = String::from("\"");
    for c in escaped.chars() {
        if c == '\\' || c == '"' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Ok(q)
}

impl Unit {
    /// The unit file's text.
    pub fn render(&self) -> Result<String, ServiceError> {
        for (what, p) in [("the binary", &self.binary), ("the home", &self.home)] {
            if !p.is_absolute() {
                return Err(ServiceError::NotAbsolute {
                    what,
                    path: p.clone(),
                });
            }
        }
        let path = |what, p: &Path| -> Result<String, ServiceError> {
            let s = p.to_str().ok_or_else(|| ServiceError::BadValue {
                what,
                value: p.display().to_string(),
                why: "not UTF-8",
            })?;
            exec_quote(what, s)
        };
        let mut exec = vec![
            path("the binary", &self.binary)?,
            "--home".to_string(),
            path("the home", &self.home)?,
            self.role.command().to_string(),
        ];
        for a in &self.args {
            exec.push(exec_quote("a flag", a)?);
        }
        let env_file = match &self.env_file {
            Some(p) => format!("EnvironmentFile=-{}\n", path("the environment file", p)?),
            None => String::new(),
        };
        let mut u = String::new();
        let _ = writeln!(
            u,
            "# Written by `trainyard service install` (removed by `service uninstall`), or\n\
             # shipped disabled by the trainyard package (`systemctl enable --now` it).\n\
             # No secret is in this file: the token is read from a 0600 file.\n\
             [Unit]\n\
             Description={}\n\
             Documentation=man:systemd.service(5)\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             # Ready once the daemon listens (sd_notify), so `systemctl start` waits for it.\n\
             Type=notify\n\
             NotifyAccess=main\n\
             ExecStart={}\n\
             Environment=NO_COLOR=1\n\
             {}Restart=on-failure\n\
             RestartSec=5s\n\
             # SIGTERM to the daemon only: it stops its jobs (SIGTERM, then SIGKILL after\n\
             # the grace) and reports them before it exits; anything left is killed.\n\
             KillMode=mixed\n\
             TimeoutStopSec={}s\n\
             # Each attempt may get its own cgroup below the service's.\n\
             Delegate=yes",
            self.role.description(),
            exec.join(" "),
            env_file,
            self.grace.as_secs() + 30,
        );
        if let (Scope::System, Some(user)) = (self.scope, &self.user) {
            if user.is_empty()
                || !user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ServiceError::BadValue {
                    what: "the user",
                    value: user.clone(),
                    why: "a user name is letters, digits, '-', '_' and '.'",
                });
            }
            let _ = writeln!(u, "User={user}");
        }
        let _ = write!(
            u,
            "\n[Install]\nWantedBy={}\n",
            match self.scope {
                Scope::System => "multi-user.target",
                Scope::User => "default.target",
            }
        );
        Ok(u)
    }

    /// Writes the unit into `dir` (mode 0644: units are public, and hold
    /// no secret), atomically; returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ServiceError> {
        let text = self.render()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServiceError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(self.role.unit_name());
        let tmp = dir.join(format!(".{}.tmp", self.role.unit_name()));
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(path)
    }
}

/// Whether systemd manages this machine (and so `systemctl` works): the
/// test sd_booted(3) makes.
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `systemctl [--user] ARGS`; its output on success.
pub fn systemctl(scope: Scope, args: &[&str]) -> Result<String, ServiceError> {
    let mut all = scope.systemctl();
    all.extend_from_slice(args);
    let shown = all.join(" ");
    let out =
        Command::new("systemctl")
            .args(&all)
            .output()
            .map_err(|e| ServiceError::Systemctl {
                args: shown.clone(),
                detail: e.to_string(),
            })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(ServiceError::Systemctl {
            args: shown,
            detail: if err.is_empty() { text } else { err },
        })
    }
}

/// A unit's state, for `service status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Daemon or agent.
    pub role: Role,
    /// System or user.
    pub scope: Scope,
    /// The unit file.
    pub path: PathBuf,
    /// Whether the file exists.
    pub installed: bool,
    /// Its `ExecStart=` line.
    pub exec_start: Option<String>,
    /// `systemctl is-enabled`, where systemd runs.
    pub enabled: Option<String>,
    /// `systemctl is-active`, where systemd runs.
    pub active: Option<String>,
}

/// The state of `role`'s unit in `dir`.
pub fn status(role: Role, scope: Scope, dir: &Path) -> Result<Status, ServiceError> {
    let path = dir.join(role.unit_name());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(ServiceError::Io { path, source }),
    };
    let exec_start = text.as_deref().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .map(str::to_string)
    });
    let ask = |verb: &str| -> Option<String> {
        if !systemd_running() {
            return None;
        }
        // is-enabled/is-active exit non-zero for "disabled"/"inactive",
        // which are answers, not failures.
        let mut all = scope.systemctl();
        all.push(verb);
        let unit = role.unit_name();
        all.push(&unit);
        Command::new("systemctl")
            .args(&all)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    Ok(Status {
        role,
        scope,
        installed: text.is_some(),
        path,
        exec_start,
        enabled: ask("is-enabled"),
        active: ask("is-active"),
    })
}

/// Tells the service manager the daemon or agent is ready (a no-op
/// outside a `Type=notify` unit: without `$NOTIFY_SOCKET`).
pub fn notify_ready(status: &str) {
    let r = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot tell systemd the service is ready");
    }
}

/// Tells the service manager the service is stopping.
pub fn notify_stopping(status: &str) {
    let r = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(status),
    ]);
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot tell systemd the service is stopping");
    }
}

/// Whether stderr goes to the journal (systemd sets `$JOURNAL_STREAM`):
/// log lines then carry no timestamp (the journal has its own) and no
/// colour.
pub fn logs_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(scope: Scope, args: &[&str]) -> Unit {
        Unit {
            role: Role::Up,
            scope,
            binary: "/usr/bin/trainyard".into(),
            home: "/var/lib/trainyard".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            user: Some("lab".into()),
            env_file: None,
            grace: Duration::from_secs(10),
        }
    }

    /// The unit files in `packaging/systemd/` are what [`packaged`] renders
    /// (`TRAINYARD_BLESS=1 cargo test --lib packaged_units` rewrites them).
    #[test]
    fn packaged_units_are_what_the_code_renders() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(PACKAGED_DIR);
        for unit in packaged() {
            let want = unit.render().unwrap();
            assert!(want.contains("User=trainyard\n"));
            assert!(want.contains(&format!(
                "EnvironmentFile=-/etc/default/trainyard-{}\n",
                unit.role.command()
            )));
            let path = dir.join(unit.role.unit_name());
            if std::env::var_os("TRAINYARD_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &want).unwrap();
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                have,
                want,
                "{} differs from what the code renders: run TRAINYARD_BLESS=1 cargo test --lib packaged_units",
                path.display()
            );
        }
    }

    #[test]
    fn arguments_are_quoted_for_exec_start() {
        assert_eq!(exec_quote("x", "--port").unwrap(), "--port");
        assert_eq!(exec_quote("x", "0.0.0.0").unwrap(), "0.0.0.0");
        assert_eq!(exec_quote("x", "a b").unwrap(), "\"a b\"");
        assert_eq!(exec_quote("x", "50%").unwrap(), "50%%");
        assert_eq!(exec_quote("x", "$HOME").unwrap(), "$$HOME");
        assert_eq!(exec_quote("x", "say \"hi\"").unwrap(), "\"say \\\"hi\\\"\"");
        assert_eq!(exec_quote("x", "").unwrap(), "\"\"");
        assert!(exec_quote("x", "a\nb").is_err());
    }

    #[test]
    fn a_system_unit_runs_as_its_user_and_a_user_unit_as_the_user() {
        let s = unit(
            Scope::System,
            &["--bind", "0.0.0.0", "--allow-host", "gpu 1"],
        )
        .render()
        .unwrap();
        assert!(s.contains(
            "ExecStart=/usr/bin/trainyard --home /var/lib/trainyard up --bind 0.0.0.0 --allow-host \"gpu 1\"\n"
        ));
        assert!(s.contains("Type=notify\n"));
        assert!(s.contains("User=lab\n"));
        assert!(s.contains("TimeoutStopSec=40s\n"));
        assert!(s.contains("WantedBy=multi-user.target\n"));
        let u = unit(Scope::User, &[]).render().unwrap();
        assert!(!u.contains("User="));
        assert!(u.contains("WantedBy=default.target\n"));
        let mut bad = unit(Scope::System, &[]);
        bad.user = Some("lab\nExecStartPre=/bin/sh".into());
        assert!(bad.render().is_err());
        let mut rel = unit(Scope::User, &[]);
        rel.home = "home".into();
        assert!(matches!(
            rel.render(),
            Err(ServiceError::NotAbsolute {
                what: "the home",
                ..
            })
        ));
    }
}
