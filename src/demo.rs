//! `trainyard demo`: the whole product on a throwaway home in a minute.
//! A FAKE GPU inventory (named so everywhere: "Fake A100") replaying a
//! trace, the bundled sample dataset with two versions, three small wandb
//! runs made offline by the real client (`assets/demo-runs/make.py`), and
//! jobs that end up queued, running, succeeded and failed. The files are
//! embedded in the binary, so an installed `trainyard` needs no checkout.
//!
//! This module seeds a home before its daemon starts (store and run index)
//! and says which jobs to submit; `cli/demo.rs` starts the daemon.

use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};

use crate::home::Home;
use crate::progress::NoProgress;
use crate::queue::JobSpec;
use crate::store::{AddOptions, Store};
use crate::wandb::index::{RunIndex, ScanOptions};

static SAMPLE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/assets/sample-dataset");
static RUNS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/assets/demo-runs");

/// The demo's fake GPUs: two to train on, one for the rest.
pub const FAKE_GPUS: &str = "2xA100-80GB,1xRTX4090-24GB";

/// The fake GPUs' trace: the A100s get busy a few seconds in (the
/// training job holds them), the RTX 4090 stays idle; processes are the
/// jobs' own (docs/gpu-trace-format.md).
const TRACE: &str = "version = 1
processes = \"environment\"
[[gpu]]
index = 0
points = [[0, 0, 0, 60, 31], [4, 35, 21000, 180, 48], [8, 93, 61000, 385, 71], [40, 88, 61000, 370, 73]]
[[gpu]]
index = 1
points = [[0, 0, 0, 58, 30], [4, 31, 21000, 175, 46], [8, 91, 61000, 380, 69], [40, 86, 61000, 366, 72]]
";

/// The dataset's name in the demo's store.
pub const DATASET: &str = "sample";

/// What [`prepare`] put into the home.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seeded {
    /// The dataset, with `v1` and `v2` tags.
    pub dataset: String,
    /// Its versions, oldest first.
    pub versions: Vec<String>,
    /// wandb runs indexed.
    pub runs: usize,
    /// The fake GPUs' trace file, for the agent.
    pub trace: PathBuf,
}

/// Why the demo could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing the bundled files.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store refused a snapshot.
    #[error("snapshotting the sample dataset: {0}")]
    Store(#[from] crate::store::Error),
    /// The run index refused the runs.
    #[error("indexing the demo's wandb runs: {0}")]
    Runs(#[from] crate::wandb::index::IndexError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Seeds `home` (an empty, throwaway one): the sample dataset as two
/// versions (the second relabels a row and adds an image), the demo's
/// wandb runs indexed, and the GPU trace written. Before the daemon starts.
pub fn prepare(home: &Home) -> Result<Seeded, DemoError> {
    let root = home.root().join("demo");
    let data = root.join(DATASET);
    std::fs::create_dir_all(&data).map_err(io(&data))?;
    SAMPLE.extract(&data).map_err(io(&data))?;
    let store = Store::open(home)?;
    let add = |message: &str, tag: &str| {
        store.add(
            &data,
            &AddOptions {
                name: Some(DATASET.into()),
                message: Some(message.into()),
                tag: Some(tag.into()),
                author: None,
            },
            &NoProgress,
        )
    };
    let v1 = add("the sample dataset as bundled", "v1")?;
    let labels = data.join("labels.csv");
    let text = std::fs::read_to_string(&labels).map_err(io(&labels))?;
    std::fs::write(&labels, format!("{text}0004.txt,cat\n")).map_err(io(&labels))?;
    let extra = data.join("images/0004.txt");
    std::fs::write(&extra, "a fourth image, labelled cat\n").map_err(io(&extra))?;
    let v2 = add("one more image and its label", "v2")?;

    let runs = root.join("wandb");
    std::fs::create_dir_all(&runs).map_err(io(&runs))?;
    // Only the runs, not the script that made them.
    for d in RUNS.dirs() {
        let dir = runs.join(d.path());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        d.extract(&runs).map_err(io(&runs))?;
    }
    let report = RunIndex::open(&home.runs_path())?
        .scan(std::slice::from_ref(&runs), ScanOptions::default())?;

    let trace = root.join("gpu-trace.toml");
    std::fs::write(&trace, TRACE).map_err(io(&trace))?;
    Ok(Seeded {
        dataset: DATASET.into(),
        versions: vec![v1.version.to_string(), v2.version.to_string()],
        runs: report.found - report.errors.len(),
        trace,
    })
}

/// The demo's jobs, in submission order: a CPU job that succeeds, a
/// training job on both A100s that runs for ten minutes with a log, an
/// evaluation that fails, and a second training job that waits for the
/// A100s (queued, with its reason).
pub fn jobs(user: &str) -> Vec<JobSpec> {
    let job = |v: serde_json::Value| -> JobSpec {
        let mut v = v;
        v["project"] = "demo".into();
        v["user"] = user.into();
        serde_json::from_value(v).expect("the demo's job specs are valid")
    };
    vec![
        job(serde_json::json!({
            "name": "prepare-data",
            "command": "echo 'checking the sample dataset'; sleep 2; echo '4 images, 4 labels: ok'",
        })),
        job(serde_json::json!({
            "name": "train resnet18",
            "command": "for i in $(seq 1 600); do echo \"step $i loss $(awk -v s=$i 'BEGIN{printf \"%.3f\", 2.3/(1+s/40)}')\"; sleep 1; done",
            "gpus": {"count": 2, "model": "A100"},
            "env": {"LR": "1e-3"},
            "tags": ["demo", "baseline"],
        })),
        job(serde_json::json!({
            "name": "eval checkpoint",
            "command": "echo 'loading checkpoints/last.pt'; echo 'FileNotFoundError: checkpoints/last.pt' >&2; exit 1",
            "gpus": {"count": 1},
        })),
        job(serde_json::json!({
            "name": "train resnet50",
            "command": "echo training; sleep 600",
            "gpus": {"count": 2, "model": "A100"},
            "env": {"LR": "3e-4"},
            "tags": ["demo"],
        })),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_jobs_are_valid_specs() {
        let jobs = super::jobs("ada");
        assert_eq!(jobs.len(), 4);
        for j in &jobs {
            j.validate().unwrap();
            assert_eq!(j.project, "demo");
        }
    }
}
