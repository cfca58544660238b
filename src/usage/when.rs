//! Reading `--since`/`--until` and time zone names.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use super::UsageError;

/// Which end of a range a value bounds: a date means its first instant as a
/// start, and the first instant of the next day as an end (so
/// `--until 2026-11-30` includes the 30th).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    Start,
    End,
}

/// An IANA zone from the system's database.
pub fn parse_zone(name: &str) -> Result<TimeZone, UsageError> {
    TimeZone::get(name).map_err(|e| UsageError::UnknownZone {
        zone: name.to_string(),
        reason: e.to_string(),
    })
}

/// `--since`: the first instant counted, ms since the epoch.
pub fn parse_since(field: &str, s: &str, tz: &TimeZone, now: Timestamp) -> Result<i64, UsageError> {
    parse(field, s, tz, now, Edge::Start)
}

/// `--until`: the first instant not counted, ms since the epoch.
pub fn parse_until(field: &str, s: &str, tz: &TimeZone, now: Timestamp) -> Result<i64, UsageError> {
    parse(field, s, tz, now, Edge::End)
}

fn parse(
    field: &str,
    s: &str,
    tz: &TimeZone,
    now: Timestamp,
    edge: Edge,
) -> Result<i64, UsageError> {
    let bad = |reason: String| UsageError::BadDate {
        field: field.to_string(),
        value: s.to_string(),
        reason,
    };
    let s = s.trim();
    let zoned = |dt: DateTime| -> Result<Zoned, UsageError> {
        dt.to_zoned(tz.clone()).map_err(|e| bad(e.to_string()))
    };
    let day = |d: Date| -> Result<i64, UsageError> {
        let d = match edge {
            Edge::Start => d,
            Edge::End => d.tomorrow().map_err(|e| bad(e.to_string()))?,
        };
        Ok(zoned(d.to_datetime(jiff::civil::Time::midnight()))?
            .timestamp()
            .as_millisecond())
    };
    match s {
        "now" => return Ok(now.as_millisecond()),
        "today" => return day(now.to_zoned(tz.clone()).date()),
        _ => {}
    }
    // An age: 7d, 12h, 90min (humantime's units), counted back from now.
    if s.starts_with(|c: char| c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_alphabetic())
        && !s.contains('-')
    {
        let d = humantime::parse_duration(s).map_err(|e| bad(e.to_string()))?;
        let ms = i64::try_from(d.as_millis()).map_err(|e| bad(e.to_string()))?;
        return Ok(now.as_millisecond() - ms);
    }
    // A month: 2026-11.
    if s.len() == 7 && s.as_bytes()[4] == b'-' {
        let d: Date = format!("{s}-01")
            .parse()
            .map_err(|e: jiff::Error| bad(e.to_string()))?;
        let d = match edge {
            Edge::Start => d,
            Edge::End => d.last_of_month(),
        };
        return day(d);
    }
    if let Ok(d) = s.parse::<Date>() {
        if s.len() == 10 {
            return day(d);
        }
    }
    // An instant with an offset (RFC 3339), else a civil time in the zone.
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let dt: DateTime = s.parse().map_err(|e: jiff::Error| bad(e.to_string()))?;
    Ok(zoned(dt)?.timestamp().as_millisecond())
}

/// Both ends at once, checked to be in order. `names` are how the caller
/// calls them (`["--since", "--until"]` on the command line).
pub fn parse_range(
    names: [&str; 2],
    since: Option<&str>,
    until: Option<&str>,
    tz: &TimeZone,
    now: Timestamp,
    default_since: i64,
) -> Result<(i64, i64), UsageError> {
    let a = match since {
        Some(s) => parse_since(names[0], s, tz, now)?,
        None => default_since,
    };
    let b = match until {
        Some(s) => parse_until(names[1], s, tz, now)?,
        None => now.as_millisecond(),
    };
    if a > b {
        return Err(UsageError::SinceAfterUntil {
            names: [names[0].to_string(), names[1].to_string()],
            since: since.map_or_else(|| "default".into(), str::to_string),
            until: until.unwrap_or("now").to_string(),
        });
    }
    Ok((a, b))
}
