//! Job specs: what a user submits (a TOML or JSON file, or CLI flags), and
//! their validation. Every rejection names the field at fault.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the job's process is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// An argv vector, run directly.
    Argv(Vec<String>),
    /// A shell string, run with `sh -c`.
    Shell(String),
}

/// A git source the agent checks out for the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch, tag or commit.
    pub rev: String,
}

/// What GPUs the job needs; all of them on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// Number of GPUs (0: a CPU job).
    #[serde(default)]
    pub count: u32,
    /// Minimum free memory per GPU, in MiB.
    #[serde(default)]
    pub min_memory_mib: u64,
    /// Model pattern: alternatives separated by `|`, matched as substrings
    /// case-insensitively (`"A100|H100"`).
    #[serde(default)]
    pub model: Option<String>,
}

impl GpuRequest {
    /// Whether a GPU model name matches the pattern (no pattern matches all).
    pub fn matches_model(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match &self.model {
            None => true,
            Some(p) => p
                .split('|')
                .map(|alt| alt.trim().to_ascii_lowercase())
                .any(|alt| !alt.is_empty() && name.contains(&alt)),
        }
    }
}

fn default_attempts() -> u32 {
    1
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A short human name.
    #[serde(default)]
    pub name: Option<String>,
    /// The project, for usage accounting.
    #[serde(default = "default_project")]
    pub project: String,
    /// The submitting user (the CLI fills in the OS user).
    #[serde(default)]
    pub user: Option<String>,
    /// The program.
    pub command: Command,
    /// Arguments rendered after the command as `--key value`, in key order.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory on the agent (exclusive with `git`).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Code to check out (exclusive with `workdir`).
    #[serde(default)]
    pub git: Option<GitSource>,
    /// GPUs needed.
    #[serde(default)]
    pub gpus: GpuRequest,
    /// Dataset inputs, `NAME@REF`, materialized on the agent.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Attempts before the job is given up (failed or lost attempts retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wall-clock limit per attempt, in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Jobs that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<i64>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_project() -> String {
    "default".into()
}

/// A spec field that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: {field}: {reason}")]
pub struct SpecError {
    /// The field at fault (dotted path, e.g. `gpus.count`).
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl JobSpec {
    /// Parse a spec file's text: TOML, or JSON when it starts with `{`.
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| bad(&json_field(&e), e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| bad("(toml)", e.message().to_string()))?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Check every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        match &self.command {
            Command::Argv(v) if v.is_empty() => return Err(bad("command", "empty argv")),
            Command::Argv(v) if v[0].trim().is_empty() => {
                return Err(bad("command[0]", "the program name is empty"))
            }
            Command::Shell(s) if s.trim().is_empty() => {
                return Err(bad("command", "empty shell command"))
            }
            _ => {}
        }
        if self.workdir.is_some() && self.git.is_some() {
            return Err(bad("workdir", "give either workdir or git, not both"));
        }
        if let Some(g) = &self.git {
            if g.repo.trim().is_empty() {
                return Err(bad("git.repo", "empty"));
            }
            if g.rev.trim().is_empty() {
                return Err(bad("git.rev", "empty (a branch, tag or commit)"));
            }
        }
        if self.gpus.count > 64 {
            return Err(bad("gpus.count", "more than 64 GPUs on one host"));
        }
        if self
            .gpus
            .model
            .as_deref()
            .is_some_and(|m| m.split('|').all(|a| a.trim().is_empty()))
        {
            return Err(bad("gpus.model", "empty pattern"));
        }
        if self.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1"));
        }
        if self.timeout_s == Some(0) {
            return Err(bad("timeout_s", "must be at least 1 second"));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if let Err(e) = input.parse::<crate::store::DatasetRef>() {
                return Err(bad(&format!("inputs[{i}]"), e.to_string()));
            }
        }
        for k in self.args.keys() {
            if k.is_empty() || k.starts_with('-') || k.contains(char::is_whitespace) {
                return Err(bad(
                    &format!("args.{k}"),
                    "argument names are bare words (rendered as --name)",
                ));
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(
                    &format!("env.{k}"),
                    "not a valid environment variable name",
                ));
            }
        }
        Ok(())
    }

    /// The full argv: the command plus `--key value` for each argument.
    /// A shell command gets the arguments appended, each shell-quoted.
    pub fn argv(&self) -> Vec<String> {
        let rendered = self
            .args
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.clone()]);
        match &self.command {
            Command::Argv(v) => v.iter().cloned().chain(rendered).collect(),
            Command::Shell(s) => {
                let mut line = s.clone();
                for a in rendered {
                    line.push(' ');
                    line.push_str(&shell_quote(&a));
                }
                vec!["sh".into(), "-c".into(), line]
            }
        }
    }

    /// Expand a sweep: one spec per combination of the given argument values
    /// (a grid), in a stable order.
    pub fn sweep(&self, grid: &BTreeMap<String, Vec<String>>) -> Vec<JobSpec> {
        let mut out = vec![self.clone()];
        for (k, values) in grid {
            out = out
                .into_iter()
                .flat_map(|s| {
                    values.iter().map(move |v| {
                        let mut s = s.clone();
                        s.args.insert(k.clone(), v.clone());
                        s
                    })
                })
                .collect();
        }
        out
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn json_field(e: &serde_json::Error) -> String {
    // serde_json names unknown/missing fields in its message; point at the position otherwise.
    let msg = e.to_string();
    for key in ["unknown field `", "missing field `"] {
        if let Some(rest) = msg.split(key).nth(1) {
            if let Some(name) = rest.split('`').next() {
                return name.to_string();
            }
        }
    }
    format!("(json line {} column {})", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_and_json_and_renders_args() {
        let s = JobSpec::parse(
            r#"
            name = "train"
            command = ["python", "train.py"]
            args = { lr = "1e-3", epoch = "10" }
            gpus = { count = 2, min_memory_mib = 40000, model = "A100|H100" }
            inputs = ["imagenet@v2"]
            "#,
        )
        .unwrap();
        assert_eq!(
            s.argv(),
            ["python", "train.py", "--epoch", "10", "--lr", "1e-3"]
        );
        assert!(s.gpus.matches_model("NVIDIA A100-SXM4-80GB"));
        assert!(!s.gpus.matches_model("NVIDIA GeForce RTX 4090"));
        let j = JobSpec::parse(r#"{"command": "echo hi", "args": {"msg": "it's"}}"#).unwrap();
        assert_eq!(j.argv(), ["sh", "-c", "echo hi --msg 'it'\\''s'"]);
        assert_eq!(j.project, "default");
        assert_eq!(j.max_attempts, 1);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (r#"{"command": []}"#, "command"),
            (
                r#"{"command": ["x"], "gpus": {"count": 100}}"#,
                "gpus.count",
            ),
            (r#"{"command": ["x"], "max_attempts": 0}"#, "max_attempts"),
            (
                r#"{"command": ["x"], "inputs": ["ok@v1", "../bad"]}"#,
                "inputs[1]",
            ),
            (
                r#"{"command": ["x"], "workdir": "/a", "git": {"repo": "r", "rev": "main"}}"#,
                "workdir",
            ),
            (r#"{"command": ["x"], "gpu": {"count": 1}}"#, "gpu"),
            (r#"{"name": "x"}"#, "command"),
            (r#"{"command": ["x"], "args": {"--lr": "1"}}"#, "args.--lr"),
        ];
        for (text, field) in cases {
            let e = JobSpec::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn sweep_is_a_grid() {
        let s = JobSpec::parse(r#"{"command": ["t"], "args": {"seed": "0"}}"#).unwrap();
        let mut grid = BTreeMap::new();
        grid.insert(
            "lr".to_string(),
            vec!["1e-3".to_string(), "1e-4".to_string()],
        );
        grid.insert(
            "seed".to_string(),
            vec!["1".to_string(), "2".to_string(), "3".to_string()],
        );
        let jobs = s.sweep(&grid);
        assert_eq!(jobs.len(), 6);
        assert_eq!(jobs[5].args["lr"], "1e-4");
        assert_eq!(jobs[5].args["seed"], "3");
    }
}
