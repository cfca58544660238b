//! Formatting helpers shared by the command handlers, and the terminal
//! progress bar.

use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use trainyard::progress::Progress;

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A timestamp in nanoseconds as RFC 3339 (UTC, seconds).
pub fn time(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Text from elsewhere (a remote's messages, authors, tags) made safe to
/// print: control characters and invisible reordering characters escaped
/// (`\n`, `\u{1b}`), so it cannot move the cursor, recolour or fake lines.
pub fn clean(s: &str) -> String {
    trainyard::remote::format::printable(s)
}

/// `s` cut to `n` characters, with an ellipsis when cut.
pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Seconds as `1h 2m 3s`.
pub fn secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0) as u64)).to_string()
}

/// The exit code of a command that did several things: failure if any failed.
pub fn exit_code(failed: bool) -> std::process::ExitCode {
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Print a value as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A progress bar on stderr, only when stderr is a terminal.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Bar { bar }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let Some(b) = &self.bar else { return };
        b.reset();
        match total {
            Some(t) => {
                b.set_length(t);
                // phases that count runs say so in their name; the others count bytes
                let template = if name.ends_with("runs") {
                    "{msg:>14} [{bar:30}] {pos}/{len} eta {eta}"
                } else {
                    "{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                };
                b.set_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
            }
            None => b.set_style(ProgressStyle::default_spinner()),
        }
        b.set_message(name.to_string());
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
