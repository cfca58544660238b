//! Golden files: a home written by store format 1 must keep loading, and the
//! same content must keep getting the same version id (the manifest encoding
//! is a persistent format). Regenerate only with `scripts/make-store-fixture`.

use std::fs;
use std::path::Path;

use crate::support::{copy_dir, snapshot_tree, write, Env};

const V1: &str = "8c27b9524486dee830de67dfb1b45e7c283f29c37d7daa211f52830e64618c8f";
const V2: &str = "8f8780dc0f2a216be060b9a8110c4741b92ad9a8f3d4123d29a6b0fe95e1bd91";

/// The source of the golden dataset (`with_dog`: its second version); also
/// `golden`'s catalog and remote fixtures.
pub(crate) fn golden_source(root: &Path, with_dog: bool) {
    use std::os::unix::fs::PermissionsExt;
    write(
        &root.join("labels.csv"),
        b"label,file\ncat,images/cat.txt\n",
    );
    write(&root.join("images/cat.txt"), b"meow\n");
    if with_dog {
        write(&root.join("images/dog.txt"), b"dog\n");
    }
    write(&root.join("prep.sh"), b"#!/bin/sh\necho prep\n");
    fs::set_permissions(root.join("prep.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("images/cat.txt", root.join("first")).unwrap();
}

#[test]
fn store_v1_fixture_still_reads() {
    let env = Env::new();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1/home"),
        &env.home,
    );
    let log = env.json(&["data", "log", "golden"]);
    assert_eq!(log[0]["id"], V2);
    assert_eq!(log[1]["id"], V1);
    assert_eq!(log[1]["tags"][0], "v1");
    assert_eq!(log[1]["message"], "first version");
    env.ok(&["data", "fsck"]);

    let expect = env.path("expect");
    golden_source(&expect, false);
    let out = env.path("out");
    env.ok(&["data", "checkout", "golden@v1", out.to_str().unwrap()]);
    assert_eq!(snapshot_tree(&out), snapshot_tree(&expect));
}

#[test]
fn manifest_encoding_is_stable() {
    let env = Env::new();
    golden_source(&env.path("golden"), true);
    assert_eq!(env.json(&["data", "add", "golden"])["version"], V2);
}
