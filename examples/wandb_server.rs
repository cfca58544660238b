//! The wandb-compatible test server of the integration tests
//! (`tests/it/support/wandb.rs`: GraphQL, file_stream and presigned uploads,
//! enough for the real `wandb sync` and for Trainyard's client), as a
//! program for benchmarks:
//!
//! ```text
//! cargo run --release --example wandb_server -- [PORT] [--counters FILE] [--upload-base URL] [--verbose]
//! ```
//!
//! It serves 127.0.0.1 (PORT 0 or none = any free port) until killed. The
//! first line on stdout is its URL (`WANDB_BASE_URL`), the second the API key
//! it accepts (`WANDB_API_KEY`). With `--counters FILE` it keeps the request
//! counts (`{"graphql":n,"file_stream":n,"upload":n,"any":n,"ops":{…}}`) in
//! FILE, rewritten (atomically) every 200 ms when they change.
//! `--upload-base URL` puts URL instead of its own into the upload URLs it
//! hands out (wandb/local's `HOST` setting). `--verbose`
//! prints the request log (`graphql UpsertBucket`, `file_stream …`) on
//! stderr.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

#[path = "../tests/it/support/wandb.rs"]
mod wandb;

const USAGE: &str = "usage: wandb_server [PORT] [--counters FILE] [--upload-base URL] [--verbose]";

fn main() {
    let mut port = 0u16;
    let mut counters: Option<PathBuf> = None;
    let mut verbose = false;
    let mut upload_base = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--counters" => counters = Some(args.next().expect(USAGE).into()),
            "--upload-base" => upload_base = Some(args.next().expect(USAGE)),
            "-v" | "--verbose" => verbose = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            p => port = p.parse().expect(USAGE),
        }
    }
    let server = wandb::WandbServer::start_with(wandb::Options {
        port,
        upload_base,
        ..wandb::Options::default()
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", server.url).expect("stdout");
    writeln!(out, "{}", wandb::API_KEY).expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    let mut last = String::new();
    let mut logged = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if verbose {
            let log = server.log();
            for line in &log[logged..] {
                eprintln!("{line}");
            }
            logged = log.len();
        }
        let Some(file) = &counters else { continue };
        let now = server.counters().to_string();
        if now != last {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, &now).expect("write counters");
            std::fs::rename(&tmp, file).expect("rename counters");
            last = now;
        }
    }
}
