//! Tests against real `.wandb` files written by the wandb 0.31.0 client
//! (`tests/fixtures/wandb`, made by `scripts/make-wandb-fixtures`) and
//! against damaged copies of them.

use std::path::{Path, PathBuf};

use prost::Message;

use super::record::tests::write_log;
use super::record::{self, ChunkCounts, Diagnostic, DiagnosticKind};
use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb")
}

/// The run directory of fixture run `id` (`offline-run-<time>-<id>`).
fn fixture_dir(id: &str) -> PathBuf {
    let suffix = format!("-{id}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixture directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
        .collect();
    assert_eq!(found.len(), 1, "one fixture run dir for {id}");
    found.remove(0)
}

fn fixture_file(id: &str) -> PathBuf {
    fixture_dir(id).join(format!("run-{id}.wandb"))
}

/// Facts computed by the fixture script's independent reader (Python
/// framing + the client's own protobuf classes).
fn expected(id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("expected.json is JSON");
    all[id].clone()
}

fn num(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{v:?} is not a number"))
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("trainyard-wandb-{}-{name}", std::process::id()))
}

const IDS: [&str; 6] = [
    "plain001", "stats001", "crash001", "killed01", "large001", "blocks01",
];

#[test]
fn fixtures_match_the_independent_reader() {
    for id in IDS {
        let exp = expected(id);
        let path = fixture_file(id);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, exp["size"].as_u64().unwrap(), "{id}");
        let batch = read_bytes(&bytes, 0).unwrap();
        let ct = &exp["chunk_types"];
        let count = |k: &str| ct[k].as_u64().unwrap_or(0);
        assert_eq!(
            batch.chunks,
            ChunkCounts {
                full: count("1"),
                first: count("2"),
                middle: count("3"),
                last: count("4")
            },
            "{id}"
        );
        assert_eq!(batch.unknown_records, 0, "{id}");
        // block trailers the real writer zero-filled, and zero-length chunks
        for t in exp["trailers"].as_array().unwrap() {
            let (at, len) = (t[0].as_u64().unwrap(), t[1].as_u64().unwrap());
            assert_eq!((at + len) % record::BLOCK_SIZE, 0, "{id}");
            assert!(bytes[at as usize..(at + len) as usize]
                .iter()
                .all(|b| *b == 0));
        }
        for z in exp["zero_length_chunks"].as_array().unwrap() {
            let at = z.as_u64().unwrap() as usize;
            assert_eq!(&bytes[at + 4..at + 7], &[0, 0, record::CHUNK_FIRST], "{id}");
        }
        let run = read_run(&path).unwrap();
        let want: std::collections::BTreeMap<String, u64> =
            serde_json::from_value(exp["records"].clone()).unwrap();
        assert_eq!(run.record_counts, want, "{id}");
        assert_eq!(
            run.history.len() as u64,
            exp["history_rows"].as_u64().unwrap(),
            "{id}"
        );
        assert_eq!(
            run.history.last().map(|r| r.step),
            exp["last_step"].as_i64(),
            "{id}"
        );
        assert_eq!(
            run.exit_code.map(i64::from),
            exp["exit"]["exit_code"].as_i64(),
            "{id}"
        );
        assert_eq!(
            run.incomplete_tail,
            exp["incomplete_tail_offset"].as_u64(),
            "{id}"
        );
        assert!(run.diagnostics.is_empty(), "{id}: {:?}", run.diagnostics);
        assert_eq!(run.id, id);
        assert_eq!(run.project, "trainyard-fixtures");
        assert!(
            run.producer.starts_with("0.31.0+"),
            "{id}: {}",
            run.producer
        );
        assert_eq!(run.cli_version, "0.31.0");
        assert_eq!(run.environment.host, "fixture-host");
        assert!(run.start_time.is_some_and(|t| t > 1.6e9));
        // every history row carries the internal keys
        for row in &run.history {
            assert!(row.runtime.is_some() && row.timestamp.is_some(), "{id}");
            assert_eq!(row.values["_step"], Value::Int(row.step));
        }
    }
}

#[test]
fn plain_run() {
    let run = read_run_dir(&fixture_dir("plain001")).unwrap();
    assert_eq!(run.entity, "trainyard");
    assert_eq!(run.display_name, "plain run");
    assert_eq!(run.group, "fixtures");
    assert_eq!(run.job_type, "train");
    assert_eq!(run.notes, "a plain run");
    assert_eq!(run.tags, ["fixture", "plain"]);
    assert_eq!(run.state, RunState::Finished);
    assert_eq!(run.exit_code, Some(0));
    assert!(run.runtime.is_some_and(|r| r > 0.0 && r < 60.0));

    // config from wandb.init, with nesting, plus a later config.update
    let c = &run.config;
    assert_eq!(c["lr"], Value::Float(0.01));
    assert_eq!(c["epochs"], Value::Int(3));
    assert_eq!(
        c["layers"],
        Value::Array(vec![Value::Int(64), Value::Int(32)])
    );
    assert_eq!(c["use_bn"], Value::Bool(true));
    assert_eq!(
        c["optimizer"].pointer(&["name"]),
        Some(&Value::String("adam".into()))
    );
    assert_eq!(
        c["optimizer"]
            .pointer(&["betas"])
            .and_then(Value::as_array)
            .map(|a| a.len()),
        Some(2)
    );
    assert_eq!(c["extra"], Value::String("added later".into()));
    assert_eq!(c["_wandb"], Value::Object(Default::default()));

    // 300 rows exactly as the script logged them
    assert_eq!(run.history.len(), 300);
    for (i, row) in run.history.iter().enumerate() {
        assert_eq!(row.step, i as i64);
        let loss = num(&row.values["loss"]);
        if i == 7 {
            assert!(loss.is_nan());
        } else {
            assert_eq!(loss, 1.0 / (i as f64 + 1.0), "row {i}");
        }
        assert_eq!(num(&row.values["acc"]), i as f64 / 300.0, "row {i}");
        assert_eq!(row.values["epoch"], Value::Int(i as i64 / 100));
        assert_eq!(row.get(&["grp", "sub"]), Some(&Value::Int(2 * i as i64)));
        let spike = row.values.get("spike").map(num);
        match i {
            8 => assert_eq!(spike, Some(f64::INFINITY)),
            9 => assert_eq!(spike, Some(f64::NEG_INFINITY)),
            _ => assert_eq!(spike, None),
        }
        let phase = row.values.get("phase").and_then(Value::as_str);
        match i {
            0 => assert_eq!(phase, Some("warmup")),
            100 | 200 => assert_eq!(phase, Some("main")),
            _ => assert_eq!(phase, None),
        }
    }
    assert!(run
        .history
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp && w[0].runtime <= w[1].runtime));
    assert_eq!(
        run.history_keys(),
        ["acc", "epoch", "grp.sub", "loss", "phase", "spike"]
    );

    // summary: last logged values plus run.summary[...] writes
    let s = &run.summary;
    assert_eq!(s["final_note"], Value::String("done".into()));
    assert_eq!(s["best"].pointer(&["at", "step"]), Some(&Value::Int(299)));
    assert_eq!(s["best"].pointer(&["acc"]), Some(&Value::Float(0.99)));
    // the Python client turns a NaN summary value into null
    assert_eq!(s["worst"], Value::Null);
    assert_eq!(num(&s["loss"]), 1.0 / 300.0);
    assert_eq!(s["_step"], Value::Int(299));
    assert_eq!(s["grp"].pointer(&["sub"]), Some(&Value::Int(598)));
    assert!(s["_wandb"].pointer(&["runtime"]).is_some());

    // console lines match the client's own files/output.log
    let log = std::fs::read_to_string(fixture_dir("plain001").join("files/output.log")).unwrap();
    let lines: Vec<&str> = run.console.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(lines, log.lines().collect::<Vec<_>>());
    assert_eq!(run.console[0].text, "starting training");
    let warn = run
        .console
        .iter()
        .find(|l| l.text == "a warning on stderr")
        .unwrap();
    assert_eq!(warn.stream, Stream::Stderr);
    assert!(
        run.console
            .iter()
            .filter(|l| l.stream == Stream::Stdout)
            .count()
            == 5
    );
    assert_eq!(run.console_tail().count(), 0);

    // files named in FilesRecords and files on disk
    assert_eq!(
        run.files,
        [
            RunFile {
                path: "requirements.txt".into(),
                policy: FilePolicy::Now,
                kind: FileKind::Wandb
            },
            RunFile {
                path: "saved.txt".into(),
                policy: FilePolicy::Now,
                kind: FileKind::Other
            },
        ]
    );
    let on_disk: Vec<(&str, Option<u64>)> = run
        .files_on_disk
        .iter()
        .map(|f| (f.path.as_str(), f.size))
        .collect();
    assert_eq!(on_disk.len(), 3);
    assert_eq!(on_disk[0], ("output.log", Some(log.len() as u64)));
    assert_eq!(on_disk[1].0, "requirements.txt");
    assert_eq!(on_disk[2], ("saved.txt", Some(20)));
}

#[test]
fn system_metrics_run() {
    let run = read_run(&fixture_file("stats001")).unwrap();
    let exp = expected("stats001");
    assert_eq!(
        run.system.len() as u64,
        exp["records"]["stats"].as_u64().unwrap()
    );
    assert!(run.system.len() >= 4);
    for s in &run.system {
        let m = num(&s.values["memory_percent"]);
        assert!(m > 0.0 && m <= 100.0);
        assert!(s.values.contains_key("proc.memory.rssMB"));
        assert!(s.values.contains_key("disk./.usagePercent"));
    }
    // the first sample is taken before a CPU percentage can be computed
    assert!(run
        .system
        .iter()
        .skip(1)
        .all(|s| s.values.contains_key("cpu")));
    assert!(run
        .system
        .windows(2)
        .all(|w| w[0].timestamp < w[1].timestamp));
    let xs: Vec<i64> = run
        .history
        .iter()
        .map(|r| r.values["x"].as_i64().unwrap())
        .collect();
    assert_eq!(xs, [0, 1, 2, 3, 4, 5]);
    assert_eq!(run.state, RunState::Finished);
    assert!(run.runtime.is_some_and(|r| r >= 3.0));
}

#[test]
fn crashed_run() {
    let run = read_run_dir(&fixture_dir("crash001")).unwrap();
    assert_eq!(run.state, RunState::Crashed);
    assert_eq!(run.exit_code, Some(1));
    assert_eq!(run.display_name, "crashed run");
    assert_eq!(run.config["seed"], Value::Int(7));
    assert_eq!(run.history.len(), 20);
    for (i, row) in run.history.iter().enumerate() {
        // logged as the float 10.0 - i; the client writes integral floats as ints
        assert_eq!(num(&row.values["loss"]), 10.0 - i as f64);
    }
    let log = std::fs::read_to_string(fixture_dir("crash001").join("files/output.log")).unwrap();
    let lines: Vec<&str> = run.console.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(lines, log.lines().collect::<Vec<_>>());
    assert_eq!(lines[0], "about to fail");
    assert_eq!(lines.last(), Some(&"RuntimeError: boom at step 20"));
    assert_eq!(run.console.last().map(|l| l.stream), Some(Stream::Stderr));
}

#[test]
fn killed_run_with_cut_tail() {
    let exp = expected("killed01");
    let tail = exp["incomplete_tail_offset"].as_u64().unwrap();
    let path = fixture_file("killed01");
    let batch = read_file(&path, 0).unwrap();
    assert_eq!(
        batch.diagnostics,
        [Diagnostic {
            offset: tail,
            kind: DiagnosticKind::IncompleteTail
        }]
    );
    assert_eq!(
        batch.diagnostics[0].to_string(),
        format!("incomplete tail at offset {tail}")
    );
    assert_eq!(batch.resume_offset, tail);
    // the cut is inside a LAST chunk of the record that begins at `tail`
    assert!(exp["cut_at"].as_u64().unwrap() > tail);

    let mut run = read_run(&path).unwrap();
    assert_eq!(run.incomplete_tail, Some(tail));
    assert_eq!(run.exit_code, None);
    assert_eq!(run.state, RunState::Running);
    run.assume_writer_gone();
    assert_eq!(run.state, RunState::Killed);
    assert_eq!(run.display_name, "killed run");
    assert_eq!(run.history.len(), 50);
    for (i, row) in run.history.iter().enumerate() {
        assert_eq!(row.values["i"], Value::Int(i as i64));
    }
    // the 40000-byte blob was logged next: wandb-core wrote its summary
    // record (complete) and then its history record (the one cut)
    assert!(run.history.iter().all(|r| !r.values.contains_key("blob")));
    assert_eq!(run.summary["blob"].as_str().map(str::len), Some(40_000));
    assert_eq!(run.summary["i"], Value::Int(49));
}

#[test]
fn large_values_spanning_blocks() {
    let path = fixture_file("large001");
    let batch = read_file(&path, 0).unwrap();
    assert_eq!(batch.chunks.middle, 9);
    let run = read_run(&path).unwrap();
    assert_eq!(run.history.len(), 4);
    let text = run.history[1].values["big_text"].as_str().unwrap();
    assert_eq!(text.len(), 104_832);
    assert_eq!(text, "abcdefghijklmnopqrstuvwxyz0123456789".repeat(2912));
    let list = run.history[2].values["big_list"].as_array().unwrap();
    assert_eq!(list.len(), 20_000);
    assert!(list
        .iter()
        .enumerate()
        .all(|(i, v)| *v == Value::Int(i as i64)));
    // the big records really span several blocks
    let big: Vec<&LogRecord> = batch
        .records
        .iter()
        .filter(|r| {
            r.record.encoded_len() > 100_000
                && matches!(r.record.record_type, Some(proto::RecordType::History(_)))
        })
        .collect();
    assert_eq!(big.len(), 2);
    for r in big {
        let first_block = r.offset / record::BLOCK_SIZE;
        let last_block = (r.offset + r.record.encoded_len() as u64) / record::BLOCK_SIZE;
        assert!(last_block - first_block >= 3, "record at {}", r.offset);
    }
    let last = &run.history[3];
    assert_eq!(last.values["small"], Value::Int(2));
    assert!(num(&last.values["nan"]).is_nan());
    assert_eq!(num(&last.values["inf"]), f64::INFINITY);
    assert_eq!(num(&last.values["ninf"]), f64::NEG_INFINITY);
    assert_eq!(
        run.config["nested"].pointer(&["deep", "key"]),
        Some(&Value::Int(1))
    );
    assert_eq!(
        run.summary["big_list"].as_array().map(|a| a.len()),
        Some(20_000)
    );
}

/// History rows as text, so NaN compares equal to NaN.
fn history_text(run: &Run) -> Vec<String> {
    run.history
        .iter()
        .map(|r| format!("{} {}", r.step, Value::Object(r.values.to_map())))
        .collect()
}

#[test]
fn real_block_trailers() {
    let exp = expected("blocks01");
    let trailers = exp["trailers"].as_array().unwrap();
    assert!(
        !trailers.is_empty(),
        "the fixture script reruns until it has one"
    );
    let path = fixture_file("blocks01");
    let bytes = std::fs::read(&path).unwrap();
    let run = read_run(&path).unwrap();
    assert_eq!(run.history.len(), 1500);
    for (i, row) in run.history.iter().enumerate() {
        assert_eq!(row.values["v"], Value::Int(i as i64));
        assert_eq!(row.values["s"].as_str().map(str::len), Some(i % 29));
    }
    assert!(run.diagnostics.is_empty());
    // cutting the file inside or right before a trailer loses nothing that
    // was complete, reports nothing, and resuming reads the rest
    let all = read_bytes(&bytes, 0).unwrap();
    for t in trailers {
        let at = t[0].as_u64().unwrap();
        for cut in at..=at + t[1].as_u64().unwrap() {
            let head = read_bytes(&bytes[..cut as usize], 0).unwrap();
            assert!(
                head.diagnostics.is_empty(),
                "cut {cut}: {:?}",
                head.diagnostics
            );
            let rest =
                read_bytes(&bytes[head.resume_offset as usize..], head.resume_offset).unwrap();
            assert!(rest.diagnostics.is_empty());
            assert_eq!(head.records.len() + rest.records.len(), all.records.len());
        }
    }
}

/// Compares the parts of two runs that reading in pieces must not change.
fn assert_same_run(a: &Run, b: &Run, what: &str) {
    assert_eq!(a.history.len(), b.history.len(), "{what}");
    assert!(
        history_text(a) == history_text(b),
        "{what}: history differs"
    );
    assert_eq!(
        Value::Object(a.summary.clone()).to_extended_json(),
        Value::Object(b.summary.clone()).to_extended_json(),
        "{what}"
    );
    assert_eq!(a.config, b.config, "{what}");
    assert_eq!(a.console, b.console, "{what}");
    assert_eq!(a.system, b.system, "{what}");
    assert_eq!(a.files, b.files, "{what}");
    assert_eq!(a.record_counts, b.record_counts, "{what}");
    assert_eq!(a.state, b.state, "{what}");
    assert_eq!(a.diagnostics, b.diagnostics, "{what}");
}

#[test]
fn incremental_reads_of_a_growing_file_equal_one_read() {
    for (id, step) in [
        ("plain001", 4093usize),
        ("large001", 12_345),
        ("stats001", 331),
    ] {
        let src = std::fs::read(fixture_file(id)).unwrap();
        let whole = read_run(&fixture_file(id)).unwrap();
        let tmp = temp_path(&format!("grow-{id}.wandb"));
        std::fs::write(&tmp, b"").unwrap();
        let mut reader = RunReader::new(&tmp);
        let mut len = 0;
        let mut reads = 0;
        while len < src.len() {
            len = (len + step).min(src.len());
            std::fs::write(&tmp, &src[..len]).unwrap();
            let before = reader.offset();
            let up = reader.read_more().unwrap();
            reads += 1;
            assert!(up.offset >= before, "{id}: offset went back");
            assert!(up.diagnostics.is_empty(), "{id}: {:?}", up.diagnostics);
            // an incomplete tail is exactly where the next read resumes
            if let Some(t) = reader.run().incomplete_tail {
                assert_eq!(t, reader.offset());
            }
        }
        assert!(reads > 3);
        assert_eq!(reader.run().incomplete_tail, None);
        assert_same_run(reader.run(), &whole, id);

        // a caller that kept only (offset, run) can go on in a fresh reader
        let mid = src.len() / 2;
        std::fs::write(&tmp, &src[..mid]).unwrap();
        let mut first = RunReader::new(&tmp);
        first.read_more().unwrap();
        let (offset, run) = (first.offset(), first.into_run());
        std::fs::write(&tmp, &src).unwrap();
        let mut second = RunReader::resume(&tmp, offset, run);
        second.read_more().unwrap();
        assert_same_run(second.run(), &whole, id);

        // a file that shrinks is read again from the start
        std::fs::write(&tmp, &src[..100.min(src.len())]).unwrap();
        let up = second.read_more().unwrap();
        assert!(up.restarted);
        std::fs::remove_file(&tmp).unwrap();
    }
}

#[test]
fn flipped_byte_is_reported_and_reading_resyncs() {
    let mut bytes = std::fs::read(fixture_file("plain001")).unwrap();
    let clean = read_bytes(&bytes, 0).unwrap();
    let clean_run = read_run(&fixture_file("plain001")).unwrap();
    // flip a byte in the middle of block 1
    let at = 40_000usize;
    bytes[at] ^= 0x01;
    let batch = read_bytes(&bytes, 0).unwrap();
    let chunk = clean
        .records
        .iter()
        .rev()
        .find(|r| r.offset <= at as u64)
        .unwrap()
        .offset;
    assert_eq!(
        batch.diagnostics,
        [Diagnostic {
            offset: chunk,
            kind: DiagnosticKind::ChecksumMismatch { resumed_at: 65536 }
        }]
    );
    // everything outside the damaged block is still there
    let lost: Vec<u64> = clean
        .records
        .iter()
        .map(|r| r.offset)
        .filter(|o| !batch.records.iter().any(|r| r.offset == *o))
        .collect();
    assert!(!lost.is_empty());
    assert!(lost.iter().all(|o| (chunk..65536).contains(o)), "{lost:?}");
    let mut run = Run::default();
    for r in &batch.records {
        run.apply(r);
    }
    // one block holds about a hundred rows (with their summary records)
    let rows = run.history.len();
    assert!(rows < 300 && rows > 150, "{rows} rows");
    assert_eq!(run.history.last().map(|r| r.step), Some(299));
    assert_eq!(run.state, RunState::Finished);
    assert_eq!(run.config, clean_run.config);
}

/// A small deterministic generator for the damage tests.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    for id in IDS {
        let src = std::fs::read(fixture_file(id)).unwrap();
        for round in 0..60 {
            let mut b = src.clone();
            match round % 4 {
                0 => {
                    for _ in 0..1 + next() % 20 {
                        let i = (next() as usize) % b.len();
                        b[i] = next() as u8;
                    }
                }
                1 => b.truncate((next() as usize) % b.len()),
                2 => {
                    let i = 7 + (next() as usize) % (b.len() - 7);
                    let n = ((next() as usize) % 5000).min(b.len() - i);
                    for x in &mut b[i..i + n] {
                        *x = next() as u8;
                    }
                }
                _ => {
                    let i = 7 + (next() as usize) % (b.len() - 7);
                    b.drain(i..(i + (next() as usize) % 300).min(b.len()));
                }
            }
            let base = if round % 5 == 0 {
                7 + next() % (b.len() as u64)
            } else {
                0
            };
            let slice = if base == 0 {
                &b[..]
            } else {
                &b[(base as usize).min(b.len())..]
            };
            if let Ok(batch) = read_bytes(slice, base) {
                let mut run = Run::default();
                for r in &batch.records {
                    run.apply(r);
                }
                let _ = run.history_keys();
                let _ = serde_json::to_string(&run);
            }
        }
    }
}

fn encode(rt: proto::RecordType, num: i64) -> Vec<u8> {
    proto::Record {
        num,
        record_type: Some(rt),
        uuid: String::new(),
    }
    .encode_to_vec()
}

#[test]
fn unknown_and_undecodable_records_are_skipped() {
    let exit = encode(
        proto::RecordType::Exit(proto::RunExitRecord {
            exit_code: 3,
            runtime: 9,
            not_complete: false,
        }),
        3,
    );
    // Record{num: 1, alert (field 10): {}}: a type this reader does not declare
    let artifact = [0x08, 0x01, 0x52, 0x00];
    // field 2 (history) with a length running past the end
    let broken = [0x12, 0x50, 0x01];
    let log = write_log(&[&artifact, &broken, &exit]);
    let batch = read_bytes(&log, 0).unwrap();
    assert_eq!(batch.unknown_records, 1);
    assert_eq!(batch.records.len(), 1);
    assert!(matches!(
        batch.diagnostics[0].kind,
        DiagnosticKind::UndecodableRecord { .. }
    ));
    assert!(batch.diagnostics[0]
        .to_string()
        .contains("not a valid protobuf Record"));
    let tmp = temp_path("unknown.wandb");
    std::fs::write(&tmp, &log).unwrap();
    let run = read_run(&tmp).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(run.exit_code, Some(3));
    assert_eq!(run.state, RunState::Crashed);
    assert_eq!(run.runtime, Some(9.0));
    assert_eq!(run.record_counts.get("unknown"), Some(&1));
    assert_eq!(run.diagnostics.len(), 1);
}

#[test]
fn values_keys_and_console_semantics() {
    use proto::{HistoryItem, HistoryRecord, HistoryValue, OutputRawRecord, SummaryItem};
    let item = |path: &[&str], json: &str| HistoryItem {
        key: String::new(),
        nested_key: path.iter().map(|s| s.to_string()).collect(),
        value: None,
        value_json: json.into(),
    };
    let mut typed = item(&["typed"], "");
    typed.value = Some(HistoryValue::Integer(-5));
    let history = HistoryRecord {
        item: vec![
            item(&["a", "b"], "1.5"),
            item(&["nested/x"], "2"),
            item(&["bad"], "{not json"),
            typed,
            HistoryItem {
                key: "plain".into(),
                nested_key: vec![],
                value: None,
                value_json: "\"s\"".into(),
            },
        ],
        step: Some(proto::HistoryStep { num: 4 }),
    };
    let summary = proto::SummaryRecord {
        update: vec![SummaryItem {
            key: String::new(),
            nested_key: vec!["x".into(), "y".into()],
            value_json: "Infinity".into(),
        }],
        remove: vec![],
    };
    let remove = proto::SummaryRecord {
        update: vec![],
        remove: vec![SummaryItem {
            key: String::new(),
            nested_key: vec!["x".into(), "y".into()],
            value_json: String::new(),
        }],
    };
    let out = |t: i32, s: &str| {
        proto::RecordType::OutputRaw(OutputRawRecord {
            output_type: t,
            timestamp: None,
            line: s.into(),
        })
    };
    let mut run = Run::default();
    let mut offset = 7;
    let mut apply = |run: &mut Run, rt: proto::RecordType| {
        run.apply(&LogRecord {
            offset,
            record: proto::Record {
                num: 0,
                record_type: Some(rt),
                uuid: String::new(),
            },
        });
        offset += 100;
    };
    apply(&mut run, proto::RecordType::History(history));
    let deep = vec!["k".to_string(); 100_000];
    let hostile = proto::SummaryRecord {
        update: vec![SummaryItem {
            key: String::new(),
            nested_key: deep,
            value_json: "1".into(),
        }],
        remove: vec![],
    };
    apply(&mut run, proto::RecordType::Summary(hostile));
    assert!(run.summary.is_empty());
    assert!(run.diagnostics[1]
        .to_string()
        .contains("key path has 100000 parts"));
    apply(&mut run, proto::RecordType::Summary(summary));
    assert_eq!(
        run.summary["x"].pointer(&["y"]),
        Some(&Value::Float(f64::INFINITY))
    );
    apply(&mut run, proto::RecordType::Summary(remove));
    assert_eq!(run.summary["x"], Value::Object(Default::default()));
    for (t, s) in [
        (1, "progress 1/3"),
        (1, "\rprogress 2/3"),
        (1, "\r"),
        (1, "progress 3/3"),
        (0, "err part"),
        (1, "\r\n"),
        (0, " two\nline two\n"),
        (1, "tail"),
    ] {
        apply(&mut run, out(t, s));
    }
    let row = &run.history[0];
    assert_eq!(row.step, 4);
    assert_eq!(row.get(&["a", "b"]), Some(&Value::Float(1.5)));
    assert_eq!(row.values["nested/x"], Value::Int(2));
    assert_eq!(row.values["typed"], Value::Int(-5));
    assert_eq!(row.values["plain"], Value::String("s".into()));
    assert!(!row.values.contains_key("bad"));
    let flat: Vec<String> = row.flat().into_iter().map(|(k, _)| k).collect();
    assert_eq!(flat, ["a.b", "nested/x", "plain", "typed"]);
    assert_eq!(run.diagnostics.len(), 2);
    assert_eq!(run.diagnostics[0].offset, 7);
    assert!(run.diagnostics[0]
        .to_string()
        .starts_with("value of `bad` in record at offset 7"));
    let lines: Vec<(Stream, &str)> = run
        .console
        .iter()
        .map(|l| (l.stream, l.text.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (Stream::Stdout, "progress 3/3"),
            (Stream::Stderr, "err part two"),
            (Stream::Stderr, "line two"),
        ]
    );
    let tail: Vec<&str> = run.console_tail().map(|l| l.text.as_str()).collect();
    assert_eq!(tail, ["tail"]);
}

#[test]
fn run_dir_errors_name_the_directory() {
    let dir = temp_path("empty-run-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let err = RunDir::open(&dir).unwrap_err();
    assert!(matches!(err, Error::NoRunFile { .. }));
    assert!(err.to_string().contains(&dir.display().to_string()));
    std::fs::write(dir.join("run-x.wandb"), b"not wandb").unwrap();
    let err = read_run_dir(&dir).unwrap_err();
    assert!(matches!(
        err,
        Error::Header {
            source: HeaderError::NotWandb { .. },
            ..
        }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    let rd = RunDir::open(&fixture_dir("plain001")).unwrap();
    assert!(rd.offline);
}

/// Reading in small windows (what the sync does, draining rows as it goes)
/// yields exactly the rows and state of one whole read, cut tail included.
#[test]
fn windowed_reads_equal_a_whole_read() {
    for id in ["blocks01", "large001", "killed01", "plain001"] {
        let path = fixture_file(id);
        let whole = read_run(&path).unwrap();
        let mut reader = RunReader::new(&path);
        let (mut history, mut system, mut console) = (Vec::new(), Vec::new(), Vec::new());
        let mut windows = 0;
        loop {
            let (_, eof) = reader.read_some(Some(32 * 1024)).unwrap();
            let (h, s, c) = reader.take_rows();
            history.extend(h);
            system.extend(s);
            console.extend(c);
            windows += 1;
            if eof {
                break;
            }
        }
        assert!(
            windows > 1 || whole.history.len() < 100,
            "{id}: {windows} windows"
        );
        let run = reader.into_run();
        assert_eq!(history.len(), whole.history.len(), "{id}");
        assert_eq!(
            history.iter().map(|r| r.step).collect::<Vec<_>>(),
            whole.history.iter().map(|r| r.step).collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(system.len(), whole.system.len(), "{id}");
        assert_eq!(console, whole.console, "{id}");
        assert_eq!(run.summary.len(), whole.summary.len(), "{id}");
        assert_eq!(run.exit_code, whole.exit_code, "{id}");
        assert_eq!(run.incomplete_tail, whole.incomplete_tail, "{id}");
        assert_eq!(run.diagnostics, whole.diagnostics, "{id}");
    }
}

/// The reference reading of `bytes`: prost-decode every record
/// ([`read_bytes`]) and apply it ([`Run::apply`]).
fn reference_fold(bytes: &[u8], base: u64) -> Option<Run> {
    let batch = read_bytes(bytes, base).ok()?;
    let mut run = Run::default();
    for r in &batch.records {
        run.apply(r);
    }
    if batch.unknown_records > 0 {
        *run.record_counts.entry("unknown".into()).or_default() += batch.unknown_records;
    }
    for d in batch.diagnostics {
        if d.kind == DiagnosticKind::IncompleteTail {
            run.incomplete_tail = Some(d.offset);
        } else {
            run.diagnostics.push(d);
        }
    }
    Some(run)
}

/// A run as JSON, split into the summary, the value diagnostics and the rest.
fn run_parts(run: &Run) -> (String, Vec<Diagnostic>, serde_json::Value) {
    let mut all = serde_json::to_value(run).unwrap();
    all["summary"] = serde_json::Value::Null;
    all["diagnostics"] = serde_json::Value::Null;
    let (values, others): (Vec<_>, Vec<_>) = run
        .diagnostics
        .iter()
        .cloned()
        .partition(|d| matches!(d.kind, DiagnosticKind::BadValue { .. }));
    all["other_diagnostics"] = serde_json::to_value(&others).unwrap();
    let summary = Value::Object(run.summary.clone()).to_extended_json();
    (summary, values, all)
}

/// The in-place decoder (`wire.rs`, what [`RunReader`] uses) gives the
/// same run as prost + [`Run::apply`]: exactly on the real fixtures, and on
/// damaged copies of them everything but the summary's and values'
/// diagnostics (of several summary updates of a key only the last is parsed).
#[test]
fn in_place_decoding_equals_prost() {
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    for id in IDS {
        let src = std::fs::read(fixture_file(id)).unwrap();
        let want = reference_fold(&src, 0).unwrap();
        let mut got = Run::default();
        got.apply_bytes(&src, 0, true).unwrap();
        assert_eq!(run_parts(&got), run_parts(&want), "{id}");
        assert!(want.history.len() + want.system.len() > 0 || id == "blocks01");
        for round in 0..80 {
            let mut b = src.clone();
            if round % 2 == 0 {
                for _ in 0..1 + next() % 20 {
                    let i = 7 + (next() as usize) % (b.len() - 7);
                    b[i] = next() as u8;
                }
            } else {
                let i = 7 + (next() as usize) % (b.len() - 7);
                b.drain(i..(i + (next() as usize) % 300).min(b.len()));
            }
            let Some(want) = reference_fold(&b, 0) else {
                continue;
            };
            let mut got = Run::default();
            got.apply_bytes(&b, 0, true).unwrap();
            let (_, _, got_rest) = run_parts(&got);
            let (_, _, want_rest) = run_parts(&want);
            assert_eq!(got_rest, want_rest, "{id}, round {round}");
        }
    }
}

/// Damage inside records whose chunks still carry valid checksums (what a
/// buggy writer would leave): the in-place decoder and prost must agree on
/// every record, damaged ones included.
#[test]
fn in_place_decoding_equals_prost_on_damaged_records() {
    let mut next = xorshift(0xD1B5_4A32_D192_ED03);
    for id in ["plain001", "stats001", "large001"] {
        let src = std::fs::read(fixture_file(id)).unwrap();
        let framed = record::deframe(&src, 0).unwrap();
        let payloads: Vec<Vec<u8>> = framed.records.iter().map(|r| r.payload.to_vec()).collect();
        for round in 0..40 {
            let mut damaged = payloads.clone();
            for _ in 0..1 + next() % 30 {
                let r = (next() as usize) % damaged.len();
                let p = &mut damaged[r];
                if p.is_empty() {
                    continue;
                }
                let i = (next() as usize) % p.len();
                match next() % 3 {
                    0 => p[i] = next() as u8,
                    1 => p.truncate(i),
                    _ => p[i] ^= 0x80,
                }
            }
            let refs: Vec<&[u8]> = damaged.iter().map(Vec::as_slice).collect();
            let log = write_log(&refs);
            let want = reference_fold(&log, 0).unwrap();
            let mut got = Run::default();
            got.apply_bytes(&log, 0, true).unwrap();
            let (_, _, got_rest) = run_parts(&got);
            let (_, _, want_rest) = run_parts(&want);
            assert_eq!(got_rest, want_rest, "{id}, round {round}");
        }
    }
}
