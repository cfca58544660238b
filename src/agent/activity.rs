//! What an attempt's processes are doing besides the GPU: their CPU use
//! and their reads and writes per second, summed over the processes of
//! its process group and cgroup, from `/proc/PID/stat` (user + system
//! time) and `/proc/PID/io` (`rchar` + `wchar`: every byte read or
//! written through a system call — files, page cache, pipes and sockets,
//! so a download counts as much as a disk read). The idle policy
//! (`crate::idle`) treats a job that is busy this way as loading data,
//! not idle. Linux only; elsewhere nothing is reported.

use std::collections::HashMap;

use crate::api::GroupSample;
use crate::queue::JobId;

/// `/proc` reports CPU times in USER_HZ, which Linux fixes at 100 for
/// user space whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

/// A process's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// User + system CPU time, ticks.
    pub cpu_ticks: u64,
    /// Bytes read and written through system calls.
    pub io_bytes: u64,
}

/// The counters of `pid`, if it still exists. A process of another user
/// whose `io` cannot be read counts no I/O.
pub fn read(pid: u32) -> Option<Counters> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Counters {
        cpu_ticks: cpu_ticks(&stat)?,
        io_bytes: std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .map_or(0, |s| io_bytes(&s)),
    })
}

/// utime + stime of a `/proc/PID/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command: state(3) ppid pgrp session tty tpgid
    // flags minflt cminflt majflt cmajflt utime(14) stime(15).
    let rest = stat.rsplit_once(") ")?.1;
    let mut f = rest.split(' ').skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// rchar + wchar of a `/proc/PID/io` file.
fn io_bytes(io: &str) -> u64 {
    io.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "rchar" | "wchar")
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Turns successive readings into rates per attempt.
#[derive(Debug, Default)]
pub struct GroupMeter {
    last: HashMap<u32, Counters>,
}

impl GroupMeter {
    /// The rates of each attempt over the `dt_ms` since the previous call,
    /// given its processes now (`owners`: pid → attempt) and a reader of
    /// a process's counters. A process seen for the first time counts
    /// from zero (it started within the interval, or the meter did); one
    /// that is gone counts no more.
    pub fn sample(
        &mut self,
        owners: &HashMap<u32, (JobId, u32)>,
        dt_ms: u32,
        read: impl Fn(u32) -> Option<Counters>,
    ) -> Vec<GroupSample> {
        let mut sums: HashMap<(JobId, u32), Counters> = HashMap::new();
        let mut now = HashMap::new();
        for (pid, owner) in owners {
            let Some(c) = read(*pid) else { continue };
            let before = self.last.get(pid).copied().unwrap_or_default();
            let s = sums.entry(*owner).or_default();
            s.cpu_ticks += c.cpu_ticks.saturating_sub(before.cpu_ticks);
            s.io_bytes += c.io_bytes.saturating_sub(before.io_bytes);
            now.insert(*pid, c);
        }
        let first = self.last.is_empty();
        self.last = now;
        if first || dt_ms == 0 {
            // No previous reading: a rate would be everything since the
            // processes started.
            return Vec::new();
        }
        let mut out: Vec<GroupSample> = sums
            .into_iter()
            .map(|((job, attempt), c)| GroupSample {
                job,
                attempt,
                cpu_pct: (c.cpu_ticks as f64 * 1000.0 / USER_HZ as f64) * 100.0 / dt_ms as f64,
                io_bytes_per_s: c.io_bytes.saturating_mul(1000) / u64::from(dt_ms),
            })
            .collect();
        out.sort_by_key(|g| (g.job, g.attempt));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_io_fields_are_read_where_the_kernel_puts_them() {
        let stat =
            "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 777 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        let io = "rchar: 1000\nwchar: 24\nsyscr: 5\nsyscw: 1\nread_bytes: 4096\nwrite_bytes: 0\ncancelled_write_bytes: 0\n";
        assert_eq!(io_bytes(io), 1024);
        // This very process can be read.
        let me = read(std::process::id()).expect("own /proc entry");
        assert!(me.io_bytes > 0);
    }

    #[test]
    fn rates_are_per_attempt_over_the_interval() {
        let owners = HashMap::from([
            (10, (JobId(1), 1)),
            (11, (JobId(1), 1)),
            (20, (JobId(2), 3)),
        ]);
        let mut m = GroupMeter::default();
        let at = |t: u64| {
            move |pid: u32| match pid {
                10 => Some(Counters {
                    cpu_ticks: 100 * t,
                    io_bytes: 0,
                }),
                11 => Some(Counters {
                    cpu_ticks: 50 * t,
                    io_bytes: (10 << 20) * t,
                }),
                20 if t < 2 => Some(Counters {
                    cpu_ticks: 5,
                    io_bytes: 5,
                }),
                _ => None,
            }
        };
        assert!(m.sample(&owners, 1000, at(0)).is_empty());
        let g = m.sample(&owners, 1000, at(1));
        assert_eq!(g.len(), 2);
        // 150 ticks in 1 s = 1.5 cores.
        assert_eq!((g[0].job, g[0].attempt), (JobId(1), 1));
        assert!((g[0].cpu_pct - 150.0).abs() < 1e-9, "{}", g[0].cpu_pct);
        assert_eq!(g[0].io_bytes_per_s, 10 << 20);
        assert_eq!(g[1].cpu_pct, 0.0);
        // Over 2 s; job 2's process is gone.
        let g = m.sample(&owners, 2000, at(2));
        assert_eq!(g.len(), 1);
        assert!((g[0].cpu_pct - 75.0).abs() < 1e-9);
        assert_eq!(g[0].io_bytes_per_s, 5 << 20);
    }
}
