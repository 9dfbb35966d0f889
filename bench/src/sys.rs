//! Small facts about this machine and its processes, read from /proc.

use std::net::{SocketAddr, TcpListener};

/// Linux reports process times in USER_HZ ticks, which is 100 on every architecture it runs
/// on (it is a fixed part of the user ABI, apart from the kernel's internal HZ).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, all threads) used so far by these processes; a process that is
/// gone counts 0.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|&pid| process_ticks(pid).unwrap_or(0) as f64 / USER_HZ)
        .sum()
}

fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPUs a process may run on (`Cpus_allowed_list` in /proc/PID/status, e.g. `0-1`).
pub fn cpus_allowed(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// Each CPU's (busy, total) time so far in USER_HZ ticks, from /proc/stat (`cpuN` lines; busy is
/// everything but idle and iowait), indexed by CPU number; CPUs /proc/stat does not list are
/// (0, 0).
pub fn cpu_ticks_by_cpu() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest time is inside user already).
        let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        if v.len() < 8 || cpu >= 4096 {
            continue;
        }
        let total: u64 = v.iter().sum();
        let idle = v[3] + v[4];
        if out.len() <= cpu {
            out.resize(cpu + 1, (0, 0));
        }
        out[cpu] = (total - idle, total);
    }
    out
}

/// Each CPU's busy share between two `cpu_ticks_by_cpu` readings (0..=1; 0 where no time passed).
pub fn busy_between(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    after
        .iter()
        .enumerate()
        .map(|(i, &(busy, total))| {
            let (b0, t0) = before.get(i).copied().unwrap_or((busy, total));
            let dt = total.saturating_sub(t0);
            if dt == 0 {
                0.0
            } else {
                busy.saturating_sub(b0) as f64 / dt as f64
            }
        })
        .collect()
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The kernel release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU model name.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Online CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Whether this process runs as root (memcached then needs `-u root`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A loopback TCP port that was free a moment ago (the kernel picks it).
pub fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_a_missing_one_none() {
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(process_ticks(std::process::id()).is_some());
        assert!(cpus_allowed(std::process::id()).is_some_and(|c| !c.is_empty()));
        assert_eq!(cpus_allowed(u32::MAX), None);
        assert_eq!(cpu_seconds(&[u32::MAX]), 0.0);
    }

    #[test]
    fn machine_facts_are_readable() {
        assert!(cpus() >= 1);
        assert!(load_average().is_some());
        let before = cpu_ticks_by_cpu();
        assert!(before.len() >= cpus());
        let busy = busy_between(&before, &cpu_ticks_by_cpu());
        assert!(busy.iter().all(|b| (0.0..=1.0).contains(b)), "{busy:?}");
        assert!(free_port().unwrap().port() > 0);
    }
}
