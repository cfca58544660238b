//! What a synced run looks like on the wire, derived from what the reader
//! found, the way wandb-core's sender builds it: `file_stream` lines
//! (history, system events, console, summary), the W&B config shape, and the
//! files the sync generates (`config.yaml`, `wandb-summary.json`,
//! `wandb-metadata.json`, and `output.log` when the run has none on disk).
//!
//! Everything here is a pure function of the run, so syncing the same run
//! twice produces the same bytes (console timestamps are the record's own,
//! not the time of the sync as in wandb-core).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::wandb::value::write_object;
use crate::wandb::{ConsoleLine, HistoryRow, Run, Stream, SystemSample, Value};

/// The `file_stream` file names.
pub const HISTORY: &str = "wandb-history.jsonl";
/// System metrics.
pub const EVENTS: &str = "wandb-events.jsonl";
/// The summary (one line, replaced each time).
pub const SUMMARY: &str = "wandb-summary.json";
/// Console output.
pub const OUTPUT: &str = "output.log";
/// The generated config file.
pub const CONFIG_YAML: &str = "config.yaml";
/// The generated metadata file.
pub const METADATA: &str = "wandb-metadata.json";

/// A history row as a `wandb-history.jsonl` line, its `_step` moved on by
/// `shift` (a later fragment of a resumed run continues after the steps the
/// server holds, as `wandb sync` does).
pub fn history_line(row: &HistoryRow, shift: i64) -> String {
    let mut out = String::with_capacity(64 + 24 * row.values.len());
    let step = Value::Int(row.step + shift);
    if row.values.contains_key("_step") {
        let entries = row.values.iter().map(|(k, v)| {
            if k == "_step" && shift != 0 {
                (k, &step)
            } else {
                (k, v)
            }
        });
        write_object(&mut out, entries);
    } else {
        // `_step` in its sorted place among the keys
        let (before, after): (Vec<_>, Vec<_>) = row.values.iter().partition(|(k, _)| *k < "_step");
        let entries = before
            .into_iter()
            .chain(std::iter::once(("_step", &step)))
            .chain(after);
        write_object(&mut out, entries);
    }
    out
}

/// A system sample as a `wandb-events.jsonl` line: keys prefixed `system.`,
/// plus `_wandb`, `_timestamp` and `_runtime` (seconds since the run's
/// start). Whole floats are written as integers, as wandb-core re-encodes
/// them (`0`, not `0.0`).
pub fn events_line(sample: &SystemSample, start_time: Option<f64>) -> String {
    let mut m: BTreeMap<String, Value> = sample
        .values
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Float(x) if x.fract() == 0.0 && x.abs() < 1e15 => Value::Int(*x as i64),
                v => v.clone(),
            };
            (format!("system.{k}"), v)
        })
        .collect();
    m.insert("_wandb".into(), Value::Bool(true));
    if let Some(ts) = sample.timestamp {
        m.insert("_timestamp".into(), Value::Float(ts));
        let runtime = sample.runtime.or(start_time.map(|s| ts - s));
        if let Some(r) = runtime {
            m.insert("_runtime".into(), Value::Float(r));
        }
    }
    Value::Object(m).to_extended_json()
}

/// A console line as sent in `file_stream`'s `output.log`: the UTC time of
/// the line, then its text; stderr lines start with `ERROR `.
pub fn console_line(line: &ConsoleLine) -> String {
    let ts = line
        .timestamp
        .and_then(|t| {
            let d = std::time::Duration::try_from_secs_f64(t).ok()?;
            Some(std::time::UNIX_EPOCH + d)
        })
        .unwrap_or(std::time::UNIX_EPOCH);
    let stamp = humantime::format_rfc3339_micros(ts).to_string();
    let stamp = stamp.trim_end_matches('Z');
    match line.stream {
        Stream::Stdout => format!("{stamp} {}", line.text),
        Stream::Stderr => format!("ERROR {stamp} {}", line.text),
    }
}

/// The merged summary as one line of extended JSON. `None` values are left
/// out, as wandb-core does.
pub fn summary_json(run: &Run) -> String {
    fn without_nulls(m: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        m.iter()
            .filter(|(_, v)| !matches!(v, Value::Null))
            .map(|(k, v)| match v {
                Value::Object(inner) => (k.clone(), Value::Object(without_nulls(inner))),
                v => (k.clone(), v.clone()),
            })
            .collect()
    }
    Value::Object(without_nulls(&run.summary)).to_extended_json()
}

/// The config in W&B's shape: every top-level key wrapped as
/// `{"key": {"value": v}}`, wandb's own data under `_wandb` (with the client
/// and Python versions, as the sender adds them).
pub fn wandb_config(run: &Run) -> Value {
    let mut out = BTreeMap::new();
    for (k, v) in &run.config {
        if k == "_wandb" {
            continue;
        }
        out.insert(k.clone(), wrap(v.clone()));
    }
    let mut internal = match run.config.get("_wandb") {
        Some(Value::Object(m)) => m.clone(),
        _ => BTreeMap::new(),
    };
    if !run.cli_version.is_empty() {
        internal.insert("cli_version".into(), Value::String(run.cli_version.clone()));
    }
    if !run.environment.python.is_empty() {
        internal.insert(
            "python_version".into(),
            Value::String(run.environment.python.clone()),
        );
    }
    out.insert("_wandb".into(), wrap(Value::Object(internal)));
    Value::Object(out)
}

fn wrap(v: Value) -> Value {
    Value::Object(BTreeMap::from([("value".to_string(), v)]))
}

/// `config.yaml`: the W&B-shaped config as YAML (block mappings for
/// objects; scalars and arrays in flow style, which YAML reads as JSON).
pub fn config_yaml(run: &Run) -> String {
    let mut out = String::new();
    if let Value::Object(m) = wandb_config(run) {
        yaml_map(&mut out, &m, 0);
    }
    out
}

fn yaml_map(out: &mut String, m: &BTreeMap<String, Value>, indent: usize) {
    for (k, v) in m {
        let pad = " ".repeat(indent);
        let key = yaml_scalar_string(k);
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                let _ = writeln!(out, "{pad}{key}:");
                yaml_map(out, inner, indent + 2);
            }
            other => {
                let _ = writeln!(out, "{pad}{key}: {}", yaml_flow(other));
            }
        }
    }
}

fn yaml_flow(v: &Value) -> String {
    match v {
        Value::Float(x) if x.is_nan() => ".nan".into(),
        Value::Float(x) if x.is_infinite() => if *x > 0.0 { ".inf" } else { "-.inf" }.into(),
        Value::String(s) => yaml_scalar_string(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(yaml_flow).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", yaml_scalar_string(k), yaml_flow(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_extended_json(),
    }
}

/// A string as a YAML double-quoted scalar (JSON escapes are valid there).
fn yaml_scalar_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        );
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_extended_json()
    }
}

/// `wandb-metadata.json`: the run's EnvironmentRecords merged, in the
/// protobuf-JSON form wandb-core writes (`wandb::meta`), indented. A run
/// without any has `{}`.
pub fn metadata_json(run: &Run) -> String {
    let text = Value::Object(run.environment.metadata.clone()).to_extended_json();
    // the metadata holds only strings, integers and objects: strict JSON
    match serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
    {
        Some(pretty) => pretty,
        None => text,
    }
}

/// `output.log` for a run that has none on disk: the console lines' text.
pub fn output_log<'a>(lines: impl IntoIterator<Item = &'a ConsoleLine>) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_wandb_shaped() {
        let row = HistoryRow {
            step: 3,
            runtime: Some(1.5),
            timestamp: Some(10.0),
            values: BTreeMap::from([
                ("loss".to_string(), Value::Float(f64::NAN)),
                ("_step".to_string(), Value::Int(3)),
            ])
            .into(),
        };
        assert_eq!(history_line(&row, 0), r#"{"_step":3,"loss":NaN}"#);
        assert_eq!(history_line(&row, 50), r#"{"_step":53,"loss":NaN}"#);
        let s = SystemSample {
            timestamp: Some(12.0),
            runtime: None,
            values: BTreeMap::from([("cpu".to_string(), Value::Float(5.5))]),
        };
        assert_eq!(
            events_line(&s, Some(10.0)),
            r#"{"_runtime":2.0,"_timestamp":12.0,"_wandb":true,"system.cpu":5.5}"#
        );
        let l = ConsoleLine {
            stream: Stream::Stderr,
            timestamp: Some(1_795_343_322.25),
            text: "boom".into(),
        };
        assert_eq!(console_line(&l), "ERROR 2026-11-22T10:28:42.250000 boom");
    }

    #[test]
    fn config_is_wrapped_and_yaml_reads_back() {
        let mut run = Run::default();
        run.cli_version = "0.31.0".into();
        run.config.insert("lr".into(), Value::Float(0.01));
        run.config.insert(
            "model".into(),
            Value::Object(BTreeMap::from([(
                "layers".to_string(),
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
            )])),
        );
        run.config
            .insert("name".into(), Value::String("yes".into()));
        run.config
            .insert("_wandb".into(), Value::Object(BTreeMap::new()));
        let c = wandb_config(&run).to_extended_json();
        assert_eq!(
            c,
            r#"{"_wandb":{"value":{"cli_version":"0.31.0"}},"lr":{"value":0.01},"model":{"value":{"layers":[1,2]}},"name":{"value":"yes"}}"#
        );
        let y = config_yaml(&run);
        assert_eq!(
            y,
            "_wandb:\n  value:\n    cli_version: \"0.31.0\"\nlr:\n  value: 0.01\nmodel:\n  value:\n    layers: [1, 2]\nname:\n  value: \"yes\"\n"
        );
    }
}
