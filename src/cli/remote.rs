//! `trainyard remote …` (named remotes) and the remote side of `data`:
//! push, pull, fetch and `ls --remote`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use trainyard::remote::registry::{self, GetOptions, PinOptions};
use trainyard::remote::sync::{self, PushOptions, TagMove};
use trainyard::remote::{Remote, RemoteConfig, Remotes};
use trainyard::store::{CheckoutOptions, DatasetRef, LinkMode, Store};

use super::output::{self, Bar};
use super::Ctx;

/// Named dataset remotes (S3 buckets, S3-compatible servers, directories).
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Add a remote. Credentials are not stored: they come from
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE and
    /// ~/.aws/credentials when the remote is used.
    ///
    /// Examples: trainyard remote add lab s3://datasets/trainyard --endpoint http://nas:9000 --allow-http --default;
    /// trainyard remote add nas file:///mnt/nas/trainyard
    Add {
        /// Remote name.
        name: String,
        /// s3://bucket/prefix or file:///absolute/path.
        url: String,
        /// Endpoint of an S3-compatible server (MinIO, Ceph, …); requests are path-style.
        #[arg(long)]
        endpoint: Option<String>,
        /// Region [default: AWS_REGION, the AWS profile's region, else us-east-1].
        #[arg(long)]
        region: Option<String>,
        /// Allow a plain-HTTP endpoint.
        #[arg(long)]
        allow_http: bool,
        /// Make it the default remote.
        #[arg(long)]
        default: bool,
    },
    /// List remotes.
    List,
    /// Remove a remote (nothing on the remote is deleted).
    Remove {
        /// Remote name.
        name: String,
    },
}

/// `data push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// NAME or NAME@REF to push [default with --all: every version of every dataset].
    target: Option<String>,
    /// Push every version of every dataset.
    #[arg(long, conflicts_with = "target")]
    all: bool,
    /// The remote [default: the default remote].
    #[arg(long)]
    remote: Option<String>,
    /// Uploads in flight.
    #[arg(long, short = 'j', default_value_t = 8)]
    jobs: usize,
    /// Move remote tags even when someone else moved them since you last synced.
    #[arg(long)]
    force_tags: bool,
}

/// `data pull` / `data fetch`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// NAME or NAME@REF (REF: a tag, a version id prefix, or latest).
    target: String,
    /// The remote [default: the default remote].
    #[arg(long)]
    remote: Option<String>,
    /// Downloads in flight.
    #[arg(long, short = 'j', default_value_t = 8)]
    jobs: usize,
    /// Where `pull` checks the version out [default: ./NAME].
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

/// `data pin`.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// NAME@REF of a version already pushed to the remote.
    target: String,
    /// The pointer file to write [default: ./NAME.trainyard.toml].
    #[arg(long)]
    file: Option<PathBuf>,
    /// The remote the pointer names [default: the default remote].
    #[arg(long)]
    remote: Option<String>,
    /// Commit the pointer (with -m).
    #[arg(long, requires = "message")]
    commit: bool,
    /// Commit message.
    #[arg(short, long)]
    message: Option<String>,
    /// Tag the commit, e.g. imagenet-v2 (needs --commit).
    #[arg(long, requires = "commit")]
    git_tag: Option<String>,
}

/// `data get` / `data import`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The registry: a git URL or a local path.
    repo: String,
    /// The pointer file's path in the repository.
    pointer: String,
    /// Branch, tag or commit [default: HEAD].
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// Where to check the version out [default: ./NAME].
    #[arg(short = 'o', long)]
    out: Option<PathBuf>,
    /// Downloads in flight.
    #[arg(long, short = 'j', default_value_t = 8)]
    jobs: usize,
}

pub fn pin(ctx: &Ctx, store: &Store, a: PinArgs) -> anyhow::Result<ExitCode> {
    let r: DatasetRef = a.target.parse()?;
    let opts = PinOptions {
        remote: a.remote.as_deref(),
        file: a.file.as_deref(),
        message: if a.commit { a.message.as_deref() } else { None },
        git_tag: a.git_tag.as_deref(),
    };
    let (p, v) = rt()?.block_on(registry::pin_version(store, &ctx.home, &r, opts))?;
    if ctx.json {
        output::json(&p)?;
    } else {
        println!("{} → {}@{} (staged)", p.repo_path, r.dataset, v.id.short());
        if let Some(c) = &p.commit {
            println!("  committed {}", &c[..12]);
        }
        if let Some(t) = &p.git_tag {
            println!("  tagged {t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn get(ctx: &Ctx, store: &Store, a: GetArgs, import: bool) -> anyhow::Result<ExitCode> {
    let opts = GetOptions {
        repo: &a.repo,
        rev: &a.rev,
        pointer: &a.pointer,
        out: a.out.as_deref(),
        jobs: a.jobs,
        import,
    };
    let got = rt()?.block_on(registry::get(store, &ctx.home, opts, &Bar::new()))?;
    if ctx.json {
        output::json(&serde_json::json!({
            "pointer": got.pointer,
            "commit": got.commit,
            "fetch": got.fetch,
            "checkout": got.checkout,
        }))?;
    } else {
        println!(
            "{}@{} from {} → {}",
            got.pointer.dataset,
            &got.pointer.version[..12],
            got.provenance,
            got.checkout.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn remotes(ctx: &Ctx) -> anyhow::Result<Remotes> {
    Ok(Remotes::load(&ctx.home.remotes_path())?)
}

fn open(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<Remote> {
    Ok(Remote::named(&ctx.home, name)?)
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?)
}

pub fn remote(ctx: &Ctx, cmd: RemoteCommand) -> anyhow::Result<ExitCode> {
    let mut r = remotes(ctx)?;
    match cmd {
        RemoteCommand::Add {
            name,
            url,
            endpoint,
            region,
            allow_http,
            default,
        } => {
            r.add(
                &name,
                RemoteConfig {
                    url,
                    endpoint,
                    region,
                    allow_http,
                },
                default,
            )?;
            if !ctx.json {
                println!("remote {name} added");
            }
        }
        RemoteCommand::List => {
            let default = r.default_name().map(str::to_string);
            if ctx.json {
                let v: Vec<serde_json::Value> = r
                    .list()
                    .map(|(n, c)| serde_json::json!({"name": n, "default": default.as_deref() == Some(n.as_str()), "config": c}))
                    .collect();
                output::json(&v)?;
            } else {
                for (n, c) in r.list() {
                    let mark = if default.as_deref() == Some(n.as_str()) {
                        "*"
                    } else {
                        " "
                    };
                    let ep = c
                        .endpoint
                        .as_deref()
                        .map(|e| format!("  (endpoint {e})"))
                        .unwrap_or_default();
                    println!("{mark} {n:<12} {}{ep}", c.url);
                }
            }
        }
        RemoteCommand::Remove { name } => {
            r.remove(&name)?;
            if !ctx.json {
                println!("remote {name} removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(ctx: &Ctx, store: &Store, a: PushArgs) -> anyhow::Result<ExitCode> {
    let remote = open(ctx, a.remote.as_deref())?;
    let refs: Vec<DatasetRef> = match (&a.target, a.all) {
        (Some(t), _) => vec![t.parse()?],
        (None, true) => {
            let mut v = Vec::new();
            for d in store.datasets()? {
                for ver in store.log(&d.name)? {
                    v.push(DatasetRef {
                        dataset: d.name.clone(),
                        reference: Some(ver.id.to_hex()),
                    });
                }
            }
            v
        }
        (None, false) => anyhow::bail!("name a dataset (NAME or NAME@REF) or pass --all"),
    };
    let report = rt()?.block_on(sync::push(
        store,
        &ctx.home,
        &remote,
        &refs,
        PushOptions {
            jobs: a.jobs,
            force_tags: a.force_tags,
        },
        &Bar::new(),
    ))?;
    let conflicts = report
        .tags
        .iter()
        .filter(|t| t.outcome == TagMove::Conflict)
        .count();
    if ctx.json {
        output::json(&report)?;
    } else {
        let new = report.versions.iter().filter(|v| v.new).count();
        println!(
            "{}: {} versions ({} new), {} objects in {} packs + loose, {} sent, {} requests, {:.1}s",
            report.remote,
            report.versions.len(),
            new,
            report.objects_sent,
            report.packs_sent,
            output::bytes(report.bytes_sent),
            report.requests,
            report.seconds
        );
        for t in &report.tags {
            match t.outcome {
                TagMove::Set => println!("  tag {}@{} → {}", t.dataset, t.tag, &t.version[..12]),
                TagMove::Conflict => {
                    eprintln!("error: {}", t.detail.as_deref().unwrap_or("tag conflict"))
                }
                TagMove::Unchanged => {}
            }
        }
    }
    Ok(if conflicts > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn pull(ctx: &Ctx, store: &Store, a: PullArgs, checkout: bool) -> anyhow::Result<ExitCode> {
    let remote = open(ctx, a.remote.as_deref())?;
    let r: DatasetRef = a.target.parse()?;
    let report = rt()?.block_on(sync::fetch(
        store,
        &ctx.home,
        &remote,
        &r,
        a.jobs,
        None,
        &Bar::new(),
    ))?;
    let mut out = serde_json::to_value(&report)?;
    if checkout {
        let dir = a.out.clone().unwrap_or_else(|| PathBuf::from(&r.dataset));
        let rep = store.checkout(
            &DatasetRef {
                dataset: r.dataset.clone(),
                reference: Some(report.version.clone()),
            },
            &dir,
            CheckoutOptions {
                link: LinkMode::Auto,
                force: false,
            },
            &Bar::new(),
        )?;
        out["checkout"] = serde_json::to_value(&rep)?;
        if !ctx.json {
            println!(
                "{}@{} → {}",
                rep.dataset,
                rep.version.short(),
                rep.dir.display()
            );
        }
    }
    if ctx.json {
        output::json(&out)?;
    } else {
        println!(
            "{}: {}@{} {}: {} objects, {} fetched, {} requests, {:.1}s",
            report.remote,
            report.dataset,
            &report.version[..12],
            if report.new_version {
                "new"
            } else {
                "already here"
            },
            report.objects_fetched,
            output::bytes(report.bytes_fetched),
            report.requests,
            report.seconds
        );
        for t in &report.tags_kept {
            eprintln!("note: tag {}@{t} on the remote names this version; the local tag names another and was kept", report.dataset);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ls(ctx: &Ctx, name: Option<&str>, dataset: Option<&str>) -> anyhow::Result<ExitCode> {
    let remote = open(ctx, name)?;
    let mut all = rt()?.block_on(sync::list(&remote, &ctx.home))?;
    if let Some(d) = dataset {
        let d = d.split('@').next().unwrap_or(d);
        all.retain(|x| x.name == d);
    }
    if ctx.json {
        output::json(&all)?;
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("remote {} holds no datasets", remote.name);
    }
    for d in &all {
        println!("{}  ({} versions)", d.name, d.versions.len());
        for v in &d.versions {
            let tags: Vec<&str> = d
                .tags
                .iter()
                .filter(|(_, id)| **id == v.id)
                .map(|(t, _)| t.as_str())
                .collect();
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", tags.join(", "))
            };
            println!(
                "  {}  {}  {} files, {}  {}{tags}",
                &v.id[..12],
                output::time(v.created_ns),
                v.files,
                output::bytes(v.bytes),
                output::clean(&v.message)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
