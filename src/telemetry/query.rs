//! Reading series back: by host, GPU, job and time range, at the
//! resolution the range calls for (raw samples for up to an hour within the
//! raw retention, 1-minute buckets for up to two days within 30 days,
//! 15-minute buckets beyond). Buckets not yet rolled up are aggregated from
//! the finer level on the fly, by the same SQL that rolls them up, so an
//! answer does not depend on when compaction last ran.

use rusqlite::{params_from_iter, Connection};
use serde::{Deserialize, Serialize};

use super::{
    fold, mark, ms, raw_to_m1, GpuInfo, Result, Telemetry, TelemetryError, M15_DONE, M1_DONE,
    MINUTE_MS, QUARTER_MS,
};

/// The most points one answer holds.
pub const MAX_POINTS: usize = 200_000;

/// A series' resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// One point per sample.
    #[serde(rename = "raw")]
    Raw,
    /// 1-minute buckets.
    #[serde(rename = "1m")]
    Minute,
    /// 15-minute buckets.
    #[serde(rename = "15m")]
    Quarter,
}

impl Resolution {
    /// `raw`, `1m` or `15m`.
    pub fn from_name(s: &str) -> Option<Resolution> {
        match s {
            "raw" => Some(Resolution::Raw),
            "1m" => Some(Resolution::Minute),
            "15m" => Some(Resolution::Quarter),
            _ => None,
        }
    }

    /// The bucket, ms (0 for raw samples).
    pub fn step_ms(self) -> i64 {
        match self {
            Resolution::Raw => 0,
            Resolution::Minute => MINUTE_MS,
            Resolution::Quarter => QUARTER_MS,
        }
    }
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct TelemetryQuery {
    /// Only this host (agent name).
    pub host: Option<String>,
    /// Only this GPU: its UUID, or its index (on every host, or on `host`).
    pub gpu: Option<String>,
    /// Only the samples taken while this job held the GPU.
    pub job: Option<i64>,
    /// Only these (host, UUID) pairs (the GPUs a job's attempts held).
    pub only: Option<Vec<(String, String)>>,
    /// From, ms since the epoch (inclusive).
    pub since_ms: i64,
    /// Until, ms since the epoch (exclusive).
    pub until_ms: i64,
    /// The resolution; chosen by the range when absent.
    pub resolution: Option<Resolution>,
}

/// Minimum, time-weighted mean and maximum over a point's interval (all
/// three the sample's value for a raw sample).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Minimum.
    pub min: f64,
    /// Time-weighted mean.
    pub mean: f64,
    /// Maximum.
    pub max: f64,
}

/// One point of a series: a raw sample, or a bucket's aggregate for one
/// holder (a bucket in which the GPU changed hands has one point per holder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryPoint {
    /// The sample's time, or the bucket's start, ms since the epoch.
    pub t_ms: i64,
    /// The time the point stands for, ms (a sample's interval; the sum of
    /// a bucket's).
    pub covered_ms: i64,
    /// The job that held the GPU (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    /// Its attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Utilization, %.
    pub util_pct: Option<Stat>,
    /// Utilization integrated over the interval, ms of full use.
    pub used_ms: i64,
    /// Time under the idle threshold (utilization < 5 %), ms.
    pub idle_ms: i64,
    /// Memory used, MiB.
    pub mem_used_mib: Stat,
    /// Temperature, °C.
    pub temp_c: Option<Stat>,
    /// Power, W.
    pub power_w: Option<Stat>,
    /// Energy used over the interval, mJ (from the counter, else power × time).
    pub energy_mj: Option<i64>,
    /// The most processes seen on the GPU that were not the holder's.
    pub other_processes: u32,
}

/// One GPU's points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The agent that reports it.
    pub host: String,
    /// Its UUID.
    pub uuid: String,
    /// Its NVML index.
    pub index: u32,
    /// Its model.
    pub model: String,
    /// Its total memory, MiB.
    pub memory_total_mib: u64,
    /// Points, oldest first.
    pub points: Vec<TelemetryPoint>,
}

/// `GET /telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySeries {
    /// The resolution of every series.
    pub resolution: Resolution,
    /// Its bucket, ms (0: raw samples).
    pub step_ms: i64,
    /// From, ms since the epoch.
    pub since_ms: i64,
    /// Until, ms since the epoch.
    pub until_ms: i64,
    /// One series per GPU with points in the range.
    pub series: Vec<Series>,
}

const RAW_COLUMNS: &str = "gpu, t, dt, job, attempt, util, mem, temp, power, de, others";

fn stat(min: Option<i64>, mean: Option<f64>, max: Option<i64>) -> Option<Stat> {
    Some(Stat {
        min: min? as f64,
        mean: mean?,
        max: max? as f64,
    })
}

fn raw_point(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, TelemetryPoint)> {
    let dt: i64 = r.get(2)?;
    let util: Option<i64> = r.get(5)?;
    let mem: i64 = r.get(6)?;
    let temp: Option<i64> = r.get(7)?;
    let power: Option<i64> = r.get(8)?;
    let job: i64 = r.get(3)?;
    Ok((
        r.get(0)?,
        TelemetryPoint {
            t_ms: r.get(1)?,
            covered_ms: dt,
            job: (job != 0).then_some(job),
            attempt: (job != 0).then_some(r.get(4)?),
            util_pct: stat(util, util.map(|u| u as f64), util),
            used_ms: util.map_or(0, |u| u * dt / 100),
            idle_ms: if util.is_some_and(|u| u < super::IDLE_BELOW_PCT as i64) {
                dt
            } else {
                0
            },
            mem_used_mib: Stat {
                min: mem as f64,
                mean: mem as f64,
                max: mem as f64,
            },
            temp_c: stat(temp, temp.map(|t| t as f64), temp),
            power_w: stat(power, power.map(|p| p as f64), power),
            energy_mj: r.get(9)?,
            other_processes: r.get(10)?,
        },
    ))
}

/// A row shaped like `m1` (`ROLLUP_COLUMNS`), bucket `step_ms` wide.
fn rollup_point(r: &rusqlite::Row<'_>, step_ms: i64) -> rusqlite::Result<(i64, TelemetryPoint)> {
    let cov: i64 = r.get(4)?;
    let used: i64 = r.get(5)?;
    let job: i64 = r.get(2)?;
    let f = |i: usize| -> rusqlite::Result<Option<f64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as f64))
    };
    let u_min: Option<i64> = r.get(7)?;
    Ok((
        r.get(0)?,
        TelemetryPoint {
            t_ms: r.get::<_, i64>(1)? * step_ms,
            covered_ms: cov,
            job: (job != 0).then_some(job),
            attempt: (job != 0).then_some(r.get(3)?),
            util_pct: u_min.and_then(|_| {
                stat(
                    u_min,
                    (cov > 0).then(|| used as f64 * 100.0 / cov as f64),
                    r.get(8).ok()?,
                )
            }),
            used_ms: used,
            idle_ms: r.get(6)?,
            mem_used_mib: Stat {
                min: r.get::<_, i64>(9)? as f64,
                mean: r.get::<_, i64>(10)? as f64,
                max: r.get::<_, i64>(11)? as f64,
            },
            temp_c: stat(r.get(12)?, f(13)?, r.get(14)?),
            power_w: stat(r.get(15)?, f(16)?, r.get(17)?),
            energy_mj: r.get(18)?,
            other_processes: r.get(19)?,
        },
    ))
}

impl Telemetry {
    /// The series `q` asks for, at the resolution it names or its range
    /// calls for (`now_ms` decides what is still raw).
    pub fn query(&self, q: &TelemetryQuery, now_ms: i64) -> Result<TelemetrySeries> {
        if q.until_ms <= q.since_ms {
            return Err(TelemetryError::BadQuery(format!(
                "since ({} ms) must be before until ({} ms)",
                q.since_ms, q.until_ms
            )));
        }
        let r = &self.retention;
        let span = q.until_ms - q.since_ms;
        let resolution =
            q.resolution
                .unwrap_or(if span <= ms(r.raw) && q.since_ms >= now_ms - ms(r.raw) {
                    Resolution::Raw
                } else if span <= 2 * 86_400_000 && q.since_ms >= now_ms - ms(r.minute) {
                    Resolution::Minute
                } else {
                    Resolution::Quarter
                });
        let conn = self.conn();
        let gpus: Vec<(i64, GpuInfo)> = self
            .gpus(&conn)?
            .into_iter()
            .filter(|(_, g)| {
                q.host.as_ref().is_none_or(|h| *h == g.host)
                    && q.gpu
                        .as_ref()
                        .is_none_or(|x| *x == g.uuid || *x == g.index.to_string())
                    && q.only
                        .as_ref()
                        .is_none_or(|o| o.iter().any(|(h, u)| *h == g.host && *u == g.uuid))
            })
            .collect();
        let mut series = Vec::new();
        let mut total = 0usize;
        for (id, g) in gpus {
            let points = self.points(&conn, id, q, resolution)?;
            total += points.len();
            if total > MAX_POINTS {
                return Err(TelemetryError::BadQuery(format!(
                    "the answer would hold more than {MAX_POINTS} points: name a host or GPU, \
                     shorten the range or ask for a coarser resolution (resolution=1m or 15m)"
                )));
            }
            if !points.is_empty() {
                series.push(Series {
                    host: g.host,
                    uuid: g.uuid,
                    index: g.index,
                    model: g.model,
                    memory_total_mib: g.mem_total_mib,
                    points,
                });
            }
        }
        Ok(TelemetrySeries {
            resolution,
            step_ms: resolution.step_ms(),
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            series,
        })
    }

    fn points(
        &self,
        conn: &Connection,
        gpu: i64,
        q: &TelemetryQuery,
        resolution: Resolution,
    ) -> Result<Vec<TelemetryPoint>> {
        let job = q.job.map(|j| format!(" AND job = {j}")).unwrap_or_default();
        let (since, until) = (q.since_ms, q.until_ms);
        let mut out = Vec::new();
        let mut run = |sql: String, args: Vec<i64>, step: i64| -> Result<()> {
            let mut st = conn.prepare(&sql).map_err(self.sql())?;
            let rows = st
                .query_map(params_from_iter(args), |r| {
                    if step == 0 {
                        raw_point(r)
                    } else {
                        rollup_point(r, step)
                    }
                })
                .map_err(self.sql())?;
            for row in rows {
                out.push(row.map_err(self.sql())?.1);
            }
            Ok(())
        };
        let m1_done = mark(conn, M1_DONE).map_err(self.sql())?;
        let m15_done = mark(conn, M15_DONE).map_err(self.sql())?;
        // The buckets that overlap [since, until).
        let first = |step: i64| since.div_euclid(step);
        let last = |step: i64| (until - 1).div_euclid(step) + 1;
        match resolution {
            Resolution::Raw => run(
                format!(
                    "SELECT {RAW_COLUMNS} FROM raw WHERE gpu = ?1 AND t >= ?2 AND t < ?3{job}
                     ORDER BY t"
                ),
                vec![gpu, since, until],
                0,
            )?,
            Resolution::Minute => {
                let (a, b) = (first(MINUTE_MS), last(MINUTE_MS));
                let split = (m1_done / MINUTE_MS).clamp(a, b);
                run(
                    format!(
                        "SELECT * FROM m1 WHERE gpu = ?1 AND t >= ?2 AND t < ?3{job}
                         ORDER BY t, job, attempt"
                    ),
                    vec![gpu, a, split],
                    MINUTE_MS,
                )?;
                // Not rolled up yet: from the raw samples.
                let tail = raw_to_m1(
                    &(split * MINUTE_MS).to_string(),
                    &(b * MINUTE_MS).to_string(),
                );
                run(
                    format!("SELECT * FROM ({tail}) WHERE gpu = ?1{job} ORDER BY b, job, attempt"),
                    vec![gpu],
                    MINUTE_MS,
                )?;
            }
            Resolution::Quarter => {
                let (a, b) = (first(QUARTER_MS), last(QUARTER_MS));
                let split = (m15_done / QUARTER_MS).clamp(a, b);
                run(
                    format!(
                        "SELECT * FROM m15 WHERE gpu = ?1 AND t >= ?2 AND t < ?3{job}
                         ORDER BY t, job, attempt"
                    ),
                    vec![gpu, a, split],
                    QUARTER_MS,
                )?;
                // Minutes not in quarters yet, and samples not in minutes yet.
                let from = split * QUARTER_MS;
                let mid = m1_done.clamp(from, b * QUARTER_MS);
                let source = format!(
                    "SELECT * FROM m1 WHERE gpu = {gpu} AND t >= {} AND t < {}
                     UNION ALL SELECT * FROM ({}) WHERE gpu = {gpu}",
                    from / MINUTE_MS,
                    mid / MINUTE_MS,
                    raw_to_m1(&mid.to_string(), &(b * QUARTER_MS).to_string())
                );
                let tail = fold(&source, QUARTER_MS / MINUTE_MS);
                run(
                    format!("SELECT * FROM ({tail}) WHERE 1 = 1{job} ORDER BY b, job, attempt"),
                    Vec::new(),
                    QUARTER_MS,
                )?;
            }
        }
        Ok(out)
    }
}
