//! The SLURM client commands (`sbatch`, `squeue`, `sacct`, `scancel`,
//! `sinfo`), run on this machine or on a login node through the system
//! `ssh` client. ssh runs in batch mode (keys and agent only: no password
//! prompt, nothing stored); a remote command is one shell line whose every
//! word is quoted here. Secret values never appear in an argv: they travel
//! on the command's standard input and are read into the environment of
//! `sbatch` by a short shell prelude.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one command may take before it counts as unreachable: an
/// `squeue` against a dead controller gives up after about 20 s.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command could not be run, the login node or the controller did
    /// not answer: nothing is known about the cluster's jobs.
    #[error("cluster unreachable: {command}: {reason}")]
    Unreachable {
        /// The command, as run (no secret is ever part of it).
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// The command ran and refused (its exit status and what it said).
    #[error("{command} failed (exit {code}): {stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status (-1: killed by a signal).
        code: i32,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

impl RunError {
    /// Whether the cluster (login node, controller) did not answer.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RunError::Unreachable { .. })
    }
}

/// What SLURM clients print when the controller is down.
const UNREACHABLE_MARKS: &[&str] = &[
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Could not establish a configuration source",
    "Slurm backup controller in standby mode",
];

/// Runs SLURM commands here or over ssh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    ssh: Option<String>,
}

/// Quote one word for a POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Check `USER@HOST` (or `HOST`, or an ssh config alias): no option
/// injection, no spaces.
pub fn check_ssh_target(s: &str) -> Result<(), String> {
    if s.is_empty() || s.starts_with('-') {
        return Err(format!("{s:?}: expected USER@LOGIN-NODE"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.@:[]".contains(&b))
    {
        return Err(format!(
            "{s:?}: expected USER@LOGIN-NODE (letters, digits, '.', '-', '_', '@')"
        ));
    }
    Ok(())
}

impl Runner {
    /// A runner for `ssh` = `Some("user@login")`, or this machine.
    pub fn new(ssh: Option<String>) -> Runner {
        Runner { ssh }
    }

    /// The argv that runs `program args` (what [`Runner::run`] executes).
    pub fn argv(&self, program: &str, args: &[String]) -> Vec<String> {
        match &self.ssh {
            None => std::iter::once(program.to_string())
                .chain(args.iter().cloned())
                .collect(),
            Some(target) => {
                let line = std::iter::once(program)
                    .chain(args.iter().map(String::as_str))
                    .map(quote)
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    "ssh".into(),
                    "-o".into(),
                    "BatchMode=yes".into(),
                    "-o".into(),
                    "ConnectTimeout=15".into(),
                    "-o".into(),
                    "ServerAliveInterval=15".into(),
                    "-T".into(),
                    "--".into(),
                    target.clone(),
                    line,
                ]
            }
        }
    }

    /// The argv that runs a shell `script` with positional `args` (`sh -c
    /// SCRIPT sh ARGS...`), here or on the login node.
    pub fn shell_argv(&self, script: &str, args: &[String]) -> Vec<String> {
        let mut a = vec![script.to_string(), "sh".to_string()];
        a.extend(args.iter().cloned());
        let mut full = vec!["-c".to_string()];
        full.extend(a);
        self.argv("sh", &full)
    }

    /// Run `program args`, feeding `stdin`; its standard output.
    pub fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<String, RunError> {
        self.exec(self.argv(program, args), stdin)
    }

    /// Run a shell script (see [`Runner::shell_argv`]).
    pub fn run_shell(
        &self,
        script: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<String, RunError> {
        self.exec(self.shell_argv(script, args), stdin)
    }

    fn exec(&self, argv: Vec<String>, stdin: Option<&[u8]>) -> Result<String, RunError> {
        let shown = shown_command(&argv);
        let unreachable = |reason: String| RunError::Unreachable {
            command: shown.clone(),
            reason,
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The daemon's own credentials are never the job's.
            .env_remove("TRAINYARD_TOKEN");
        let mut child = cmd.spawn().map_err(|e| {
            unreachable(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} not found on this machine's PATH (install the SLURM client \
                     commands, or give the cluster --ssh USER@LOGIN-NODE)",
                    argv[0]
                )
            } else {
                e.to_string()
            })
        })?;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            // A command that exits early closes its stdin: its status says why.
            let _ = w.write_all(data);
        }
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut o = Vec::new();
            let mut e = Vec::new();
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut o);
            }
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e);
            }
            (o, e)
        });
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(unreachable(format!(
                        "no answer within {} s",
                        COMMAND_TIMEOUT.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(unreachable(e.to_string())),
            }
        };
        let (o, e) = reader.join().unwrap_or_default();
        let stdout = String::from_utf8_lossy(&o).into_owned();
        let stderr = String::from_utf8_lossy(&e).trim().to_string();
        if status.success() {
            return Ok(stdout);
        }
        let code = status.code().unwrap_or(-1);
        // ssh's own failures (connection, authentication) exit 255.
        if (self.ssh.is_some() && code == 255)
            || UNREACHABLE_MARKS.iter().any(|m| stderr.contains(m))
        {
            return Err(unreachable(if stderr.is_empty() {
                format!("exit {code}")
            } else {
                stderr
            }));
        }
        Err(RunError::Failed {
            command: shown,
            code,
            stderr,
        })
    }
}

/// A command for messages: the program and its first arguments (the full
/// line can be a thousand job ids).
fn shown_command(argv: &[String]) -> String {
    let mut s = argv
        .iter()
        .take(6)
        .map(|a| {
            if a.len() > 60 {
                format!(
                    "{}…",
                    &a[..a.char_indices().nth(60).map_or(a.len(), |(i, _)| i)]
                )
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if argv.len() > 6 {
        s.push_str(" …");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_argv_is_the_command() {
        let r = Runner::new(None);
        assert_eq!(
            r.argv("squeue", &["-h".into(), "-j".into(), "1,2".into()]),
            vec!["squeue", "-h", "-j", "1,2"]
        );
    }

    #[test]
    fn ssh_argv_quotes_every_word_in_batch_mode() {
        let r = Runner::new(Some("ana@login1.cluster.org".into()));
        let argv = r.argv(
            "squeue",
            &["-O".into(), "JobID:|,State:|".into(), "it's".into()],
        );
        assert_eq!(
            argv,
            vec![
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=15",
                "-o",
                "ServerAliveInterval=15",
                "-T",
                "--",
                "ana@login1.cluster.org",
                "squeue -O 'JobID:|,State:|' 'it'\\''s'"
            ]
        );
        let sh = r.shell_argv("exec sbatch \"$@\"", &["--parsable".into()]);
        assert_eq!(
            sh.last().map(String::as_str),
            Some("sh -c 'exec sbatch \"$@\"' sh --parsable")
        );
    }

    #[test]
    fn ssh_targets_cannot_be_options() {
        assert!(check_ssh_target("ana@login1").is_ok());
        assert!(check_ssh_target("-oProxyCommand=x").is_err());
        assert!(check_ssh_target("a b").is_err());
        assert!(check_ssh_target("").is_err());
    }

    #[test]
    fn a_missing_program_is_unreachable_and_says_what_to_install() {
        let e = Runner::new(None)
            .run("trainyard-no-such-sbatch", &[], None)
            .unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn failures_carry_status_and_stderr() {
        let e = Runner::new(None)
            .run_shell("echo nope >&2; exit 3", &[], None)
            .unwrap_err();
        match e {
            RunError::Failed { code, stderr, .. } => {
                assert_eq!(code, 3);
                assert_eq!(stderr, "nope");
            }
            other => panic!("{other}"),
        }
        let e = Runner::new(None)
            .run_shell(
                "echo 'sbatch: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
                &[],
                None,
            )
            .unwrap_err();
        assert!(e.is_unreachable());
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = Runner::new(None)
            .run_shell("IFS= read -r a; echo \"got $a\"", &[], Some(b"x y\n"))
            .unwrap();
        assert_eq!(out, "got x y\n");
    }
}
