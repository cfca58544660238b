//! The dataset commands end to end: add, status, log, ls, diff, tag,
//! checkout, rm, gc, through the real binary.

use std::fs;

use crate::support::{age, changes, sample_dataset, snapshot_tree, write, Env};

#[test]
fn add_checkout_round_trip_is_bit_for_bit() {
    let env = Env::new();
    let src = env.path("mnist");
    sample_dataset(&src);
    let r = env.json(&["data", "add", "mnist", "-m", "first cut", "--tag", "v1"]);
    assert_eq!(r["dataset"], "mnist");
    assert_eq!(r["created"], true);
    assert_eq!(r["files"], 43);
    let id = r["version"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);

    for link in ["copy", "hardlink", "auto"] {
        let out = env.path(&format!("out-{link}"));
        let c = env.json(&[
            "data",
            "checkout",
            "mnist@v1",
            out.to_str().unwrap(),
            "--link",
            link,
        ]);
        assert_eq!(c["version"], id.as_str());
        assert_eq!(snapshot_tree(&out), snapshot_tree(&src), "link mode {link}");
    }
    // A symlink pointing outside was recorded as a link, never followed.
    let ls = env.json(&["data", "ls", "mnist", "-R"]);
    let outside = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "outside_link")
        .unwrap();
    assert_eq!(outside["kind"], "symlink");
    assert_eq!(outside["size"], "/etc/hostname".len());
}

#[test]
fn version_id_is_deterministic_across_walk_order_and_homes() {
    let a = Env::new();
    let b = Env::new();
    // Same content, created in opposite orders.
    let names: Vec<String> = (0..50).map(|i| format!("d{}/n{i}", i % 7)).collect();
    for n in &names {
        write(&a.path("ds").join(n), n.as_bytes());
    }
    for n in names.iter().rev() {
        write(&b.path("ds").join(n), n.as_bytes());
    }
    let ia = a.json(&["data", "add", "ds"])["version"].clone();
    let ib = b.json(&["data", "add", "ds"])["version"].clone();
    assert_eq!(ia, ib);
}

#[test]
fn dedup_across_versions_and_datasets() {
    let env = Env::new();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    write(&env.path("a/data.bin"), &big);
    write(&env.path("b/copy.bin"), &big);
    let ra = env.json(&["data", "add", "a"]);
    assert!(ra["new_bytes"].as_u64().unwrap() >= 2_000_000);
    let rb = env.json(&["data", "add", "b"]);
    assert_eq!(rb["bytes"], 2_000_000);
    assert_eq!(rb["new_bytes"], 0, "identical content is stored once");
    // Unchanged re-add: no new version.
    let again = env.json(&["data", "add", "a"]);
    assert_eq!(again["created"], false);
    assert_eq!(again["version"], ra["version"]);
    assert_eq!(env.json(&["data", "log", "a"]).as_array().unwrap().len(), 1);
}

#[test]
fn status_uses_the_stat_cache_and_reports_changes() {
    let env = Env::new();
    let src = env.path("ds");
    sample_dataset(&src);
    age(&src);
    env.ok(&["data", "add", "ds"]);
    let st = env.json(&["data", "status", "ds"]);
    assert_eq!(st["changes"].as_array().unwrap().len(), 0);
    assert_eq!(
        st["hashed_files"], 0,
        "nothing may be re-read when nothing changed"
    );

    fs::write(src.join("shard1/f001.txt"), b"changed\n").unwrap();
    fs::remove_file(src.join("shard2/f002.txt")).unwrap();
    write(&src.join("new/file.txt"), b"new");
    let st = env.json(&["data", "status", "ds"]);
    let changes = changes(&st);
    assert_eq!(
        changes,
        vec![
            ("added".into(), "new/file.txt".into()),
            ("modified".into(), "shard1/f001.txt".into()),
            ("deleted".into(), "shard2/f002.txt".into()),
        ]
    );
    assert_eq!(
        st["hashed_files"], 2,
        "only the changed and new files are read"
    );
    // Human output names the changes too.
    let human = env.ok(&["data", "status", "ds"]);
    assert!(human.contains("modified: shard1/f001.txt"), "{human}");
}

#[test]
fn refs_tags_log_ls_and_diff() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("a.txt"), b"one");
    write(&src.join("sub/b.txt"), b"two");
    let v1 = env.json(&["data", "add", "ds", "-m", "v1", "--tag", "first"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("a.txt"), b"one, edited");
    write(&src.join("c.txt"), b"three");
    fs::remove_file(src.join("sub/b.txt")).unwrap();
    let v2 = env.json(&["data", "add", "ds", "-m", "v2"])["version"]
        .as_str()
        .unwrap()
        .to_string();

    let log = env.json(&["data", "log", "ds"]);
    assert_eq!(log[0]["id"], v2.as_str());
    assert_eq!(log[0]["parent"], v1.as_str());
    assert_eq!(log[1]["tags"][0], "first");
    assert_eq!(log[0]["author"], "tester");

    // Prefix, tag and latest all resolve.
    let prefix = format!("ds@{}", &v1[..8]);
    let ls = env.json(&["data", "ls", &prefix]);
    let paths: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["a.txt", "sub"]);
    let ls = env.json(&["data", "ls", "ds@first", "sub"]);
    assert_eq!(ls[0]["path"], "sub/b.txt");

    let d = env.json(&["data", "diff", "ds@first", "ds@latest"]);
    let changes = changes(&d);
    assert_eq!(
        changes,
        vec![
            ("modified".into(), "a.txt".into()),
            ("added".into(), "c.txt".into()),
            ("deleted".into(), "sub/b.txt".into()),
        ]
    );

    // Tags: set, refuse to move silently, move with --force, delete.
    env.ok(&["data", "tag", "ds@latest", "prod"]);
    let err = env.fail(&["data", "tag", &prefix, "prod"]);
    assert!(
        err.contains("already points at") && err.contains("--force"),
        "{err}"
    );
    env.ok(&["data", "tag", &prefix, "prod", "--force"]);
    assert_eq!(
        env.json(&["data", "ls", "ds@prod"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    env.ok(&["data", "tag", "ds", "prod", "--delete"]);
    let err = env.fail(&["data", "ls", "ds@prod"]);
    assert!(
        err.contains("ds@prod") && err.contains("no tag or version"),
        "{err}"
    );
    let err = env.fail(&["data", "log", "nope"]);
    assert!(err.contains("no dataset named \"nope\""), "{err}");
}

#[test]
fn checkout_protects_files_it_does_not_own() {
    let env = Env::new();
    let src = env.path("ds");
    write(&src.join("a.txt"), b"v1 a");
    write(&src.join("old.txt"), b"only in v1");
    env.ok(&["data", "add", "ds", "--tag", "v1"]);
    fs::remove_file(src.join("old.txt")).unwrap();
    write(&src.join("a.txt"), b"v2 a");
    env.ok(&["data", "add", "ds", "--tag", "v2"]);

    let out = env.path("work");
    // A file of the user's in the way: refused, and nothing is changed.
    write(&out.join("a.txt"), b"my precious notes");
    write(&out.join("mine.txt"), b"unrelated");
    let err = env.fail(&["data", "checkout", "ds@v1", out.to_str().unwrap()]);
    assert!(err.contains("a.txt") && err.contains("--force"), "{err}");
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"my precious notes");
    assert!(!out.join("old.txt").exists());

    // --force replaces it; unrelated files stay.
    env.ok(&[
        "data",
        "checkout",
        "ds@v1",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"v1 a");
    assert_eq!(fs::read(out.join("old.txt")).unwrap(), b"only in v1");

    // Switching versions replaces and removes what the previous checkout owned…
    let r = env.json(&["data", "checkout", "ds@v2", out.to_str().unwrap()]);
    assert_eq!(r["removed"], 1);
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"v2 a");
    assert!(!out.join("old.txt").exists());
    assert_eq!(fs::read(out.join("mine.txt")).unwrap(), b"unrelated");

    // …but not a file the user edited since.
    env.ok(&["data", "checkout", "ds@v1", out.to_str().unwrap()]);
    fs::write(out.join("old.txt"), b"edited by hand").unwrap();
    let err = env.fail(&["data", "checkout", "ds@v2", out.to_str().unwrap()]);
    assert!(err.contains("old.txt"), "{err}");
    assert_eq!(fs::read(out.join("old.txt")).unwrap(), b"edited by hand");

    // Re-checking out the same version touches nothing.
    env.ok(&[
        "data",
        "checkout",
        "ds@v1",
        out.to_str().unwrap(),
        "--force",
    ]);
    let r = env.json(&["data", "checkout", "ds@v1", out.to_str().unwrap()]);
    assert_eq!(r["written"], 0);
}

#[test]
fn rm_and_gc_reclaim_only_unreachable_objects() {
    let env = Env::new();
    write(&env.path("keep/shared.bin"), b"shared content");
    write(&env.path("keep/k.bin"), b"only in keep");
    write(&env.path("drop/shared.bin"), b"shared content");
    write(&env.path("drop/d.bin"), b"only in drop");
    env.ok(&["data", "add", "keep"]);
    env.ok(&["data", "add", "drop"]);
    let dry = env.json(&["data", "gc", "--dry-run"]);
    assert_eq!(dry["deleted"], 0);

    env.ok(&["data", "rm", "drop"]);
    let dry = env.json(&["data", "gc", "--dry-run"]);
    // d.bin and drop's manifest
    assert_eq!(dry["deleted"], 2);
    let gc = env.json(&["data", "gc"]);
    assert_eq!(gc["deleted"], 2);
    assert_eq!(env.json(&["data", "gc", "--dry-run"])["deleted"], 0);
    env.ok(&["data", "fsck"]);
    let out = env.path("out");
    env.ok(&["data", "checkout", "keep", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("shared.bin")).unwrap(), b"shared content");
}

#[test]
fn concurrent_adds_from_separate_processes_all_land() {
    let env = Env::new();
    for i in 0..4 {
        for j in 0..200 {
            write(
                &env.path(&format!("ds{i}/f{j}")),
                format!("{i}/{j}").as_bytes(),
            );
        }
    }
    let children: Vec<_> = (0..4)
        .map(|i| {
            env.cmd()
                .args(["data", "add", &format!("ds{i}")])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let list = env.json(&["data", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 4);
    env.ok(&["data", "fsck"]);
}

#[test]
fn single_file_snapshot() {
    let env = Env::new();
    write(&env.path("weights.pt"), b"tensor bytes");
    let r = env.json(&["data", "add", "weights.pt", "--name", "weights"]);
    assert_eq!(r["files"], 1);
    let out = env.path("o");
    env.ok(&["data", "checkout", "weights", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("weights.pt")).unwrap(), b"tensor bytes");
}

#[test]
fn gc_repacks_packs_holding_live_and_dead_objects() {
    let env = Env::new();
    // `drop` is added first, so the shared object lives in drop's pack.
    write(&env.path("drop/shared.bin"), b"shared content");
    write(&env.path("drop/d.bin"), b"only in drop");
    write(&env.path("keep/shared.bin"), b"shared content");
    write(&env.path("keep/k.bin"), b"only in keep");
    env.ok(&["data", "add", "drop"]);
    env.ok(&["data", "add", "keep"]);
    env.ok(&["data", "rm", "drop"]);
    let gc = env.json(&["data", "gc"]);
    assert_eq!(gc["repacked"], 1, "{gc}");
    assert_eq!(gc["deleted"], 2, "{gc}"); // d.bin and drop's manifest
    let f = env.json(&["data", "fsck"]);
    assert_eq!(f["packed_objects"], 2, "{f}"); // shared (repacked) and k
    let out = env.path("out");
    env.ok(&["data", "checkout", "keep", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("shared.bin")).unwrap(), b"shared content");
    assert_eq!(env.json(&["data", "gc", "--dry-run"])["deleted"], 0);
}

#[test]
fn re_add_after_gc_restores_objects_the_stat_cache_remembers() {
    let env = Env::new();
    let src = env.path("ds");
    sample_dataset(&src);
    age(&src);
    env.ok(&["data", "add", "ds"]);
    env.ok(&["data", "rm", "ds"]);
    env.ok(&["data", "gc"]); // every object goes; the stat cache still knows the ids
    let r = env.json(&["data", "add", "ds"]);
    assert!(r["new_bytes"].as_u64().unwrap() > 3_000_000, "{r}");
    env.ok(&["data", "fsck"]);
    let out = env.path("out");
    env.ok(&["data", "checkout", "ds", out.to_str().unwrap()]);
    assert_eq!(snapshot_tree(&out), snapshot_tree(&src));
    // And with no gc in between, a re-add reads nothing at all.
    let again = env.json(&["data", "add", "ds", "--name", "ds2"]);
    assert_eq!(again["hashed_files"], 0, "{again}");
}
