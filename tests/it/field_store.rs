//! Store behaviour a new user tripped over in the field test.

use crate::support::{write, Env};

#[test]
fn status_of_a_directory_added_under_another_name_finds_that_dataset() {
    let env = Env::new();
    let dir = env.path("raw-2026");
    write(&dir.join("a.txt"), b"one");
    write(&dir.join("b.txt"), b"two");
    env.ok(&["data", "add", dir.to_str().unwrap(), "--name", "imagenet"]);
    write(&dir.join("c.txt"), b"three");
    // No --name: the directory's own name has no dataset, but its versions
    // were recorded as "imagenet".
    let r = env.json(&["data", "status", dir.to_str().unwrap()]);
    assert_eq!(r["dataset"], "imagenet", "{r}");
    assert!(r["against"].is_string(), "{r}");
    let changes = r["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{r}");
    assert_eq!(changes[0]["path"], "c.txt", "{r}");
    // A directory never added says which names exist.
    let other = env.path("fresh");
    write(&other.join("x"), b"x");
    let text = env.ok(&["data", "status", other.to_str().unwrap()]);
    assert!(text.contains("not yet versioned"), "{text}");
    assert!(text.contains("this store has imagenet"), "{text}");
    assert!(text.contains("--name"), "{text}");
}
