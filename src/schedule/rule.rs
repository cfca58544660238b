//! The pure parts of a schedule: its cron pattern in an IANA zone (croner),
//! its start window (`22:00-06:00`), and its tag pattern (`v*`). Time is
//! always an argument.

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

use super::ScheduleError;

/// The most occurrences one evaluation walks through (a per-minute pattern
/// over a week of downtime): beyond it, only the most recent are listed.
pub const SCAN_LIMIT: usize = 10_000;

/// A zone by IANA name, or an error naming `field`.
pub fn zone(field: &str, name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|_| {
        ScheduleError::invalid(
            field,
            format!(
                "unknown time zone {name:?}: give an IANA zone name such as Asia/Seoul, \
                 Europe/Berlin or UTC"
            ),
        )
    })
}

/// A cron pattern evaluated in a time zone.
///
/// Five fields (minute hour day-of-month month day-of-week) with croner's
/// extensions (`L`, `#`, `W`, names, `@daily`, `@weekly`, …). Across DST
/// changes croner follows OCPS / Vixie cron: a fixed time that falls in a
/// spring-forward gap runs once, right after the gap; a fixed time that a
/// fall-back overlap repeats runs once, at its first pass; a wildcard or
/// stepped hour or minute runs at each wall-clock match.
#[derive(Debug, Clone)]
pub struct CronRule {
    cron: Cron,
    tz: TimeZone,
}

impl CronRule {
    /// Parse `pattern` for zone `tz`; errors name `cron` or `tz`.
    pub fn parse(pattern: &str, tz: &str) -> Result<CronRule, ScheduleError> {
        let tz = zone("tz", tz)?;
        let trimmed = pattern.trim();
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(ScheduleError::invalid(
                "cron",
                format!(
                    "{pattern:?} has {} fields; a cron pattern has 5 (minute hour day-of-month \
                     month day-of-week), e.g. \"0 3 * * *\", or is @hourly, @daily, @weekly, \
                     @monthly or @yearly",
                    trimmed.split_whitespace().count()
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| {
                ScheduleError::invalid("cron", format!("{pattern:?} is not a cron pattern: {e}"))
            })?;
        let rule = CronRule { cron, tz };
        // A pattern that never matches (30 February) is refused now, not
        // found out at every evaluation.
        if rule.next_after(Timestamp::now()).is_none() {
            return Err(ScheduleError::invalid(
                "cron",
                format!("{pattern:?} never matches a date"),
            ));
        }
        Ok(rule)
    }

    /// The zone.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The next `n` fire times after `t`.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// The fire times in `(after, upto]`, oldest first: at most `keep`, the
    /// most recent, and how many there were in all (counting stops at
    /// [`SCAN_LIMIT`], so a count of `SCAN_LIMIT` means at least that many).
    pub fn between(
        &self,
        after: Timestamp,
        upto: Timestamp,
        keep: usize,
    ) -> (Vec<Timestamp>, usize) {
        let mut kept = std::collections::VecDeque::with_capacity(keep.min(1024));
        let mut total = 0usize;
        let mut at = after;
        while let Some(next) = self.next_after(at) {
            if next > upto {
                break;
            }
            total += 1;
            if kept.len() == keep {
                kept.pop_front();
            }
            if keep > 0 {
                kept.push_back(next);
            }
            at = next;
            if total >= SCAN_LIMIT {
                // Too many to walk: the most recent are found from the far
                // end; what lies between is counted no further.
                let mut recent = Vec::with_capacity(keep);
                let mut cur = upto.to_zoned(self.tz.clone());
                let mut inclusive = true;
                while recent.len() < keep {
                    match self.cron.find_previous_occurrence(&cur, inclusive) {
                        Ok(p) if p.timestamp() > at => {
                            recent.push(p.timestamp());
                            cur = p;
                        }
                        _ => break,
                    }
                    inclusive = false;
                }
                // Fewer than `keep` beyond the walk: the walk's last ones
                // complete them.
                let need = keep - recent.len();
                recent.extend(kept.iter().rev().take(need));
                recent.sort();
                return (recent, total);
            }
        }
        (kept.into_iter().collect(), total)
    }
}

/// A daily start window in the schedule's zone, `HH:MM-HH:MM`; an end at or
/// before the start runs past midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Opens at this wall-clock time.
    pub start: Time,
    /// Closes at this wall-clock time (the next day when not after `start`).
    pub end: Time,
}

impl Window {
    /// Parse `22:00-06:00`; errors name `window`.
    pub fn parse(text: &str) -> Result<Window, ScheduleError> {
        let bad = || {
            ScheduleError::invalid(
                "window",
                format!("{text:?} is not a window like 22:00-06:00 (HH:MM-HH:MM, 24-hour clock)"),
            )
        };
        let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
        let time = |s: &str| -> Result<Time, ScheduleError> {
            let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return Err(bad());
            }
            let h: i8 = h.parse().map_err(|_| bad())?;
            let m: i8 = m.parse().map_err(|_| bad())?;
            Time::new(h, m, 0, 0).map_err(|_| bad())
        };
        let w = Window {
            start: time(a)?,
            end: time(b)?,
        };
        if w.start == w.end {
            return Err(ScheduleError::invalid(
                "window",
                format!("{text:?} is empty: its start and end are the same time"),
            ));
        }
        Ok(w)
    }

    /// The window a job fired at `t` may start in: the one open at `t`, else
    /// the next to open. (start, end) as instants; a wall-clock time that a
    /// DST change skips is taken as the instant after the gap.
    pub fn bounds(&self, t: Timestamp, tz: &TimeZone) -> (Timestamp, Timestamp) {
        let day = t.to_zoned(tz.clone()).date();
        let at = |d: jiff::civil::Date, time: Time| -> Timestamp {
            tz.to_ambiguous_zoned(d.to_datetime(time))
                .compatible()
                .map(|z: Zoned| z.timestamp())
                .unwrap_or(t)
        };
        // Windows opening yesterday, today and tomorrow cover every `t`.
        for offset in [-1i64, 0, 1, 2] {
            let Ok(open_day) = day.checked_add(offset.days()) else {
                continue;
            };
            let close_day = if self.end <= self.start {
                match open_day.checked_add(1.day()) {
                    Ok(d) => d,
                    Err(_) => continue,
                }
            } else {
                open_day
            };
            let (s, e) = (at(open_day, self.start), at(close_day, self.end));
            if e > t {
                return (s.max(t), e);
            }
        }
        (t, t)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start.hour(),
            self.start.minute(),
            self.end.hour(),
            self.end.minute()
        )
    }
}

/// Whether `name` matches the glob `pattern` (`*` any run of characters,
/// `?` one character; everything else literally).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Check a tag pattern; errors name `tag_pattern`.
pub fn check_tag_pattern(pattern: &str) -> Result<(), ScheduleError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 128
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*' | b'?'));
    if ok {
        Ok(())
    } else {
        Err(ScheduleError::invalid(
            "tag_pattern",
            format!(
                "{pattern:?} is not a tag pattern: tag characters (letters, digits, '.', '_', \
                 '-') with '*' and '?' wildcards, e.g. 'v*'"
            ),
        ))
    }
}
