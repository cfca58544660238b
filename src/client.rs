//! The HTTP client of the daemon API, used by the CLI's queue commands and
//! by agents. Errors say which daemon was unreachable or what it answered.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    self, AgentInfo, AgentOrders, AgentReport, ErrorBody, FinishRequest, Health, JobDetail,
    PollRequest, SubmitRequest, SubmitResponse,
};
use crate::queue::{Job, JobId, JobOrder, JobSpec, JobState, SweepGrid};
use crate::schedule::{NewSchedule, RunAnswer, ScheduleDetail, ScheduleInfo};
use crate::secret::Secret;

/// What `GET /jobs` is asked for; empty fields do not filter.
#[derive(Debug, Clone)]
pub struct JobsQuery {
    /// Any of these states.
    pub states: Vec<JobState>,
    /// Submitted by this user.
    pub user: Option<String>,
    /// In this project.
    pub project: Option<String>,
    /// With this tag.
    pub tag: Option<String>,
    /// The id, or a substring of the spec or user.
    pub text: Option<String>,
    /// Scheduling order, or finished jobs newest first.
    pub order: JobOrder,
    /// Jobs per page [default: the daemon's, 500].
    pub limit: Option<usize>,
    /// Where to start: the `next` of the previous page.
    pub cursor: Option<String>,
}

impl Default for JobsQuery {
    fn default() -> JobsQuery {
        JobsQuery {
            states: Vec::new(),
            user: None,
            project: None,
            tag: None,
            text: None,
            order: JobOrder::Queue,
            limit: None,
            cursor: None,
        }
    }
}

/// One page of jobs.
#[derive(Debug, Clone)]
pub struct JobsPage {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
    /// Jobs matching the query, on all pages.
    pub total: u64,
}

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered.
    #[error("cannot reach the Trainyard daemon at {url}: {reason} (start it with `trainyard up`, or point --server / TRAINYARD_URL at it)")]
    Unreachable {
        /// The daemon URL.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The token was missing or wrong.
    #[error("the daemon at {url} refused the token: {message}")]
    Unauthorized {
        /// The daemon URL.
        url: String,
        /// Its message.
        message: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code (`bad_request`, `stale_attempt`, ...).
        code: String,
        /// The daemon's message.
        message: String,
    },
    /// The answer did not parse.
    #[error("unexpected answer from the daemon at {url}: {reason}")]
    Decode {
        /// The daemon URL.
        url: String,
        /// What did not parse.
        reason: String,
    },
}

impl ClientError {
    /// Whether the daemon said the attempt is no longer current.
    pub fn is_stale(&self) -> bool {
        matches!(self, ClientError::Api { code, .. } if code == "stale_attempt")
    }
    /// Whether the daemon could not be reached (worth retrying).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
            || matches!(self, ClientError::Api { status, .. } if *status >= 500)
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// One log read.
#[derive(Debug, Clone)]
pub struct LogChunk {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The offset after them.
    pub next: u64,
    /// The attempt ended and everything was read.
    pub done: bool,
    /// Which attempt.
    pub attempt: u32,
    /// The job's state.
    pub job_state: Option<JobState>,
}

/// A daemon client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
}

impl Client {
    /// A client of the daemon at `base` (`http://host:port`).
    pub fn new(base: &str, token: Option<Secret>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// The daemon URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{}{}", self.base, api::PREFIX, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t.expose());
        }
        r
    }

    async fn send(&self, r: RequestBuilder) -> Result<reqwest::Response> {
        let resp = r.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                "http".to_string(),
                format!("HTTP {status}: {}", text.trim()),
            ),
        };
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.base.clone(),
                message,
            });
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(&self, r: RequestBuilder) -> Result<T> {
        let resp = self.send(r).await?;
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            reason: e.to_string(),
        })
    }

    /// A POST without content still declares JSON: the daemon refuses any
    /// other content type (no HTML form or simple cross-site request).
    fn no_body(r: RequestBuilder) -> RequestBuilder {
        r.header("content-type", "application/json")
    }

    fn body<T: Serialize>(r: RequestBuilder, v: &T) -> RequestBuilder {
        r.header("content-type", "application/json")
            .body(serde_json::to_vec(v).expect("API types serialize"))
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health> {
        self.json(self.req(Method::GET, "/health")).await
    }

    /// Submit jobs (one transaction).
    pub async fn submit(&self, jobs: Vec<JobSpec>) -> Result<Vec<JobId>> {
        self.submit_request(&SubmitRequest { jobs, sweep: None })
            .await
    }

    /// Submit one job per combination of `grid`, expanded by the daemon (one
    /// transaction; the request stays small whatever the sweep's size).
    pub async fn submit_sweep(&self, template: JobSpec, grid: SweepGrid) -> Result<Vec<JobId>> {
        self.submit_request(&SubmitRequest {
            jobs: vec![template],
            sweep: Some(grid),
        })
        .await
    }

    async fn submit_request(&self, req: &SubmitRequest) -> Result<Vec<JobId>> {
        let r: SubmitResponse = self
            .json(Self::body(self.req(Method::POST, "/jobs"), req))
            .await?;
        Ok(r.ids)
    }

    /// One page of jobs.
    pub async fn jobs_page(&self, q: &JobsQuery) -> Result<JobsPage> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if !q.states.is_empty() {
            let s: Vec<&str> = q.states.iter().map(|s| s.as_str()).collect();
            params.push(("state", s.join(",")));
        }
        for (k, v) in [
            ("user", &q.user),
            ("project", &q.project),
            ("tag", &q.tag),
            ("q", &q.text),
            ("cursor", &q.cursor),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        if q.order != JobOrder::Queue {
            params.push(("order", q.order.as_str().to_string()));
        }
        if let Some(l) = q.limit {
            params.push(("limit", l.to_string()));
        }
        let resp = self
            .send(self.req(Method::GET, "/jobs").query(&params))
            .await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let next = header(api::NEXT_CURSOR_HEADER);
        let total = header(api::TOTAL_HEADER).and_then(|t| t.parse().ok());
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        let jobs: Vec<Job> = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        Ok(JobsPage {
            total: total.unwrap_or(jobs.len() as u64),
            jobs,
            next,
        })
    }

    /// Every job in `states` (all when empty), following the pages.
    pub async fn jobs(&self, states: &[JobState]) -> Result<Vec<Job>> {
        let mut q = JobsQuery {
            states: states.to_vec(),
            limit: Some(crate::queue::MAX_PAGE),
            ..JobsQuery::default()
        };
        let mut all = Vec::new();
        loop {
            let page = self.jobs_page(&q).await?;
            all.extend(page.jobs);
            match page.next {
                Some(c) => q.cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// How many jobs are in each state.
    pub async fn job_counts(&self) -> Result<api::JobCounts> {
        self.json(self.req(Method::GET, "/jobs/counts")).await
    }

    /// One job with its attempts.
    pub async fn job(&self, id: JobId) -> Result<JobDetail> {
        self.json(self.req(Method::GET, &format!("/jobs/{id}")))
            .await
    }

    /// Cancel a job.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/jobs/{id}/cancel")),
        ))
        .await
    }

    /// Add and remove a job's tags.
    pub async fn tag(
        &self,
        id: JobId,
        req: &crate::api::TagRequest,
    ) -> Result<crate::api::TagAnswer> {
        self.json(Self::body(
            self.req(Method::POST, &format!("/jobs/{id}/tags")),
            req,
        ))
        .await
    }

    /// Add and remove a wandb run's tags (by id or directory).
    pub async fn tag_run(
        &self,
        run: &str,
        req: &crate::api::TagRequest,
    ) -> Result<crate::api::RunTagAnswer> {
        // One path segment: a run's directory has slashes.
        let run: String = run
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.json(Self::body(
            self.req(Method::POST, &format!("/runs/{run}/tags")),
            req,
        ))
        .await
    }

    /// Retry a job.
    pub async fn retry(&self, id: JobId) -> Result<Job> {
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/jobs/{id}/retry")),
        ))
        .await
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        self.json(self.req(Method::GET, "/schedules")).await
    }

    /// Add a schedule.
    pub async fn add_schedule(&self, s: &NewSchedule) -> Result<ScheduleInfo> {
        self.json(Self::body(self.req(Method::POST, "/schedules"), s))
            .await
    }

    /// One schedule with its next fire times, runs and missed occurrences.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleDetail> {
        self.json(self.req(Method::GET, &format!("/schedules/{name}")))
            .await
    }

    /// Remove a schedule (its jobs stay).
    pub async fn remove_schedule(&self, name: &str) -> Result<()> {
        self.send(Self::no_body(
            self.req(Method::DELETE, &format!("/schedules/{name}")),
        ))
        .await?;
        Ok(())
    }

    /// Pause (`true`) or resume a schedule.
    pub async fn pause_schedule(&self, name: &str, pause: bool) -> Result<ScheduleInfo> {
        let action = if pause { "pause" } else { "resume" };
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/schedules/{name}/{action}")),
        ))
        .await
    }

    /// Fire a schedule now.
    pub async fn run_schedule(&self, name: &str) -> Result<RunAnswer> {
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/schedules/{name}/run")),
        ))
        .await
    }

    /// Every watch rule with its state and newest log line.
    pub async fn watches(&self) -> Result<Vec<crate::watch::WatchInfo>> {
        self.json(self.req(Method::GET, "/watches")).await
    }

    /// Add a watch rule.
    pub async fn add_watch(&self, w: &crate::watch::NewWatch) -> Result<crate::watch::WatchInfo> {
        self.json(Self::body(self.req(Method::POST, "/watches"), w))
            .await
    }

    /// Remove a watch rule (by id).
    pub async fn remove_watch(&self, id: i64) -> Result<()> {
        self.send(Self::no_body(
            self.req(Method::DELETE, &format!("/watches/{id}")),
        ))
        .await?;
        Ok(())
    }

    /// Pause (`true`) or resume a watch rule.
    pub async fn pause_watch(&self, id: i64, pause: bool) -> Result<crate::watch::WatchInfo> {
        let action = if pause { "pause" } else { "resume" };
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/watches/{id}/{action}")),
        ))
        .await
    }

    /// A watch's log (or every watch's), newest first.
    pub async fn watch_log(
        &self,
        id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<crate::watch::LogEntry>> {
        let path = match id {
            Some(id) => format!("/watches/{id}/log?limit={limit}"),
            None => format!("/watches/log?limit={limit}"),
        };
        self.json(self.req(Method::GET, &path)).await
    }

    /// Read a log from `offset`, waiting up to `wait` for bytes.
    pub async fn log(
        &self,
        id: JobId,
        attempt: Option<u32>,
        offset: u64,
        wait: Duration,
    ) -> Result<LogChunk> {
        let mut q = vec![
            ("offset", offset.to_string()),
            ("wait_ms", wait.as_millis().to_string()),
        ];
        if let Some(a) = attempt {
            q.push(("attempt", a.to_string()));
        }
        let resp = self
            .send(self.req(Method::GET, &format!("/jobs/{id}/log")).query(&q))
            .await?;
        let h = resp.headers();
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let next = num(api::LOG_OFFSET_HEADER).unwrap_or(offset);
        let done = num(api::LOG_DONE_HEADER) == Some(1);
        let attempt = num("x-trainyard-log-attempt").unwrap_or(0) as u32;
        let job_state = h
            .get("x-trainyard-job-state")
            .and_then(|v| v.to_str().ok())
            .and_then(JobState::from_name);
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        Ok(LogChunk {
            bytes: bytes.to_vec(),
            next,
            done,
            attempt,
            job_state,
        })
    }

    /// Every agent.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>> {
        self.json(self.req(Method::GET, "/agents")).await
    }

    /// GPU usage (`GET /usage`); `params` as the API documents them.
    pub async fn usage(&self, params: &[(&str, String)]) -> Result<crate::api::UsageAnswer> {
        self.json(self.req(Method::GET, "/usage").query(params))
            .await
    }

    /// Notification sinks (`GET /notify/sinks`; URLs as scheme and host).
    pub async fn notify_sinks(&self) -> Result<Vec<api::NotifySink>> {
        self.json(self.req(Method::GET, "/notify/sinks")).await
    }

    /// Add a notification sink.
    pub async fn notify_add(&self, req: &api::AddSinkRequest) -> Result<api::NotifySink> {
        self.json(Self::body(self.req(Method::POST, "/notify/sinks"), req))
            .await
    }

    /// Remove a notification sink added with [`Client::notify_add`].
    pub async fn notify_remove(&self, name: &str) -> Result<()> {
        self.send(Self::no_body(
            self.req(Method::DELETE, &format!("/notify/sinks/{name}")),
        ))
        .await?;
        Ok(())
    }

    /// Queue a test message to one sink.
    pub async fn notify_test(&self, name: &str) -> Result<api::NotifyTestAnswer> {
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/notify/sinks/{name}/test")),
        ))
        .await
    }

    /// Deliveries, newest first: all, or those in `state` (`pending`,
    /// `delivered`, `dead`).
    pub async fn notify_log(&self, state: Option<&str>, limit: usize) -> Result<api::NotifyLog> {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(s) = state {
            q.push(("state", s.to_string()));
        }
        self.json(self.req(Method::GET, "/notify/log").query(&q))
            .await
    }

    /// SLURM clusters with their status (`GET /clusters`).
    pub async fn clusters(&self) -> Result<Vec<crate::cluster::ClusterStatus>> {
        self.json(self.req(Method::GET, "/clusters")).await
    }

    /// Add a cluster (`POST /clusters`).
    pub async fn cluster_add(
        &self,
        c: &crate::cluster::Cluster,
    ) -> Result<crate::cluster::Cluster> {
        self.json(Self::body(self.req(Method::POST, "/clusters"), c))
            .await
    }

    /// Remove a cluster (`DELETE /clusters/{name}`).
    pub async fn cluster_remove(&self, name: &str) -> Result<()> {
        self.send(Self::no_body(
            self.req(Method::DELETE, &format!("/clusters/{name}")),
        ))
        .await?;
        Ok(())
    }

    /// Check a cluster's commands, partition and GPUs
    /// (`POST /clusters/{name}/test`).
    pub async fn cluster_test(&self, name: &str) -> Result<crate::cluster::TestReport> {
        self.json(Self::no_body(
            self.req(Method::POST, &format!("/clusters/{name}/test")),
        ))
        .await
    }

    /// Each cluster as a GPU pool (`GET /clusters/pools`).
    pub async fn cluster_pools(&self) -> Result<Vec<api::ClusterPool>> {
        self.json(self.req(Method::GET, "/clusters/pools")).await
    }

    /// Agent: heartbeat.
    pub async fn heartbeat(&self, name: &str, report: &AgentReport) -> Result<AgentOrders> {
        self.json(Self::body(
            self.req(Method::POST, &format!("/agents/{name}/heartbeat")),
            report,
        ))
        .await
    }

    /// `POST /agents/{name}/samples`: ship buffered GPU samples.
    pub async fn samples(&self, name: &str, batch: &api::SampleBatch) -> Result<api::SampleAck> {
        self.json(Self::body(
            self.req(Method::POST, &format!("/agents/{name}/samples")),
            batch,
        ))
        .await
    }

    /// Agent: long poll.
    pub async fn poll(
        &self,
        name: &str,
        report: AgentReport,
        wait: Duration,
    ) -> Result<AgentOrders> {
        let req = PollRequest {
            report,
            wait_ms: wait.as_millis() as u64,
        };
        let r = Self::body(
            self.req(Method::POST, &format!("/agents/{name}/poll")),
            &req,
        )
        .timeout(wait + Duration::from_secs(10));
        self.json(r).await
    }

    fn attempt(&self, id: JobId, n: u32, what: &str, token: &str) -> RequestBuilder {
        self.req(Method::POST, &format!("/jobs/{id}/attempts/{n}/{what}"))
            .header(api::ATTEMPT_TOKEN_HEADER, token)
    }

    /// Agent: the process started.
    pub async fn started(
        &self,
        id: JobId,
        n: u32,
        token: &str,
        commit: Option<&str>,
    ) -> Result<()> {
        let req = api::StartRequest {
            commit: commit.map(str::to_string),
        };
        self.send(Self::body(self.attempt(id, n, "start", token), &req))
            .await
            .map(|_| ())
    }

    /// Agent: the attempt ended.
    pub async fn finish(&self, id: JobId, n: u32, token: &str, f: &FinishRequest) -> Result<Job> {
        self.json(Self::body(self.attempt(id, n, "finish", token), f))
            .await
    }

    /// Agent: append log bytes at `offset`; returns the daemon's size.
    pub async fn append_log(
        &self,
        id: JobId,
        n: u32,
        token: &str,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64> {
        let r = self
            .attempt(id, n, "log", token)
            .query(&[("offset", offset)])
            .header("content-type", "application/octet-stream")
            .body(bytes);
        let v: serde_json::Value = self.json(r).await?;
        Ok(v["size"].as_u64().unwrap_or(offset))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}
