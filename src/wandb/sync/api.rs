//! The W&B server protocol as the sync uses it: GraphQL (`/graphql`), the
//! `file_stream` endpoint, and uploads to the URLs `CreateRunFiles` hands
//! out. Requests to the server carry `Authorization: Basic api:<key>`;
//! uploads carry only the headers the server returned (a key sent to the
//! storage behind a presigned URL is refused by wandb/local's MinIO).
//!
//! Transient failures (connection errors, timeouts, 429 and 5xx) are retried
//! with exponential backoff; everything else becomes a [`SyncError`] that
//! names the server and what it said. Operations are idempotent on the
//! server side (upserts, positional `file_stream` lines, overwriting PUTs),
//! so a retried request that had in fact landed does no harm.

use std::time::Duration;

use serde_json::{json, Value as Json};

use super::creds::Server;
use super::SyncError;

/// Where a run lives on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPath {
    /// Entity (user or team).
    pub entity: String,
    /// Project.
    pub project: String,
    /// Run id (the "name" in W&B's API).
    pub name: String,
}

impl std::fmt::Display for RunPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.entity, self.project, self.name)
    }
}

/// Retry policy for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubles each time.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 7,
            base: Duration::from_millis(250),
            max: Duration::from_secs(8),
        }
    }
}

/// A client of one W&B server.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    server: Server,
    retry: Retry,
}

/// What `UpsertBucket` answered.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The run's storage id (for `DeleteRun`).
    pub id: String,
    /// Where the server put the run (entity filled in when we sent none).
    pub path: RunPath,
}

/// Line counts and state of a run on the server.
#[derive(Debug, Clone, Default)]
pub struct RemoteRun {
    /// Storage id.
    pub id: String,
    /// `wandb-history.jsonl` lines.
    pub history_lines: u64,
    /// `wandb-events.jsonl` lines.
    pub events_lines: u64,
    /// `output.log` lines.
    pub log_lines: u64,
    /// `running`, `finished`, `failed`, `crashed`, … (verification query only).
    pub state: Option<String>,
    /// The summary, as the JSON string the server returns.
    pub summary: Option<String>,
    /// The config, as the JSON string the server returns.
    pub config: Option<String>,
    /// The last history lines (`historyTail`: a JSON string holding a list
    /// of JSON-line strings; resume query only).
    pub history_tail: Option<String>,
    /// Files: name, size, base64 MD5 (verification query only).
    pub files: Vec<RemoteFile>,
}

/// A file the server holds for a run.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// Path relative to the run's files.
    pub name: String,
    /// Size in bytes, if reported.
    pub size: Option<u64>,
    /// Base64 MD5 of the content, if reported.
    pub md5: Option<String>,
}

/// An upload target from `CreateRunFiles`.
#[derive(Debug, Clone)]
pub struct UploadUrl {
    /// File name.
    pub name: String,
    /// Where to PUT it (`None`: the server wants it skipped).
    pub url: Option<String>,
}

const UPSERT_BUCKET: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, $groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, $host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, $tags: [String!], $summaryMetrics: JSONString) { upsertBucket(input: {id: $id, name: $name, groupName: $groupName, modelName: $project, entityName: $entity, description: $description, displayName: $displayName, notes: $notes, config: $config, commit: $commit, host: $host, debug: $debug, jobProgram: $program, jobRepo: $repo, jobType: $jobType, state: $state, sweep: $sweep, tags: $tags, summaryMetrics: $summaryMetrics}) { bucket { id name displayName description config sweepName project { id name entity { id name } } historyLineCount } inserted } }";

const RUN_RESUME_STATUS: &str = "query RunResumeStatus($project: String, $entity: String, $name: String!) { model(name: $project, entityName: $entity) { id name entity { id name } bucket(name: $name, missingOk: true) { id name summaryMetrics displayName logLineCount historyLineCount eventsLineCount historyTail eventsTail config tags notes wandbConfig(keys: [\"t\"]) } } }";

const RUN_STATE: &str = "query RunState($project: String, $entity: String, $name: String!, $cursor: String) { model(name: $project, entityName: $entity) { id name bucket(name: $name, missingOk: true) { id name state summaryMetrics config historyLineCount eventsLineCount logLineCount files(first: 1000, after: $cursor) { edges { node { name sizeBytes md5 } } pageInfo { hasNextPage endCursor } } } } }";

const CREATE_RUN_FILES: &str = "mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, $files: [String!]!) { createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) { runID uploadHeaders files { name uploadUrl } } }";

const DELETE_RUN: &str = "mutation DeleteRun($id: ID!, $deleteArtifacts: Boolean) { deleteRun(input: {id: $id, deleteArtifacts: $deleteArtifacts}) { clientMutationId } }";

/// The run fields `UpsertBucket` sets.
#[derive(Debug, Clone, Default)]
pub struct UpsertFields {
    /// Display name.
    pub display_name: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Job type.
    pub job_type: Option<String>,
    /// Host the run ran on.
    pub host: Option<String>,
    /// The program.
    pub program: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// The W&B-shaped config, as a JSON string.
    pub config: Option<String>,
    /// Sweep id.
    pub sweep: Option<String>,
}

enum Failure {
    /// Worth retrying.
    Transient(SyncError),
    /// Final.
    Fatal(SyncError),
}

impl Api {
    /// A client for `server`.
    pub fn new(server: Server, retry: Retry) -> Result<Api, SyncError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("trainyard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SyncError::Client(e.to_string()))?;
        Ok(Api {
            http,
            server,
            retry,
        })
    }

    /// The server this client talks to.
    pub fn server(&self) -> &Server {
        &self.server
    }

    fn host(&self) -> String {
        self.server.netloc()
    }

    async fn with_retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, SyncError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut delay = self.retry.base;
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) if attempt >= self.retry.attempts => return Err(e),
                Err(Failure::Transient(e)) => {
                    tracing::warn!(host = %self.host(), what, attempt, error = %e, "retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max);
                    attempt += 1;
                }
            }
        }
    }

    /// Classifies a transport error on a request to the server.
    fn transport(&self, what: &str, e: reqwest::Error) -> Failure {
        Failure::Transient(SyncError::Unreachable {
            host: self.host(),
            what: what.to_string(),
            error: error_chain(&e),
        })
    }

    /// Classifies a non-2xx answer of the server.
    fn status(&self, what: &str, status: u16, body: &str) -> Failure {
        let message = server_message(body);
        match status {
            401 | 403 => Failure::Fatal(SyncError::KeyRejected {
                host: self.host(),
                source_of_key: self.server.key_source.to_string(),
                status,
                message,
            }),
            409 if message.contains("deleted") => Failure::Fatal(SyncError::PreviouslyDeleted {
                host: self.host(),
                message,
            }),
            429 | 500..=599 => Failure::Transient(SyncError::Server {
                host: self.host(),
                what: what.to_string(),
                status,
                message,
            }),
            _ => Failure::Fatal(SyncError::Server {
                host: self.host(),
                what: what.to_string(),
                status,
                message,
            }),
        }
    }

    /// One GraphQL operation; returns its `data`.
    async fn graphql(&self, op: &'static str, query: &str, vars: Json) -> Result<Json, SyncError> {
        let url = format!("{}/graphql", self.server.base_url);
        let body = json!({"query": query, "variables": vars, "operationName": op});
        self.with_retry(op, || async {
            let resp = self
                .http
                .post(&url)
                .basic_auth("api", Some(self.server.key.expose()))
                .json(&body)
                .send()
                .await
                .map_err(|e| self.transport(op, e))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| self.transport(op, e))?;
            if !(200..300).contains(&status) {
                return Err(self.status(op, status, &text));
            }
            let v: Json = serde_json::from_str(&text).map_err(|e| {
                Failure::Fatal(SyncError::BadAnswer {
                    host: self.host(),
                    what: op.to_string(),
                    error: format!("not JSON ({e})"),
                })
            })?;
            if let Some(errs) = v.get("errors").and_then(Json::as_array) {
                if !errs.is_empty() {
                    let message = errs
                        .iter()
                        .filter_map(|e| e.get("message").and_then(Json::as_str))
                        .collect::<Vec<_>>()
                        .join("; ");
                    if message.contains("previously created and deleted") {
                        return Err(Failure::Fatal(SyncError::PreviouslyDeleted {
                            host: self.host(),
                            message,
                        }));
                    }
                    return Err(Failure::Fatal(SyncError::GraphQl {
                        host: self.host(),
                        op: op.to_string(),
                        message,
                    }));
                }
            }
            Ok(v.get("data").cloned().unwrap_or(Json::Null))
        })
        .await
    }

    /// Creates or updates a run (`UpsertBucket`).
    pub async fn upsert(&self, path: &RunPath, f: &UpsertFields) -> Result<Bucket, SyncError> {
        let opt = |s: &Option<String>| match s.as_deref() {
            None | Some("") => Json::Null,
            Some(v) => Json::String(v.to_string()),
        };
        let vars = json!({
            "name": path.name,
            "project": path.project,
            "entity": if path.entity.is_empty() { Json::Null } else { Json::String(path.entity.clone()) },
            "displayName": opt(&f.display_name),
            "notes": opt(&f.notes),
            "groupName": opt(&f.group),
            "jobType": opt(&f.job_type),
            "host": opt(&f.host),
            "program": opt(&f.program),
            "sweep": opt(&f.sweep),
            "config": opt(&f.config),
            "tags": f.tags.as_ref().map_or(Json::Null, |t| json!(t)),
        });
        let data = self.graphql("UpsertBucket", UPSERT_BUCKET, vars).await?;
        let b = &data["upsertBucket"]["bucket"];
        let s = |v: &Json| v.as_str().map(str::to_string);
        let bad = |what: &str| SyncError::BadAnswer {
            host: self.host(),
            what: "UpsertBucket".into(),
            error: format!("no {what} in the answer"),
        };
        Ok(Bucket {
            id: s(&b["id"]).unwrap_or_default(),
            path: RunPath {
                entity: s(&b["project"]["entity"]["name"]).ok_or_else(|| bad("entity"))?,
                project: s(&b["project"]["name"]).ok_or_else(|| bad("project"))?,
                name: s(&b["name"]).ok_or_else(|| bad("run name"))?,
            },
        })
    }

    /// The run's line counts (`RunResumeStatus`); `None` if it does not exist.
    pub async fn resume_status(&self, path: &RunPath) -> Result<Option<RemoteRun>, SyncError> {
        let vars = json!({"project": path.project, "entity": path.entity, "name": path.name});
        let data = self
            .graphql("RunResumeStatus", RUN_RESUME_STATUS, vars)
            .await?;
        Ok(remote_run(&data["model"]["bucket"]))
    }

    /// Everything the verification compares (`RunState`, all file pages).
    pub async fn run_state(&self, path: &RunPath) -> Result<Option<RemoteRun>, SyncError> {
        let mut cursor = Json::Null;
        let mut out: Option<RemoteRun> = None;
        for _ in 0..1000 {
            let vars = json!({"project": path.project, "entity": path.entity, "name": path.name, "cursor": cursor});
            let data = self.graphql("RunState", RUN_STATE, vars).await?;
            let b = &data["model"]["bucket"];
            let Some(mut run) = remote_run(b) else {
                return Ok(None);
            };
            let files = &b["files"];
            for e in files["edges"].as_array().into_iter().flatten() {
                let n = &e["node"];
                if let Some(name) = n["name"].as_str() {
                    run.files.push(RemoteFile {
                        name: name.to_string(),
                        size: n["sizeBytes"]
                            .as_u64()
                            .or_else(|| n["sizeBytes"].as_str().and_then(|s| s.parse().ok())),
                        md5: n["md5"].as_str().map(str::to_string),
                    });
                }
            }
            let more = files["pageInfo"]["hasNextPage"].as_bool() == Some(true);
            match &mut out {
                Some(o) => o.files.append(&mut run.files),
                None => out = Some(run),
            }
            if !more {
                break;
            }
            cursor = files["pageInfo"]["endCursor"].clone();
        }
        Ok(out)
    }

    /// Asks for upload URLs (`CreateRunFiles`); returns them and the headers
    /// every PUT must carry.
    pub async fn create_run_files(
        &self,
        path: &RunPath,
        names: &[String],
    ) -> Result<(Vec<UploadUrl>, Vec<(String, String)>), SyncError> {
        let vars = json!({"entity": path.entity, "project": path.project, "run": path.name, "files": names});
        let data = self
            .graphql("CreateRunFiles", CREATE_RUN_FILES, vars)
            .await?;
        let c = &data["createRunFiles"];
        let headers = c["uploadHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let files: Vec<UploadUrl> = c["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(UploadUrl {
                    name: f["name"].as_str()?.to_string(),
                    url: f["uploadUrl"].as_str().map(str::to_string),
                })
            })
            .collect();
        if files.len() != names.len() {
            return Err(SyncError::BadAnswer {
                host: self.host(),
                what: "CreateRunFiles".into(),
                error: format!("asked for {} upload URLs, got {}", names.len(), files.len()),
            });
        }
        Ok((files, headers))
    }

    /// Deletes a run by storage id (`DeleteRun`).
    pub async fn delete_run(&self, id: &str) -> Result<(), SyncError> {
        self.graphql(
            "DeleteRun",
            DELETE_RUN,
            json!({"id": id, "deleteArtifacts": false}),
        )
        .await
        .map(|_| ())
    }

    /// One `file_stream` request.
    pub async fn file_stream(&self, path: &RunPath, body: &Json) -> Result<(), SyncError> {
        let url = format!(
            "{}/files/{}/{}/{}/file_stream",
            self.server.base_url,
            enc(&path.entity),
            enc(&path.project),
            enc(&path.name)
        );
        let bytes = serde_json::to_vec(body).map_err(|e| SyncError::Client(e.to_string()))?;
        self.with_retry("file_stream", || async {
            let resp = self
                .http
                .post(&url)
                .basic_auth("api", Some(self.server.key.expose()))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone())
                .send()
                .await
                .map_err(|e| self.transport("file_stream", e))?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                let text = resp.text().await.unwrap_or_default();
                return Err(self.status("file_stream", status, &text));
            }
            Ok(())
        })
        .await
    }

    /// PUTs `body` to an upload URL with the server's headers and nothing
    /// else (no credentials).
    pub async fn upload(
        &self,
        name: &str,
        url: &str,
        headers: &[(String, String)],
        body: bytes::Bytes,
    ) -> Result<(), SyncError> {
        let url_host = netloc_of(url);
        let base_host = self.host();
        let what = format!("upload of {name}");
        self.with_retry(&what, || async {
            let mut req = self.http.put(url).body(body.clone());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.map_err(|e| {
                Failure::Transient(SyncError::UploadUnreachable {
                    file: name.to_string(),
                    url_host: url_host.clone(),
                    base_host: base_host.clone(),
                    error: error_chain(&e),
                })
            })?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            let text = resp.text().await.unwrap_or_default();
            let err = SyncError::UploadRefused {
                file: name.to_string(),
                url_host: url_host.clone(),
                base_host: base_host.clone(),
                status,
                message: server_message(&text),
            };
            Err(if status == 429 || status >= 500 {
                Failure::Transient(err)
            } else {
                Failure::Fatal(err)
            })
        })
        .await
    }
}

fn remote_run(b: &Json) -> Option<RemoteRun> {
    if !b.is_object() {
        return None;
    }
    let count = |v: &Json| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    };
    let s = |v: &Json| v.as_str().map(str::to_string);
    Some(RemoteRun {
        id: s(&b["id"]).unwrap_or_default(),
        history_lines: count(&b["historyLineCount"]),
        events_lines: count(&b["eventsLineCount"]),
        log_lines: count(&b["logLineCount"]),
        state: s(&b["state"]),
        summary: s(&b["summaryMetrics"]),
        config: s(&b["config"]),
        history_tail: s(&b["historyTail"]),
        files: Vec::new(),
    })
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn netloc_of(url: &str) -> String {
    url.split_once("://")
        .map(|(_, r)| r.split(['/', '?', '#']).next().unwrap_or(r))
        .unwrap_or(url)
        .to_string()
}

/// The human part of an error answer: GraphQL `errors[].message`, an S3
/// `<Message>` or `<Code>`, else the start of the body.
fn server_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Json>(body) {
        let msgs: Vec<&str> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str().or_else(|| e.as_str()))
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
        if let Some(m) = v["error"].as_str().or_else(|| v["message"].as_str()) {
            return m.to_string();
        }
    }
    for tag in ["Message", "Code"] {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        if let Some(rest) = body.split_once(&open).map(|(_, r)| r) {
            if let Some((m, _)) = rest.split_once(&close) {
                return m.to_string();
            }
        }
    }
    let t = body.trim();
    t.chars().take(200).collect()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}
