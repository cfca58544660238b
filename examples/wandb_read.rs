//! Parse throughput of the native `.wandb` reader, for `scripts/bench-wandb`:
//!
//! ```text
//! cargo run --release --example wandb_read -- FILE [REPEAT]
//! ```
//!
//! Reads FILE (from the page cache after the first pass) REPEAT times (5 by
//! default) on this one thread, three ways, and prints for each the bytes,
//! records, history rows, seconds and MB/s (best and median, MB = 10^6 bytes):
//!
//! - `whole`: [`read_run`], the whole file into one [`Run`](trainyard::wandb::Run);
//! - `windows`: [`RunReader::read_some`] in 1 MiB windows, dropping the rows
//!   after each with [`RunReader::take_rows`] (how `trainyard sync` reads);
//! - `windows+lines`: the same, also turning every row into its `file_stream`
//!   line ([`lines::history_line`] and friends), i.e. all the CPU work of a
//!   sync before the network.
//!
//! A last line splits one whole read into its stages (raw file read,
//! framing with the CRC checks, decoding and folding the records into the
//! run, freeing the run) and counts the records by type, to show where the
//! time goes. With `--json` the figures are printed as one JSON object;
//! `--pass NAME` runs only that pass (for a profiler).

use std::path::{Path, PathBuf};
use std::time::Instant;

use trainyard::wandb::record::deframe;
use trainyard::wandb::sync::lines;
use trainyard::wandb::{read_run, Run, RunReader};

const WINDOW: u64 = 1 << 20;

/// What one pass found.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Counts {
    records: u64,
    history: u64,
    system: u64,
    console: u64,
    line_bytes: u64,
}

fn records(run: &Run) -> u64 {
    run.record_counts.values().sum()
}

fn whole(path: &Path) -> Counts {
    let run = read_run(path).expect("read_run");
    Counts {
        records: records(&run),
        history: run.history.len() as u64,
        system: run.system.len() as u64,
        console: run.console.len() as u64,
        line_bytes: 0,
    }
}

fn windows(path: &Path, make_lines: bool) -> Counts {
    let mut reader = RunReader::new(path);
    let mut c = Counts::default();
    loop {
        let (_, eof) = reader.read_some(Some(WINDOW)).expect("read_some");
        let start = reader.run().start_time;
        let (h, s, con) = reader.take_rows();
        c.history += h.len() as u64;
        c.system += s.len() as u64;
        c.console += con.len() as u64;
        if make_lines {
            for r in &h {
                c.line_bytes += lines::history_line(r, 0).len() as u64;
            }
            for x in &s {
                c.line_bytes += lines::events_line(x, start).len() as u64;
            }
            for l in &con {
                c.line_bytes += lines::console_line(l).len() as u64;
            }
        }
        if eof {
            break;
        }
    }
    c.records = records(reader.run());
    c
}

fn stats(mut secs: Vec<f64>) -> (f64, f64) {
    secs.sort_by(f64::total_cmp);
    (secs[0], secs[secs.len() / 2])
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    args.retain(|a| a != "--json");
    let only = args.iter().position(|a| a == "--pass").map(|i| {
        let name = args.get(i + 1).cloned().expect("--pass NAME");
        args.drain(i..i + 2);
        name
    });
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: wandb_read FILE [REPEAT] [--json] [--pass whole|windows|windows+lines]");
        return;
    }
    let path = PathBuf::from(&args[0]);
    let repeat: usize = args
        .get(1)
        .map(|r| r.parse().expect("REPEAT: a number"))
        .unwrap_or(5)
        .max(1);
    let bytes = std::fs::metadata(&path).expect("stat FILE").len();
    let mb = bytes as f64 / 1e6;
    // Warm the page cache.
    drop(std::fs::read(&path).expect("read FILE"));

    type Pass = fn(&Path) -> Counts;
    let passes: [(&str, Pass); 3] = [
        ("whole", whole),
        ("windows", |p| windows(p, false)),
        ("windows+lines", |p| windows(p, true)),
    ];
    let mut out = serde_json::Map::new();
    out.insert("file".into(), path.display().to_string().into());
    out.insert("bytes".into(), bytes.into());
    out.insert("repeat".into(), repeat.into());
    if !json {
        println!(
            "{} : {bytes} bytes ({mb:.1} MB), {repeat} passes each, one thread",
            path.display()
        );
    }
    for (name, f) in passes {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let mut secs = Vec::with_capacity(repeat);
        let mut counts = Counts::default();
        for _ in 0..repeat {
            let t = Instant::now();
            counts = std::hint::black_box(f(&path));
            secs.push(t.elapsed().as_secs_f64());
        }
        let (best, median) = stats(secs);
        if !json {
            let lines = if counts.line_bytes > 0 {
                format!(", {:.1} MB of lines", counts.line_bytes as f64 / 1e6)
            } else {
                String::new()
            };
            println!(
                "{name:<14} {} records, {} history rows, {} system, {} console{lines}: \
                 best {best:.3} s ({:.0} MB/s), median {median:.3} s ({:.0} MB/s)",
                counts.records,
                counts.history,
                counts.system,
                counts.console,
                mb / best,
                mb / median
            );
        }
        out.insert(
            name.into(),
            serde_json::json!({
                "records": counts.records, "history_rows": counts.history,
                "system_rows": counts.system, "console_lines": counts.console,
                "line_bytes": counts.line_bytes,
                "best_s": best, "median_s": median,
                "best_mb_s": mb / best, "median_mb_s": mb / median,
            }),
        );
    }

    if only.is_some() {
        return;
    }
    // Stages of one whole read: file read, framing alone, decoding +
    // folding the records into a run (read_run from the page cache, minus
    // its framing and file read), and freeing the run.
    let t = Instant::now();
    let data = std::fs::read(&path).expect("read FILE");
    let t_read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let framed = deframe(&data, 0).expect("deframe");
    let t_frame = t.elapsed().as_secs_f64();
    drop(std::hint::black_box(framed));
    drop(data);
    let t = Instant::now();
    let run = read_run(&path).expect("read_run");
    let t_fold = (t.elapsed().as_secs_f64() - t_read - t_frame).max(0.0);
    let by_type: serde_json::Map<String, serde_json::Value> = run
        .record_counts
        .iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    let t = Instant::now();
    drop(std::hint::black_box(run));
    let t_free_run = t.elapsed().as_secs_f64();
    let total = t_read + t_frame + t_fold + t_free_run;
    if !json {
        println!(
            "stages of one whole read: file read {t_read:.3} s, framing + CRC {t_frame:.3} s, \
             decode + fold into run {t_fold:.3} s, free run {t_free_run:.3} s; {total:.3} s"
        );
        let types: Vec<String> = by_type.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("records by type: {}", types.join(", "));
    }
    out.insert(
        "stages".into(),
        serde_json::json!({"read_s": t_read, "frame_s": t_frame, "fold_s": t_fold,
            "free_run_s": t_free_run}),
    );
    out.insert("records_by_type".into(), by_type.into());
    if json {
        println!("{}", serde_json::Value::Object(out));
    }
}
