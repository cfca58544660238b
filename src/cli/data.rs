//! `trainyard data …`: the dataset store commands. They work in-process, with
//! no daemon, like git and DVC.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use trainyard::store::{
    AddOptions, Change, ChangeKind, CheckoutOptions, DatasetRef, Kind, LinkMode, Store,
};

use super::output::{self, Bar};
use super::Ctx;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Snapshot a directory or file as a new version of a dataset.
    ///
    /// Unchanged files are recognised from the stat cache and not read again;
    /// content already in the store (from any dataset) is not stored twice.
    Add {
        /// The directory or file to snapshot.
        path: PathBuf,
        /// Dataset name [default: the dataset this path was last added to, else the path's file name].
        #[arg(long)]
        name: Option<String>,
        /// A message describing this version.
        #[arg(short, long)]
        message: Option<String>,
        /// Tag the new version (like `git tag`); moves the tag if it exists.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show what changed in a directory since the dataset's latest version.
    Status {
        /// The directory or file.
        path: PathBuf,
        /// Dataset name [default: the dataset this path was last added to, else the path's file name].
        #[arg(long)]
        name: Option<String>,
        /// Compare with this version (tag, id prefix or `latest`) instead.
        #[arg(long, value_name = "REF")]
        against: Option<String>,
    },
    /// List datasets.
    List,
    /// Show a dataset's versions, newest first.
    Log {
        /// The dataset.
        name: String,
    },
    /// List the files of a version (or, with --remote, what a remote holds).
    Ls {
        /// NAME or NAME@REF (REF: tag, version id prefix, or `latest`).
        target: Option<String>,
        /// List the datasets, versions and tags on a remote instead
        /// (the default remote when no name is given).
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "REMOTE")]
        remote: Option<String>,
        /// Only this directory or file of the version.
        subpath: Option<String>,
        /// List everything below, not just one level.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Show the differences between two versions (NAME@REF NAME@REF).
    Diff {
        /// The older side.
        a: String,
        /// The newer side.
        b: String,
    },
    /// Name a version with a tag (NAME@REF TAG).
    Tag {
        /// NAME@REF of the version to tag.
        target: String,
        /// The tag name.
        tag: String,
        /// Move the tag if it already names another version.
        #[arg(long)]
        force: bool,
        /// Delete the tag instead (TARGET is then just the dataset name).
        #[arg(long, conflicts_with = "force")]
        delete: bool,
    },
    /// Materialize a version into a directory.
    ///
    /// Never overwrites or deletes files the version does not own (use
    /// --force); re-checking out into the same directory only touches what
    /// differs, and removes files of the previous checkout that the new
    /// version no longer has.
    Checkout(CheckoutArgs),
    /// Forget a dataset and all its versions and tags (objects are reclaimed by `gc`).
    Rm {
        /// The dataset.
        name: String,
    },
    /// Upload versions to a remote: only what it lacks, small files packed.
    Push(super::remote::PushArgs),
    /// Download a version from a remote (verified) and check it out.
    Pull(super::remote::PullArgs),
    /// Download a version from a remote into the store without checking it out.
    Fetch(super::remote::PullArgs),
    /// Write a pointer to a pushed version into the enclosing git repository
    /// (a data registry) and stage it; --commit -m MSG commits, --git-tag tags.
    Pin(super::remote::PinArgs),
    /// Check out the version a pointer file in a git registry names, at a
    /// rev, pulling it from the remote the pointer names (no git binary needed).
    Get(super::remote::GetArgs),
    /// Like get, and record the registry, rev and pointer with the version,
    /// so `data log` shows where it came from.
    Import(super::remote::GetArgs),
    /// Rehash every object and check every version; exits non-zero on problems.
    Fsck,
    /// Delete objects that no version or tag references.
    Gc {
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// NAME or NAME@REF.
    target: String,
    /// The directory to write (created if missing).
    dir: PathBuf,
    /// How files are materialized: auto tries reflink, then hardlink
    /// (read-only files sharing the store's inode), then copy.
    #[arg(long, value_enum, default_value_t = Link::Auto)]
    link: Link,
    /// Replace or delete files the version does not own.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Link {
    Auto,
    Reflink,
    Hardlink,
    Copy,
}

fn parse_ref(s: &str) -> anyhow::Result<DatasetRef> {
    Ok(s.parse::<DatasetRef>()?)
}

pub fn run(ctx: &Ctx, cmd: DataCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&ctx.home)
        .with_context(|| format!("opening the store under {}", ctx.home.root().display()))?;
    let store = &store;
    match cmd {
        DataCommand::Add {
            path,
            name,
            message,
            tag,
        } => add(
            ctx,
            store,
            &path,
            AddOptions {
                name,
                message,
                tag,
                author: None,
            },
        ),
        DataCommand::Status {
            path,
            name,
            against,
        } => status(ctx, store, &path, name.as_deref(), against.as_deref()),
        DataCommand::List => list(ctx, store),
        DataCommand::Log { name } => log(ctx, store, &name),
        DataCommand::Pin(a) => super::remote::pin(ctx, store, a),
        DataCommand::Get(a) => super::remote::get(ctx, store, a, false),
        DataCommand::Import(a) => super::remote::get(ctx, store, a, true),
        DataCommand::Push(a) => super::remote::push(ctx, store, a),
        DataCommand::Pull(a) => super::remote::pull(ctx, store, a, true),
        DataCommand::Fetch(a) => super::remote::pull(ctx, store, a, false),
        DataCommand::Ls {
            target,
            remote: Some(remote),
            ..
        } => {
            let name = (!remote.is_empty()).then_some(remote.as_str());
            super::remote::ls(ctx, name, target.as_deref())
        }
        DataCommand::Ls {
            target,
            subpath,
            recursive,
            remote: None,
        } => ls(ctx, store, target.as_deref(), subpath.as_deref(), recursive),
        DataCommand::Diff { a, b } => diff(ctx, store, &a, &b),
        DataCommand::Tag {
            target,
            tag,
            force,
            delete,
        } => tag_or_untag(ctx, store, &target, &tag, force, delete),
        DataCommand::Checkout(a) => checkout(ctx, store, a),
        DataCommand::Rm { name } => rm(ctx, store, &name),
        DataCommand::Fsck => fsck(ctx, store),
        DataCommand::Gc { dry_run } => gc(ctx, store, dry_run),
    }
}

fn add(ctx: &Ctx, store: &Store, path: &Path, opts: AddOptions) -> anyhow::Result<ExitCode> {
    let r = store.add(path, &opts, &Bar::new())?;
    if ctx.json {
        output::json(&r)?;
    } else if r.created {
        println!("{}@{}  new version", r.dataset, r.version);
        println!(
            "  {} files, {}, {} newly stored ({} files read)",
            r.files,
            output::bytes(r.bytes),
            output::bytes(r.new_bytes),
            r.hashed_files
        );
    } else {
        println!(
            "{}@{}  unchanged (same as the latest version)",
            r.dataset, r.version
        );
    }
    if let (Some(t), false) = (&r.tag, ctx.json) {
        println!("  tagged {t}");
    }
    Ok(ExitCode::SUCCESS)
}

fn status(
    ctx: &Ctx,
    store: &Store,
    path: &Path,
    name: Option<&str>,
    against: Option<&str>,
) -> anyhow::Result<ExitCode> {
    // A watch that is sure of what changed answers without a walk.
    let recorded = match against {
        None => trainyard::watch::status::from_record(&ctx.home, store, path, name),
        Some(_) => None,
    };
    let r = match recorded {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the watch record could not answer; walking");
            store.status(path, name, against, &Bar::new())?
        }
        None => store.status(path, name, against, &Bar::new())?,
    };
    if ctx.json {
        output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    match r.against {
        None if r.other_datasets.is_empty() => {
            println!("{}: not yet versioned; everything is new", r.dataset)
        }
        None => println!(
            "{}: not yet versioned; everything is new (this store has {}: pass \
             --name NAME to compare with one)",
            r.dataset,
            r.other_datasets.join(", ")
        ),
        Some(v) => println!("{} against {}:", r.dataset, v.short()),
    }
    print_changes(&r.changes);
    if r.changes.is_empty() {
        println!("  up to date ({} files)", r.files);
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Ctx, store: &Store) -> anyhow::Result<ExitCode> {
    let ds = store.datasets()?;
    if ctx.json {
        output::json(&ds)?;
    } else if ds.is_empty() {
        println!("no datasets yet: `trainyard data add PATH` makes one");
    } else {
        println!(
            "{:<24} {:>8} {:>10} {:>10}  LATEST",
            "NAME", "VERSIONS", "FILES", "SIZE"
        );
        for d in ds {
            println!(
                "{:<24} {:>8} {:>10} {:>10}  {}",
                d.name,
                d.versions,
                d.files,
                output::bytes(d.bytes),
                d.latest.map(|v| v.short()).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn log(ctx: &Ctx, store: &Store, name: &str) -> anyhow::Result<ExitCode> {
    let vs = store.log(name)?;
    if ctx.json {
        output::json(&vs)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Messages, authors and sources may come from a remote:
    // escaped here, exact in --json.
    for v in vs {
        let tags = if v.tags.is_empty() {
            String::new()
        } else {
            let t: Vec<String> = v.tags.iter().map(|t| output::clean(t)).collect();
            format!(" ({})", t.join(", "))
        };
        println!("version {}{tags}", v.id);
        println!(
            "  date:    {}   author: {}",
            output::time(v.created_ns),
            output::clean(&v.author)
        );
        println!(
            "  content: {} files, {} ({} new)",
            v.files,
            output::bytes(v.bytes),
            output::bytes(v.new_bytes)
        );
        if let Some(s) = &v.source {
            println!("  from:    {}", output::clean(s));
        }
        if !v.message.is_empty() {
            println!("\n    {}", output::clean(&v.message));
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(
    ctx: &Ctx,
    store: &Store,
    target: Option<&str>,
    subpath: Option<&str>,
    recursive: bool,
) -> anyhow::Result<ExitCode> {
    let Some(target) = target else {
        anyhow::bail!("name a version (NAME or NAME@REF), or pass --remote to list a remote");
    };
    let (_, listed) = store.ls(&parse_ref(target)?, subpath, recursive)?;
    if ctx.json {
        let v: Vec<_> = listed
            .iter()
            .map(|e| json!({"path": e.path, "kind": e.kind, "exec": e.exec, "size": e.size, "id": e.id}))
            .collect();
        output::json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in listed {
        let id = e.id.map_or_else(|| "-".to_string(), |id| id.short());
        let name = if e.kind == Kind::Dir {
            format!("{}/", e.path)
        } else {
            e.path
        };
        println!(
            "{:<7} {:>10}  {:<12}  {}",
            e.kind.as_str(),
            output::bytes(e.size),
            id,
            name
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(ctx: &Ctx, store: &Store, a: &str, b: &str) -> anyhow::Result<ExitCode> {
    let (ra, rb) = (parse_ref(a)?, parse_ref(b)?);
    let (ia, ib, changes) = store.diff(&ra, &rb)?;
    if ctx.json {
        output::json(&json!({"a": ia, "b": ib, "changes": changes}))?;
    } else {
        println!("{} ({}) → {} ({})", ra, ia.short(), rb, ib.short());
        print_changes(&changes);
        if changes.is_empty() {
            println!("  identical");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tag_or_untag(
    ctx: &Ctx,
    store: &Store,
    target: &str,
    tag: &str,
    force: bool,
    delete: bool,
) -> anyhow::Result<ExitCode> {
    let r = parse_ref(target)?;
    if delete {
        store.untag(&r.dataset, tag)?;
        if ctx.json {
            output::json(&json!({"dataset": r.dataset, "tag": tag, "deleted": true}))?;
        } else {
            println!("deleted tag {tag} of {}", r.dataset);
        }
    } else {
        let v = store.tag(&r, tag, force)?;
        if ctx.json {
            output::json(&json!({"dataset": r.dataset, "tag": tag, "version": v.id}))?;
        } else {
            println!("{}@{tag} → {}", r.dataset, v.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn checkout(ctx: &Ctx, store: &Store, a: CheckoutArgs) -> anyhow::Result<ExitCode> {
    let r = parse_ref(&a.target)?;
    let link = match a.link {
        Link::Auto => LinkMode::Auto,
        Link::Reflink => LinkMode::Reflink,
        Link::Hardlink => LinkMode::Hardlink,
        Link::Copy => LinkMode::Copy,
    };
    let rep = store.checkout(
        &r,
        &a.dir,
        CheckoutOptions {
            link,
            force: a.force,
        },
        &Bar::new(),
    )?;
    if ctx.json {
        output::json(&rep)?;
    } else {
        println!(
            "{}@{} → {}",
            rep.dataset,
            rep.version.short(),
            rep.dir.display()
        );
        println!(
            "  {} written ({}, {}), {} unchanged, {} removed",
            rep.written,
            output::bytes(rep.bytes),
            rep.link.as_str(),
            rep.unchanged,
            rep.removed
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(ctx: &Ctx, store: &Store, name: &str) -> anyhow::Result<ExitCode> {
    let n = store.remove_dataset(name)?;
    if ctx.json {
        output::json(&json!({"dataset": name, "removed_versions": n}))?;
    } else {
        println!("removed dataset {name} ({n} versions); `trainyard data gc` reclaims its space");
    }
    Ok(ExitCode::SUCCESS)
}

fn fsck(ctx: &Ctx, store: &Store) -> anyhow::Result<ExitCode> {
    let r = store.fsck(&Bar::new())?;
    if ctx.json {
        output::json(&r)?;
    } else {
        for p in &r.problems {
            println!("{p}");
        }
        println!(
            "checked {} loose objects, {} packs ({} objects), {} in all, and {} versions: {}",
            r.objects,
            r.packs,
            r.packed_objects,
            output::bytes(r.bytes),
            r.manifests,
            if r.problems.is_empty() {
                "no problems".to_string()
            } else {
                format!("{} problem(s)", r.problems.len())
            }
        );
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn gc(ctx: &Ctx, store: &Store, dry_run: bool) -> anyhow::Result<ExitCode> {
    let r = store.gc(dry_run, &Bar::new())?;
    if ctx.json {
        output::json(&r)?;
    } else {
        println!(
            "{} {} unreferenced objects ({}), kept {}; {} leftover temp files",
            if dry_run { "would delete" } else { "deleted" },
            r.deleted,
            output::bytes(r.deleted_bytes),
            r.kept,
            r.temp_files
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_changes(changes: &[Change]) {
    for c in changes {
        let (mark, size) = match c.change {
            ChangeKind::Added => ("added:   ", c.new.as_ref().map(|e| e.size)),
            ChangeKind::Deleted => ("deleted: ", c.old.as_ref().map(|e| e.size)),
            ChangeKind::Modified => ("modified:", c.new.as_ref().map(|e| e.size)),
        };
        println!(
            "  {mark} {}  ({})",
            c.path,
            output::bytes(size.unwrap_or(0))
        );
    }
    if !changes.is_empty() {
        let n = |k| changes.iter().filter(|c| c.change == k).count();
        println!(
            "  {} added, {} modified, {} deleted",
            n(ChangeKind::Added),
            n(ChangeKind::Modified),
            n(ChangeKind::Deleted)
        );
    }
}
