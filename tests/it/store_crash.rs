//! Crash safety: `data add` killed with SIGKILL at random moments leaves a
//! store that fsck finds clean, with no version referring to a missing
//! object, and a re-run completes.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::{snapshot_tree, write, Env};

fn make_dataset(root: &std::path::Path, round: u32) {
    // 3,000 small files (a tenth of them changed every round) and two 12 MiB files.
    for i in 0..3000u32 {
        let gen = if i % 10 == round % 10 { round } else { 0 };
        let mut body = vec![(i % 251) as u8; 4096];
        body[..8].copy_from_slice(&(u64::from(i) << 16 | u64::from(gen)).to_le_bytes());
        write(&root.join(format!("d{:02}/f{i:05}", i % 30)), &body);
    }
    for b in 0..2u32 {
        let body: Vec<u8> = (0..12u32 << 20)
            .map(|x| (x.wrapping_mul(31).wrapping_add(b + round)) as u8)
            .collect();
        write(&root.join(format!("big{b}.bin")), &body);
    }
}

#[test]
fn sigkill_during_add_never_corrupts_the_store() {
    let env = Env::new();
    let src = env.path("ds");
    make_dataset(&src, 0);
    env.ok(&["data", "add", "ds"]);
    // How long a round's add takes (most small files already stored).
    make_dataset(&src, 100);
    let t0 = Instant::now();
    env.ok(&["data", "add", "ds"]);
    let full = t0.elapsed();
    let mut rng = fastrand::Rng::with_seed(0x7a11_7a4d);
    let mut killed = 0;
    for round in 1..=14u32 {
        make_dataset(&src, round);
        let delay = Duration::from_micros(rng.u64(0..(full.as_micros() as u64).max(1)));
        let mut child = env
            .cmd()
            .args(["data", "add", "ds", "-m", &format!("round {round}")])
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let f = env.run(&["--json", "data", "fsck"]);
        assert!(
            f.status.success(),
            "round {round} (killed after {delay:?}): fsck found problems: {}",
            String::from_utf8_lossy(&f.stdout)
        );
    }
    assert!(
        killed >= 5,
        "only {killed} of 14 adds were actually interrupted"
    );
    // Re-running completes, and the result checks out bit for bit.
    env.ok(&["data", "add", "ds", "-m", "final"]);
    env.ok(&["data", "fsck"]);
    let out = env.path("out");
    env.ok(&["data", "checkout", "ds", out.to_str().unwrap()]);
    assert_eq!(snapshot_tree(&out), snapshot_tree(&src));
    // Interrupted writers' leftovers are reclaimed by gc.
    env.ok(&["data", "gc"]);
    env.ok(&["data", "fsck"]);
    assert_eq!(fs::read_dir(env.home.join("store/tmp")).unwrap().count(), 0);
}

/// Two datasets sharing most objects; the first is removed, so gc must
/// rewrite packs that hold live and dead objects.
fn gc_setup() -> Env {
    let env = Env::new();
    for i in 0..6_000u32 {
        let body = format!("{i:08}").repeat(512); // 4 KiB, distinct per i
        if i < 4_000 {
            write(
                &env.path(&format!("drop/d{:02}/f{i:05}", i % 40)),
                body.as_bytes(),
            );
        }
        if i >= 2_000 {
            write(
                &env.path(&format!("keep/d{:02}/f{i:05}", i % 40)),
                body.as_bytes(),
            );
        }
    }
    env.ok(&["data", "add", "drop"]);
    env.ok(&["data", "add", "keep"]);
    env.ok(&["data", "rm", "drop"]);
    env
}

#[test]
fn sigkill_during_gc_never_loses_a_live_object() {
    let env = gc_setup();
    let t0 = Instant::now();
    let r = env.json(&["data", "gc"]);
    let full = t0.elapsed();
    assert_eq!(r["repacked"], 2_000, "{r}");
    let mut rng = fastrand::Rng::with_seed(0x6c_6c);
    let mut killed = 0;
    for round in 0..5 {
        let env = gc_setup();
        let delay = Duration::from_micros(rng.u64(0..(full.as_micros() as u64).max(1)));
        let mut child = env.cmd().args(["data", "gc"]).spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        let f = env.run(&["--json", "data", "fsck"]);
        assert!(
            f.status.success(),
            "round {round} (killed after {delay:?}): {}",
            String::from_utf8_lossy(&f.stdout)
        );
        let out = env.path("out");
        env.ok(&["data", "checkout", "keep", out.to_str().unwrap()]);
        assert_eq!(snapshot_tree(&out), snapshot_tree(&env.path("keep")));
        // A second gc finishes the job.
        env.ok(&["data", "gc"]);
        assert_eq!(env.json(&["data", "gc", "--dry-run"])["deleted"], 0);
        env.ok(&["data", "fsck"]);
    }
    assert!(killed >= 2, "only {killed} of 5 gc runs were interrupted");
}
