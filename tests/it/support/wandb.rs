//! A W&B-compatible test server: enough of the wandb/local protocol for the
//! real `wandb sync` (0.31.0, Go wandb-core) and for Trainyard's own sync
//! client, served on 127.0.0.1 from a thread of the test process. It stores
//! what it receives so tests can inspect it ([`WandbServer::runs`]).
//!
//! What it speaks (`/work/shared/research/wandb-format-and-sync.md` §3–4):
//!
//! - `POST /graphql`, Basic auth (`api:<key>`): `UpsertBucket`,
//!   `CreateRunFiles`, `ServerFeaturesQuery`, `Viewer`, `RunResumeStatus`,
//!   `RunState` (our client's verification query) and `DeleteRun`,
//!   dispatched by `operationName` (or the name in the query text). Answers
//!   are a superset of the fields any selection asks for; selections are not
//!   parsed. Unknown operations answer a GraphQL error and are logged as
//!   `graphql ? <query>`, so tests learn what a client sent.
//! - `POST /files/{entity}/{project}/{run}/file_stream`, Basic auth: lines
//!   stored positionally per file, `uploaded`, `complete`/`exitcode`.
//! - `PUT /local-files/{entity}/{project}/{run}/{name}?X-Amz-Signature=…`:
//!   the presigned upload URLs handed out by `CreateRunFiles`, like
//!   wandb/local's MinIO. They refuse an `Authorization` header (as MinIO
//!   does) and require the returned `uploadHeaders`.
//!
//! Anything a correct client should never do (a gap in a file_stream file,
//! an upload with credentials, a PUT to a URL never handed out, …) is
//! answered the way the real server would and also recorded in the run's
//! [`StoredRun::protocol_errors`] (or, when no run is known, in
//! [`WandbServer::protocol_errors`]).
//!
//! Faults for retry and crash tests: [`WandbServer::fail_next`] answers an
//! error without applying the request; [`WandbServer::stall_after`] applies
//! requests but never answers them (the client never hears back).
//!
//! It is also `examples/wandb_server.rs`, a program for benchmarks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::IntoFuture;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use base64::Engine as _;
use md5::Digest as _;
use serde_json::{json, Value};

/// The API key the server accepts by default. wandb validates the format
/// client-side: an optional `prefix-`, then at least 40 of `[A-Za-z0-9_]`.
pub const API_KEY: &str = "local-trainyard_test_api_key_0123456789abcdefghijkl";

/// The entity used when a request leaves the entity empty or null (the
/// "default entity of the API key", learned by clients from the answers).
pub const DEFAULT_ENTITY: &str = "lab";

/// The project used when a request leaves the project empty or null.
pub const DEFAULT_PROJECT: &str = "uncategorized";

/// The header (`Key: Value`) that `CreateRunFiles` tells clients to send
/// with every upload PUT; an upload without it is refused.
pub const UPLOAD_HEADER: (&str, &str) = ("X-Trainyard-Upload", "1");

/// How to start a server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The key GraphQL and file_stream requests must carry.
    pub api_key: String,
    /// Base URL put into upload URLs; `None` is the server's own URL. Tests
    /// set e.g. `http://127.0.0.1:9` to simulate wandb/local's `HOST`
    /// misconfiguration (upload URLs nobody answers).
    pub upload_base: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            port: 0,
            api_key: API_KEY.to_string(),
            upload_base: None,
        }
    }
}

/// The kinds of request, for counting and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `POST /graphql`.
    Graphql,
    /// `POST /files/…/file_stream`.
    FileStream,
    /// `PUT /local-files/…` (presigned uploads).
    Upload,
    /// Every request, including ones to paths the server does not know.
    Any,
}

impl Kind {
    fn matches(self, actual: Kind) -> bool {
        self == Kind::Any || self == actual
    }
}

/// What the server holds about one run (clones are handed out).
#[derive(Clone, Debug, Default)]
pub struct StoredRun {
    pub entity: String,
    pub project: String,
    /// The run id (W&B's `name`).
    pub name: String,
    /// The storage id, `base64("Run:v1:<name>:<project>:<entity>")` as W&B
    /// does; `DeleteRun` and `UpsertBucket(id:)` take it.
    pub id: String,
    /// The display name; the run id when no upsert ever carried one.
    pub display_name: String,
    pub notes: String,
    pub group: String,
    pub job_type: String,
    pub host: String,
    pub program: String,
    pub tags: Vec<String>,
    /// The parsed `config` of the last UpsertBucket that carried one (W&B
    /// shape `{"key":{"value":v}}`): a later config replaces the stored
    /// one. A config that is not strict JSON is kept as a JSON string.
    pub config: Value,
    /// How many UpsertBucket requests applied to this run.
    pub upserts: u64,
    /// `wandb-history.jsonl` lines, by position (raw extended JSON).
    pub history: Vec<String>,
    /// `wandb-events.jsonl` lines, by position.
    pub events: Vec<String>,
    /// `output.log` lines, by position.
    pub log: Vec<String>,
    /// The last `wandb-summary.json` line of a file_stream (or the
    /// `summaryMetrics` of an UpsertBucket, whichever came last).
    pub summary: Option<String>,
    /// Union of the file_stream `uploaded` lists, in first-seen order.
    pub uploaded: Vec<String>,
    /// Bytes received by upload PUTs, by file name.
    pub files: BTreeMap<String, Vec<u8>>,
    /// A file_stream request with `complete: true` arrived.
    pub complete: bool,
    pub exitcode: Option<i64>,
    /// `running` until a file_stream with `complete: true`, then `finished`
    /// (exit code 0) or `failed`.
    pub state: String,
    /// Things a correct client never does, one line each.
    pub protocol_errors: Vec<String>,
}

/// A running server; stops when dropped.
pub struct WandbServer {
    /// `http://127.0.0.1:PORT`, what clients put in `WANDB_BASE_URL`.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WandbServer {
    /// A server with [`Options::default`].
    pub fn start() -> WandbServer {
        WandbServer::start_with(Options::default())
    }

    /// A server on 127.0.0.1:`opts.port` (0 = any free port).
    pub fn start_with(opts: Options) -> WandbServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", opts.port))
            .unwrap_or_else(|e| panic!("wandb test server: bind 127.0.0.1:{}: {e}", opts.port));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let upload_base = opts
            .upload_base
            .clone()
            .unwrap_or_else(|| url.clone())
            .trim_end_matches('/')
            .to_string();
        let shared = Arc::new(Shared {
            api_key: opts.api_key,
            upload_base,
            inner: Mutex::new(Inner::default()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("wandb-test-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        r = axum::serve(listener, app).into_future() => {
                            if let Err(e) = r {
                                eprintln!("wandb test server stopped: {e}");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
                // Stalled handlers never finish: drop them instead of waiting.
                rt.shutdown_background();
            })
            .expect("spawn server thread");
        WandbServer {
            url,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// All live (not deleted) runs, sorted by (entity, project, name).
    pub fn runs(&self) -> Vec<StoredRun> {
        self.shared
            .lock()
            .runs
            .values()
            .map(|r| r.run.clone())
            .collect()
    }

    /// One live run.
    pub fn run(&self, entity: &str, project: &str, name: &str) -> Option<StoredRun> {
        self.shared
            .lock()
            .runs
            .get(&key(entity, project, name))
            .map(|r| r.run.clone())
    }

    /// The next `n` requests of `kind` answer HTTP `status` without being
    /// applied (replaces an earlier `fail_next` of the same kind).
    pub fn fail_next(&self, kind: Kind, n: u64, status: u16) {
        let mut g = self.shared.lock();
        g.fail.retain(|f| f.kind != kind);
        if n > 0 {
            g.fail.push(FailRule {
                kind,
                left: n,
                status,
            });
        }
    }

    /// After `n` more requests of `kind` (answered normally), further ones
    /// are applied but never answered: the handler waits forever. For
    /// kill -9 tests: the request landed, the client never heard back.
    /// `n == u64::MAX` turns it off, like [`WandbServer::clear_stall`].
    pub fn stall_after(&self, kind: Kind, n: u64) {
        let mut g = self.shared.lock();
        g.stall.retain(|s| s.kind != kind);
        if n != u64::MAX {
            g.stall.push(StallRule { kind, left: n });
        }
    }

    /// Turns every stall off (requests already stalled stay stalled).
    pub fn clear_stall(&self) {
        self.shared.lock().stall.clear();
    }

    /// Requests received of `kind`, including refused, failed and stalled ones.
    pub fn count(&self, kind: Kind) -> u64 {
        let g = self.shared.lock();
        match kind {
            Kind::Any => g.counts.values().sum::<u64>() + g.other,
            k => g.counts.get(&k).copied().unwrap_or(0),
        }
    }

    /// GraphQL requests by operation name (`UpsertBucket`, …; `?` for
    /// requests without one).
    pub fn count_op(&self, op: &str) -> u64 {
        self.shared.lock().ops.get(op).copied().unwrap_or(0)
    }

    /// Forgets the counts (not the log, the runs or the faults).
    pub fn reset_counts(&self) {
        let mut g = self.shared.lock();
        g.counts.clear();
        g.ops.clear();
        g.other = 0;
    }

    /// The counts as JSON: `{"graphql":n,"file_stream":n,"upload":n,
    /// "any":n,"ops":{"UpsertBucket":n,…}}` (what the example writes).
    pub fn counters(&self) -> Value {
        json!({
            "graphql": self.count(Kind::Graphql),
            "file_stream": self.count(Kind::FileStream),
            "upload": self.count(Kind::Upload),
            "any": self.count(Kind::Any),
            "ops": self.shared.lock().ops.clone(),
        })
    }

    /// One line per request, in arrival order: `graphql UpsertBucket`,
    /// `file_stream lab/proj/run1`, `upload lab/proj/run1/config.yaml`,
    /// `graphql ? <first 80 chars of the query>` for unknown operations,
    /// `? METHOD /path` for unknown paths.
    pub fn log(&self) -> Vec<String> {
        self.shared.lock().log.clone()
    }

    /// Protocol errors not tied to a known run (e.g. a PUT to a URL that was
    /// never handed out, for a run that does not exist).
    pub fn protocol_errors(&self) -> Vec<String> {
        self.shared.lock().orphan_errors.clone()
    }

    /// Stops serving (connections in flight are dropped); idempotent.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WandbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real `wandb` CLI, if installed: `$TRAINYARD_WANDB`, else
/// `<repo>/.venv-wandb/bin/wandb` (created with `python3 -m venv
/// .venv-wandb && .venv-wandb/bin/pip install wandb==0.31.0`).
pub fn wandb_cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRAINYARD_WANDB").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-wandb/bin/wandb");
    venv.exists().then_some(venv)
}

/// The `Authorization` header value wandb clients send for `key`.
pub fn basic_auth(key: &str) -> String {
    format!("Basic {}", b64(format!("api:{key}").as_bytes()))
}

/// A minimal HTTP/1.1 request to `url` (`http://host:port`): `target` is
/// the path and query. Returns (status, body); status 0 when the server
/// could not be reached or did not answer within `timeout`.
pub fn request(
    url: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> (u16, String) {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(timeout)).ok();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut resp = Vec::new();
    if s.read_to_end(&mut resp).is_err() && resp.is_empty() {
        return (0, String::new());
    }
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// POST a GraphQL operation with the default key; (status, parsed body).
pub fn graphql(url: &str, op: &str, query: &str, variables: Value) -> (u16, Value) {
    let body = json!({"query": query, "variables": variables, "operationName": op});
    let auth = basic_auth(API_KEY);
    let (status, text) = request(
        url,
        "POST",
        "/graphql",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
        Duration::from_secs(30),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------
// State

struct Shared {
    api_key: String,
    upload_base: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type RunKey = (String, String, String);

fn key(entity: &str, project: &str, name: &str) -> RunKey {
    (entity.to_string(), project.to_string(), name.to_string())
}

#[derive(Default)]
struct Inner {
    runs: BTreeMap<RunKey, RunRec>,
    /// Names of deleted runs: upserting one again is a 409.
    tombstones: BTreeSet<RunKey>,
    /// (entity, project) pairs that exist.
    projects: BTreeSet<(String, String)>,
    /// `entity/project/run/name` → signatures handed out for it.
    issued: HashMap<String, HashSet<String>>,
    counts: HashMap<Kind, u64>,
    other: u64,
    ops: BTreeMap<String, u64>,
    log: Vec<String>,
    orphan_errors: Vec<String>,
    fail: Vec<FailRule>,
    stall: Vec<StallRule>,
}

struct RunRec {
    run: StoredRun,
    created_at: String,
    updated_at: String,
}

struct FailRule {
    kind: Kind,
    left: u64,
    status: u16,
}

struct StallRule {
    kind: Kind,
    left: u64,
}

/// What to do with a request after counting it.
enum Gate {
    Pass,
    Fail(u16),
    /// Apply, then never answer.
    Stall,
}

impl Inner {
    /// Counts and logs a request of `kind` and decides its fate.
    fn admit(&mut self, kind: Kind, line: String) -> Gate {
        *self.counts.entry(kind).or_default() += 1;
        self.log.push(line);
        if let Some(f) = self
            .fail
            .iter_mut()
            .find(|f| f.kind.matches(kind) && f.left > 0)
        {
            f.left -= 1;
            return Gate::Fail(f.status);
        }
        if let Some(s) = self.stall.iter_mut().find(|s| s.kind.matches(kind)) {
            if s.left == 0 {
                return Gate::Stall;
            }
            s.left -= 1;
        }
        Gate::Pass
    }

    fn find_by_id(&self, id: &str) -> Option<RunKey> {
        self.runs
            .iter()
            .find(|(_, r)| r.run.id == id)
            .map(|(k, _)| k.clone())
    }
}

// ---------------------------------------------------------------------------
// HTTP

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/graphql", post(graphql_handler))
        .route(
            "/files/{entity}/{project}/{run}/file_stream",
            post(file_stream_handler),
        )
        .route("/local-files/{*rest}", put(upload_handler))
        .fallback(fallback_handler)
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn gql_error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"errors": [{"message": message}]}))
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("Content-Type", "application/xml")],
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource></Resource><RequestId>trainyard</RequestId></Error>"
        ),
    )
        .into_response()
}

fn injected(kind: Kind, status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let msg = format!("injected failure (HTTP {})", status.as_u16());
    match kind {
        Kind::Upload => s3_error(status, "InternalError", &msg),
        _ => gql_error(status, &msg),
    }
}

/// Never answers: the request was applied, the client never hears back.
async fn stall() -> Response {
    std::future::pending::<Response>().await
}

/// Checks Basic auth: any user name, the password must be the key.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(enc) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(dec) = base64::engine::general_purpose::STANDARD.decode(enc.trim()) else {
        return false;
    };
    let dec = String::from_utf8_lossy(&dec);
    dec.split_once(':')
        .is_some_and(|(_, password)| password == shared.api_key)
}

fn unauthorized() -> Response {
    gql_error(StatusCode::UNAUTHORIZED, "user is not logged in")
}

async fn fallback_handler(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    {
        let mut g = shared.lock();
        g.other += 1;
        g.log.push(format!("? {method} {}", uri.path()));
    }
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": format!("no route for {method} {}", uri.path())}),
    )
}

// ---------------------------------------------------------------------------
// GraphQL

async fn graphql_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let query = parsed
        .as_ref()
        .and_then(|b| b.get("query"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let op = parsed
        .as_ref()
        .and_then(|b| b.get("operationName"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| operation_name(&query));
    let variables = parsed
        .as_ref()
        .and_then(|b| b.get("variables"))
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let known = op.as_deref().is_some_and(|o| OPERATIONS.contains(&o));
    let line = if known {
        format!("graphql {}", op.as_deref().unwrap_or_default())
    } else if parsed.is_none() {
        format!(
            "graphql ? <not JSON: {}>",
            preview(&String::from_utf8_lossy(&body))
        )
    } else {
        format!("graphql ? {}", preview(&query))
    };
    let gate = {
        let mut g = shared.lock();
        *g.ops
            .entry(op.clone().unwrap_or_else(|| "?".into()))
            .or_default() += 1;
        g.admit(Kind::Graphql, line)
    };
    if let Gate::Fail(status) = gate {
        return injected(Kind::Graphql, status);
    }
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let response = match (parsed.is_some(), op.as_deref()) {
        (false, _) => gql_error(StatusCode::BAD_REQUEST, "request body is not JSON"),
        (true, Some(op)) if known => dispatch(&shared, op, &variables),
        (true, op) => gql_error(
            StatusCode::OK,
            &format!(
                "unknown operation {} (the trainyard test server does not implement it)",
                op.unwrap_or("<anonymous>")
            ),
        ),
    };
    if let Gate::Stall = gate {
        return stall().await;
    }
    response
}

/// The operations [`dispatch`] answers.
const OPERATIONS: &[&str] = &[
    "UpsertBucket",
    "CreateRunFiles",
    "ServerFeaturesQuery",
    "Viewer",
    "RunResumeStatus",
    "RunState",
    "DeleteRun",
];

fn dispatch(shared: &Shared, op: &str, vars: &Value) -> Response {
    match op {
        "UpsertBucket" => upsert_bucket(shared, vars),
        "CreateRunFiles" => create_run_files(shared, vars),
        "ServerFeaturesQuery" => json_response(
            StatusCode::OK,
            json!({"data": {"serverInfo": {"features": []}}}),
        ),
        "Viewer" => json_response(
            StatusCode::OK,
            json!({"data": {"viewer": {
                "id": b64(format!("User:{DEFAULT_ENTITY}").as_bytes()),
                "entity": DEFAULT_ENTITY,
                "username": DEFAULT_ENTITY,
                "email": format!("{DEFAULT_ENTITY}@localhost"),
                "admin": false,
                "flags": null,
                "teams": {"edges": []},
            }}}),
        ),
        "RunResumeStatus" | "RunState" => run_query(shared, vars, op == "RunState"),
        "DeleteRun" => delete_run(shared, vars),
        _ => gql_error(StatusCode::OK, &format!("unknown operation {op}")),
    }
}

/// The operation name in a query text: `mutation Foo(…` / `query Foo {…`.
fn operation_name(query: &str) -> Option<String> {
    let mut rest = query.trim_start();
    while let Some(comment) = rest.strip_prefix('#') {
        rest = comment.split_once('\n').map_or("", |(_, r)| r).trim_start();
    }
    let rest = ["mutation", "query", "subscription"]
        .iter()
        .find_map(|kw| rest.strip_prefix(kw))?;
    let name: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The first 80 characters of `s`, whitespace collapsed.
fn preview(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(80)
        .collect()
}

/// A non-null string variable.
fn var(vars: &Value, name: &str) -> Option<String> {
    vars.get(name).and_then(Value::as_str).map(str::to_string)
}

/// A string variable, with `default` for null, absent or empty.
fn var_or(vars: &Value, name: &str, default: &str) -> String {
    var(vars, name)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn entity_node(entity: &str) -> Value {
    json!({"id": b64(format!("Entity:{entity}").as_bytes()), "name": entity})
}

fn project_node(entity: &str, project: &str) -> Value {
    json!({
        "id": b64(format!("Project:v1:{project}:{entity}").as_bytes()),
        "name": project,
        "entity": entity_node(entity),
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

fn upsert_bucket(shared: &Shared, vars: &Value) -> Response {
    let mut g = shared.lock();
    let by_id = var(vars, "id").and_then(|id| g.find_by_id(&id));
    let (k, inserted) = match by_id {
        Some(k) => (k, false),
        None => {
            let entity = var_or(vars, "entity", DEFAULT_ENTITY);
            let project = var_or(vars, "project", DEFAULT_PROJECT);
            let name = var(vars, "name")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| random_id(8));
            let k = (entity, project, name);
            if g.runs.contains_key(&k) {
                (k, false)
            } else if g.tombstones.contains(&k) {
                return gql_error(
                    StatusCode::CONFLICT,
                    &format!(
                        "run {} was previously created and deleted; try a new run name",
                        k.2
                    ),
                );
            } else {
                (k, true)
            }
        }
    };
    if inserted {
        let (entity, project, name) = k.clone();
        let now = now_rfc3339();
        g.projects.insert((entity.clone(), project.clone()));
        g.runs.insert(
            k.clone(),
            RunRec {
                run: StoredRun {
                    id: b64(format!("Run:v1:{name}:{project}:{entity}").as_bytes()),
                    display_name: name.clone(),
                    entity,
                    project,
                    name,
                    config: json!({}),
                    state: "running".into(),
                    ..StoredRun::default()
                },
                created_at: now.clone(),
                updated_at: now,
            },
        );
    }
    let rec = g.runs.get_mut(&k).expect("run was just found or inserted");
    rec.updated_at = now_rfc3339();
    let r = &mut rec.run;
    r.upserts += 1;
    let set = |field: &mut String, name: &str| {
        if let Some(v) = var(vars, name) {
            *field = v;
        }
    };
    set(&mut r.display_name, "displayName");
    set(&mut r.notes, "notes");
    set(&mut r.group, "groupName");
    set(&mut r.job_type, "jobType");
    set(&mut r.host, "host");
    set(&mut r.program, "program");
    if let Some(tags) = vars.get("tags").and_then(Value::as_array) {
        r.tags = tags
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
    }
    if let Some(c) = var(vars, "config") {
        r.config = serde_json::from_str(&c).unwrap_or(Value::String(c));
    }
    if let Some(s) = var(vars, "summaryMetrics") {
        r.summary = Some(s);
    }
    json_response(
        StatusCode::OK,
        json!({"data": {"upsertBucket": {
            "bucket": {
                "id": r.id,
                "name": r.name,
                "displayName": r.display_name,
                "description": null,
                "notes": r.notes,
                "config": r.config.to_string(),
                "sweepName": null,
                "historyLineCount": r.history.len(),
                "eventsLineCount": r.events.len(),
                "logLineCount": r.log.len(),
                "tags": r.tags,
                "state": r.state,
                "project": project_node(&r.entity, &r.project),
            },
            "inserted": inserted,
        }}}),
    )
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved kept).
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn create_run_files(shared: &Shared, vars: &Value) -> Response {
    let entity = var_or(vars, "entity", DEFAULT_ENTITY);
    let project = var_or(vars, "project", DEFAULT_PROJECT);
    let Some(run) = var(vars, "run") else {
        return gql_error(StatusCode::OK, "createRunFiles: run is required");
    };
    let names: Vec<String> = vars
        .get("files")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut g = shared.lock();
    let Some(run_id) = g
        .runs
        .get(&key(&entity, &project, &run))
        .map(|r| r.run.id.clone())
    else {
        return gql_error(
            StatusCode::OK,
            &format!("run {entity}/{project}/{run} not found"),
        );
    };
    let mut files = Vec::new();
    for name in names {
        let signature = format!("{:032x}", fastrand::u128(..));
        let path = format!(
            "{}/{}/{}/{}",
            encode_segment(&entity),
            encode_segment(&project),
            encode_segment(&run),
            name.split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        );
        let url = format!(
            "{}/local-files/{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=trainyard%2Fwandb-local%2Fs3%2Faws4_request&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}",
            shared.upload_base
        );
        g.issued
            .entry(format!("{entity}/{project}/{run}/{name}"))
            .or_default()
            .insert(signature);
        files.push(json!({"name": name, "uploadUrl": url}));
    }
    json_response(
        StatusCode::OK,
        json!({"data": {"createRunFiles": {
            "runID": run_id,
            "uploadHeaders": [format!("{}: {}", UPLOAD_HEADER.0, UPLOAD_HEADER.1)],
            "files": files,
        }}}),
    )
}

/// The last `n` lines of `lines` as W&B's `historyTail`: a JSON string
/// holding a list of JSON-line strings.
fn tail(lines: &[String], n: usize) -> String {
    Value::from(lines[lines.len().saturating_sub(n)..].to_vec()).to_string()
}

/// W&B's `wandbConfig(keys: ["t"])`: the `t` (telemetry) entry of the
/// config's `_wandb` value, as a JSON string; `{}` when there is none.
/// wandb-core treats a run without `t` as created but never started, and
/// does not resume it.
fn wandb_config(config: &Value) -> String {
    match config.pointer("/_wandb/value/t") {
        Some(t) => json!({ "t": t }).to_string(),
        None => "{}".to_string(),
    }
}

fn md5_b64(bytes: &[u8]) -> String {
    b64(&md5::Md5::digest(bytes))
}

/// `RunResumeStatus` and `RunState`: the run under `model.bucket` (and, for
/// clients that ask W&B's public way, under `project.run`).
fn run_query(shared: &Shared, vars: &Value, full: bool) -> Response {
    let entity = var_or(vars, "entity", DEFAULT_ENTITY);
    let project = var_or(vars, "project", DEFAULT_PROJECT);
    let name = var(vars, "name")
        .or_else(|| var(vars, "run"))
        .unwrap_or_default();
    let g = shared.lock();
    if !g.projects.contains(&(entity.clone(), project.clone())) {
        return json_response(
            StatusCode::OK,
            json!({"data": {"model": null, "project": null}}),
        );
    }
    let bucket = g.runs.get(&key(&entity, &project, &name)).map(|rec| {
        let r = &rec.run;
        let mut b = json!({
            "id": r.id,
            "name": r.name,
            "displayName": r.display_name,
            // wandb-core refuses to resume from a null summary; W&B
            // answers "{}" for a run without one.
            "summaryMetrics": r.summary.as_deref().unwrap_or("{}"),
            "logLineCount": r.log.len(),
            "historyLineCount": r.history.len(),
            "eventsLineCount": r.events.len(),
            "historyTail": tail(&r.history, 10),
            "eventsTail": tail(&r.events, 10),
            "config": r.config.to_string(),
            "tags": r.tags,
            "notes": r.notes,
            "wandbConfig": wandb_config(&r.config),
        });
        if full {
            let edges: Vec<Value> = r
                .files
                .iter()
                .map(|(name, bytes)| {
                    json!({"node": {
                        "id": b64(format!("File:{}:{name}", r.id).as_bytes()),
                        "name": name,
                        "sizeBytes": bytes.len(),
                        "md5": md5_b64(bytes),
                    }, "cursor": name})
                })
                .collect();
            let extra = json!({
                "state": r.state,
                "exitcode": r.exitcode,
                "createdAt": rec.created_at,
                "updatedAt": rec.updated_at,
                "heartbeatAt": rec.updated_at,
                "group": r.group,
                "jobType": r.job_type,
                "host": r.host,
                "program": r.program,
                "uploaded": r.uploaded,
                "fileCount": r.files.len(),
                "files": {
                    "edges": edges,
                    "pageInfo": {"hasNextPage": false, "endCursor": null},
                },
            });
            if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
                b.extend(extra);
            }
        }
        b
    });
    let mut model = project_node(&entity, &project);
    model["bucket"] = bucket.clone().unwrap_or(Value::Null);
    let mut proj = project_node(&entity, &project);
    proj["run"] = bucket.unwrap_or(Value::Null);
    json_response(
        StatusCode::OK,
        json!({"data": {"model": model, "project": proj}}),
    )
}

fn delete_run(shared: &Shared, vars: &Value) -> Response {
    let id = var(vars, "id").unwrap_or_default();
    let mut g = shared.lock();
    let Some(k) = g.find_by_id(&id) else {
        return gql_error(StatusCode::OK, "run not found");
    };
    g.runs.remove(&k);
    g.issued
        .retain(|path, _| !path.starts_with(&format!("{}/{}/{}/", k.0, k.1, k.2)));
    g.tombstones.insert(k);
    json_response(
        StatusCode::OK,
        json!({"data": {"deleteRun": {"clientMutationId": null}}}),
    )
}

// ---------------------------------------------------------------------------
// file_stream

async fn file_stream_handler(
    State(shared): State<Arc<Shared>>,
    Path((entity, project, run)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gate = shared.lock().admit(
        Kind::FileStream,
        format!("file_stream {entity}/{project}/{run}"),
    );
    if let Gate::Fail(status) = gate {
        return injected(Kind::FileStream, status);
    }
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let response = apply_file_stream(&shared, &key(&entity, &project, &run), &headers, &body);
    if let Gate::Stall = gate {
        return stall().await;
    }
    response
}

fn apply_file_stream(shared: &Shared, k: &RunKey, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut g = shared.lock();
    let Some(rec) = g.runs.get_mut(k) else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("run {}/{}/{} not found", k.0, k.1, k.2)}),
        );
    };
    let r = &mut rec.run;
    if headers.get("content-encoding").is_some() {
        r.protocol_errors.push(
            "file_stream: a Content-Encoding body, but the server advertises no FILESTREAM_GZIP feature"
                .into(),
        );
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "compressed bodies are not accepted"}),
        );
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            r.protocol_errors
                .push("file_stream: the body is not a JSON object".into());
            return json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid JSON"}));
        }
    };
    rec.updated_at = now_rfc3339();
    if let Some(files) = req.get("files").and_then(Value::as_object) {
        for (file, chunk) in files {
            let offset = chunk.get("offset").and_then(Value::as_u64);
            let content = chunk.get("content").and_then(Value::as_array);
            let (Some(offset), Some(content)) = (offset, content) else {
                r.protocol_errors.push(format!(
                    "file_stream {file}: needs an integer offset >= 0 and a content list, got {chunk}"
                ));
                continue;
            };
            let mut text = Vec::with_capacity(content.len());
            for line in content {
                match line.as_str() {
                    Some(s) => text.push(s.to_string()),
                    None => r.protocol_errors.push(format!(
                        "file_stream {file}: a content line is not a string: {line}"
                    )),
                }
            }
            let lines = match file.as_str() {
                "wandb-history.jsonl" => &mut r.history,
                "wandb-events.jsonl" => &mut r.events,
                "output.log" => &mut r.log,
                "wandb-summary.json" => {
                    if let Some(last) = text.last() {
                        r.summary = Some(last.clone());
                    }
                    continue;
                }
                other => {
                    r.protocol_errors
                        .push(format!("file_stream: unknown file {other:?}"));
                    continue;
                }
            };
            if let Some(e) = put_lines(lines, offset as usize, text) {
                r.protocol_errors.push(format!("file_stream {file}: {e}"));
            }
        }
    }
    if let Some(up) = req.get("uploaded").and_then(Value::as_array) {
        for name in up.iter().filter_map(Value::as_str) {
            if !r.uploaded.iter().any(|u| u == name) {
                r.uploaded.push(name.to_string());
            }
        }
    }
    if req.get("complete").and_then(Value::as_bool) == Some(true) {
        let code = req.get("exitcode").and_then(Value::as_i64);
        if code.is_none() {
            r.protocol_errors
                .push("file_stream: complete:true without an exitcode".into());
        }
        r.complete = true;
        r.exitcode = code;
        r.state = if code.unwrap_or(0) == 0 {
            "finished"
        } else {
            "failed"
        }
        .into();
    }
    json_response(StatusCode::OK, json!({"exitcode": null, "limits": {}}))
}

/// Stores `content` at `offset..` of `lines` (overwriting, extending). An
/// offset beyond the end is a gap: filled with empty lines and reported.
fn put_lines(lines: &mut Vec<String>, offset: usize, content: Vec<String>) -> Option<String> {
    let gap = (offset > lines.len()).then(|| {
        format!(
            "offset {offset} beyond the {} lines stored (a gap)",
            lines.len()
        )
    });
    if lines.len() < offset {
        lines.resize(offset, String::new());
    }
    for (i, line) in content.into_iter().enumerate() {
        match lines.get_mut(offset + i) {
            Some(slot) => *slot = line,
            None => lines.push(line),
        }
    }
    gap
}

// ---------------------------------------------------------------------------
// Uploads

async fn upload_handler(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gate = shared.lock().admit(Kind::Upload, format!("upload {rest}"));
    if let Gate::Fail(status) = gate {
        return injected(Kind::Upload, status);
    }
    let response = apply_upload(&shared, &rest, &query, &headers, body);
    if let Gate::Stall = gate {
        return stall().await;
    }
    response
}

fn apply_upload(
    shared: &Shared,
    rest: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = shared.lock();
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    let k = (parts.len() == 4).then(|| key(parts[0], parts[1], parts[2]));
    let issued = query
        .get("X-Amz-Signature")
        .is_some_and(|sig| g.issued.get(rest).is_some_and(|s| s.contains(sig)));
    let error = if headers.contains_key("authorization") {
        Some((
            format!(
                "upload {rest}: the PUT carries an Authorization header (presigned URLs must not)"
            ),
            "AccessDenied",
            "Access Denied. (an Authorization header on a presigned URL)",
        ))
    } else if !issued {
        Some((
            format!("upload {rest}: a PUT to a URL never handed out by CreateRunFiles"),
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        ))
    } else if headers.get(UPLOAD_HEADER.0).and_then(|v| v.to_str().ok()) != Some(UPLOAD_HEADER.1) {
        Some((
            format!(
                "upload {rest}: the PUT lacks the uploadHeaders returned by CreateRunFiles ({}: {})",
                UPLOAD_HEADER.0, UPLOAD_HEADER.1
            ),
            "AccessDenied",
            "Access Denied. (missing signed header)",
        ))
    } else {
        None
    };
    if let Some((protocol_error, code, message)) = error {
        match k.as_ref().and_then(|k| g.runs.get_mut(k)) {
            Some(rec) => rec.run.protocol_errors.push(protocol_error),
            None => g.orphan_errors.push(protocol_error),
        }
        return s3_error(StatusCode::FORBIDDEN, code, message);
    }
    let Some(rec) = k.as_ref().and_then(|k| g.runs.get_mut(k)) else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The run no longer exists.",
        );
    };
    let etag = format!("\"{:x}\"", md5::Md5::digest(&body));
    rec.run.files.insert(parts[3].to_string(), body.to_vec());
    rec.updated_at = now_rfc3339();
    (StatusCode::OK, [("ETag", etag)]).into_response()
}
