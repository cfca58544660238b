//! The S3-compatible test server of the integration tests (s3s-fs behind a
//! wrapper that serializes conditional writes and counts requests), as a
//! program for benchmarks: `cargo run --release --example s3_server -- DIR
//! [PORT]`. It prints its URL, serves 127.0.0.1 until killed, and keeps the
//! request counts by operation in `DIR/.counters.json` (updated every 200 ms).
//! Credentials: the access key and secret in `tests/it/support/s3.rs`.

#![allow(dead_code)]

#[path = "../tests/it/support/s3.rs"]
mod s3;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: s3_server DIR [PORT]"));
    let port: u16 = args
        .next()
        .map_or(0, |p| p.parse().expect("PORT is a number"));
    let server = s3::S3Server::start(&dir, port);
    println!("{}", server.url);
    let counters_file = dir.join(".counters.json");
    let mut last = String::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = serde_json::to_string(&server.counters.snapshot()).expect("json");
        if now != last {
            let tmp = dir.join(".counters.json.tmp");
            std::fs::write(&tmp, &now).expect("write counters");
            std::fs::rename(&tmp, &counters_file).expect("rename counters");
            last = now;
        }
    }
}
