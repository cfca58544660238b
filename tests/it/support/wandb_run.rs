//! An offline wandb run on chosen GPUs at a chosen time, written as a GPU
//! host's wandb client writes one (the file header, CRC-32 chunks in 32 KiB
//! blocks, and the `wandb_internal.Record`s the reader reads), for tests
//! that need a run on the fake GPUs of a test daemon at the time of its job:
//! the real client records no GPU metrics without a GPU. The records are
//! encoded with the reader's own message types (`trainyard::wandb::proto`).

use std::path::{Path, PathBuf};

use prost::Message;
use trainyard::wandb::proto::{
    EnvironmentRecord, GpuNvidiaInfo, HeaderRecord, Record, RecordType, RunExitRecord, RunRecord,
    StatsItem, StatsRecord, Timestamp, VersionInfo,
};
use trainyard::wandb::record::{
    file_header, BLOCK_SIZE, CHUNK_FIRST, CHUNK_FULL, CHUNK_HEADER_LEN, CHUNK_LAST, CHUNK_MIDDLE,
};

/// A run whose processes used GPUs `used` (NVML indices into `gpus`, each
/// `(model, uuid)`) of `host`, sampled at `samples` (`(ms since the epoch,
/// utilization %)`).
pub struct GpuRun<'a> {
    pub id: &'a str,
    pub project: &'a str,
    pub user: &'a str,
    pub host: &'a str,
    pub gpus: &'a [(&'a str, &'a str)],
    pub used: &'a [usize],
    pub start_ms: i64,
    pub samples: &'a [(i64, f64)],
}

fn ts(ms: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

/// The LevelDB-style framing of `payloads`.
fn frame(payloads: &[Vec<u8>]) -> Vec<u8> {
    let block = BLOCK_SIZE as usize;
    let head = CHUNK_HEADER_LEN as usize;
    let mut out = file_header().to_vec();
    for p in payloads {
        let mut rest: &[u8] = p;
        let mut first = true;
        loop {
            let left = block - out.len() % block;
            if left < head {
                out.resize(out.len() + left, 0);
                continue;
            }
            let n = rest.len().min(left - head);
            let last = n == rest.len();
            let t = match (first, last) {
                (true, true) => CHUNK_FULL,
                (true, false) => CHUNK_FIRST,
                (false, false) => CHUNK_MIDDLE,
                (false, true) => CHUNK_LAST,
            };
            let mut h = crc32fast::Hasher::new();
            h.update(&[t]);
            h.update(&rest[..n]);
            out.extend_from_slice(&h.finalize().to_le_bytes());
            out.extend_from_slice(&(n as u16).to_le_bytes());
            out.push(t);
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            first = false;
            if last {
                break;
            }
        }
    }
    out
}

/// Writes the run under `root` (`offline-run-…-ID/run-ID.wandb`); returns
/// its directory.
pub fn write_gpu_run(root: &Path, run: &GpuRun) -> PathBuf {
    let mut records = vec![
        RecordType::Header(HeaderRecord {
            version_info: Some(VersionInfo {
                producer: "trainyard-test".into(),
                min_consumer: "0.31.0".into(),
            }),
        }),
        RecordType::Run(Box::new(RunRecord {
            run_id: run.id.into(),
            project: run.project.into(),
            display_name: run.id.into(),
            host: run.host.into(),
            start_time: ts(run.start_ms),
            ..Default::default()
        })),
        RecordType::Environment(Box::new(EnvironmentRecord {
            os: "Linux".into(),
            host: run.host.into(),
            username: run.user.into(),
            gpu_type: run
                .gpus
                .first()
                .map(|g| g.0.to_string())
                .unwrap_or_default(),
            gpu_count: run.gpus.len() as u32,
            gpu_nvidia: run
                .gpus
                .iter()
                .map(|(name, uuid)| GpuNvidiaInfo {
                    name: name.to_string(),
                    uuid: uuid.to_string(),
                    memory_total: 80 << 30,
                    ..Default::default()
                })
                .collect(),
            writer_id: "test".into(),
            ..Default::default()
        })),
    ];
    for &(t, util) in run.samples {
        let mut item = Vec::new();
        for i in 0..run.gpus.len() {
            let mine = run.used.contains(&i);
            item.push((format!("gpu.{i}.gpu"), if mine { util } else { 0.0 }));
            if mine {
                item.push((format!("gpu.process.{i}.gpu"), util));
                item.push((format!("gpu.process.{i}.powerWatts"), 200.0));
            }
        }
        records.push(RecordType::Stats(StatsRecord {
            stats_type: 0,
            timestamp: ts(t),
            item: item
                .into_iter()
                .map(|(key, v)| StatsItem {
                    key,
                    value_json: v.to_string(),
                })
                .collect(),
        }));
    }
    let last = run.samples.last().map_or(run.start_ms, |s| s.0);
    records.push(RecordType::Exit(RunExitRecord {
        exit_code: 0,
        runtime: ((last - run.start_ms) / 1000) as i32,
        not_complete: false,
    }));
    let payloads: Vec<Vec<u8>> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            Record {
                num: i as i64 + 1,
                record_type: Some(r),
                uuid: String::new(),
            }
            .encode_to_vec()
        })
        .collect();
    let stamp = jiff::Timestamp::from_millisecond(run.start_ms)
        .expect("start time")
        .strftime("%Y%m%d_%H%M%S");
    let dir = root.join(format!("offline-run-{stamp}-{}", run.id));
    std::fs::create_dir_all(&dir).expect("run dir");
    std::fs::write(dir.join(format!("run-{}.wandb", run.id)), frame(&payloads)).expect("run file");
    dir
}
