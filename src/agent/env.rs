//! The environment a job starts with: never the agent's whole environment
//! (it may hold the daemon token, cloud and wandb credentials), only a
//! documented base set, the names the agent's operator passes through
//! (`--pass-env`, `TRAINYARD_PASS_ENV`; `*` and `?` globs), then the job's
//! own `env` and the variables Trainyard sets. `TRAINYARD_TOKEN` is never
//! passed through, even when a pattern names it.

use std::ffi::OsString;

/// The variables every job gets from the agent's environment when they are
/// set there (patterns).
pub const BASE: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TERM",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_*",
    "NVIDIA_*",
];

/// Never passed from the agent's environment, whatever the patterns say.
pub const NEVER: &[&str] = &["TRAINYARD_TOKEN"];

/// A pass-through pattern that is not a variable name with globs.
#[derive(Debug, thiserror::Error)]
#[error("bad --pass-env pattern {pattern:?}: use letters, digits, '_', and the globs '*' and '?' (e.g. HF_* or HTTPS_PROXY)")]
pub struct PatternError {
    /// The pattern given.
    pub pattern: String,
}

/// Check one pass-through pattern.
pub fn check_pattern(p: &str) -> Result<String, PatternError> {
    let ok = !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '?'));
    if ok {
        Ok(p.to_string())
    } else {
        Err(PatternError {
            pattern: p.to_string(),
        })
    }
}

/// `*` matches any run of characters, `?` one character; nothing else is
/// special.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            back = Some((pi, ni));
            pi += 1;
        } else if let Some((bp, bn)) = back {
            pi = bp + 1;
            ni = bn + 1;
            back = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The variables of `vars` (the agent's environment) a job may see: those
/// matching [`BASE`] or a pass-through pattern, never those in [`NEVER`].
pub fn base_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    pass: &[String],
) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = vars
        .into_iter()
        .filter(|(k, _)| {
            let Some(k) = k.to_str() else {
                return false;
            };
            !NEVER.contains(&k)
                && (BASE.iter().any(|p| glob(p, k)) || pass.iter().any(|p| glob(p, k)))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("LC_*", "LC_ALL"));
        assert!(glob("*", "ANYTHING"));
        assert!(glob("*_PROXY", "HTTPS_PROXY"));
        assert!(glob("A?C", "ABC"));
        assert!(glob("A*B*C", "AxxBxxBxC"));
        assert!(!glob("LC_*", "LANG"));
        assert!(!glob("PATH", "PATHX"));
        assert!(!glob("A?C", "AC"));
        assert!(check_pattern("HF_*").is_ok());
        assert!(check_pattern("A=B").is_err());
        assert!(check_pattern("").is_err());
    }

    #[test]
    fn secrets_stay_out_unless_passed_and_the_token_always() {
        let vars = [
            ("PATH", "/bin"),
            ("LC_ALL", "C"),
            ("TRAINYARD_TOKEN", "t"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("WANDB_API_KEY", "w"),
            ("HF_HOME", "/hf"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let names = |pass: &[String]| -> Vec<String> {
            base_env(vars.clone(), pass)
                .into_iter()
                .map(|(k, _)| k.into_string().unwrap())
                .collect()
        };
        assert_eq!(names(&[]), ["LC_ALL", "PATH"]);
        assert_eq!(
            names(&["HF_*".into(), "WANDB_API_KEY".into(), "TRAINYARD_*".into()]),
            ["HF_HOME", "LC_ALL", "PATH", "WANDB_API_KEY"]
        );
        assert!(!names(&["*".into()]).contains(&"TRAINYARD_TOKEN".to_string()));
    }
}
