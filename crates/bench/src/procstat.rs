//! What a process costs, read from /proc and from wait4's resource usage: resident
//! memory, CPU time, the open-file limit; and child processes that are waited for
//! with a deadline while their usage is collected.

use anyhow::{bail, Result};
use std::process::Child;
use std::time::{Duration, Instant};

/// Sends a signal to a process we started.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; the pid is one of our own children.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A command whose process gets SIGTERM when the benchmark dies (a closed pipe, a
/// panic), so no broker or simulator outlives the run that started it.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    testkit::die_with_parent(&mut cmd);
    cmd
}

/// VmRSS of a running process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a running process (all its threads), seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = Stat::read(pid)?;
    Some((stat.utime + stat.stime) / clock_ticks())
}

/// CPU seconds of a process and all its descendants, living or reaped: a database
/// server's connections come and go as processes of their own (PostgreSQL), and
/// one that has ended is counted in its parent's cutime/cstime once reaped.
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let all: Vec<(u32, Stat)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, Stat::read(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut ticks = 0.0;
    let mut found = false;
    while let Some(pid) = tree.pop() {
        if let Some((_, s)) = all.iter().find(|(p, _)| *p == pid) {
            found = true;
            ticks += s.utime + s.stime + s.cutime + s.cstime;
        }
        tree.extend(all.iter().filter(|(_, s)| s.ppid == pid).map(|(p, _)| *p));
    }
    found.then(|| ticks / clock_ticks())
}

/// The fields of /proc/PID/stat used here, in clock ticks.
struct Stat {
    ppid: u32,
    utime: f64,
    stime: f64,
    cutime: f64,
    cstime: f64,
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 4 and 14 to 17 of stat(5), counted after pid and comm: indexes 1 and 11 to 14.
        let num = |i: usize| fields.get(i)?.parse::<f64>().ok();
        Some(Stat {
            ppid: fields.get(1)?.parse().ok()?,
            utime: num(11)?,
            stime: num(12)?,
            cutime: num(13)?,
            cstime: num(14)?,
        })
    }
}

/// The machine's CPU time from /proc/stat, in clock ticks summed over every core:
/// (busy, all). Busy is everything but idle and iowait.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((all - idle, all))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The soft open-file limit of a running process.
pub fn open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU and memory between two samples of a running process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    cpu: f64,
}

impl Sample {
    /// Samples the process now.
    pub fn take(pid: u32) -> Option<Sample> {
        Some(Sample {
            at: Instant::now(),
            cpu: cpu_seconds(pid)?,
        })
    }

    /// Percent of one core used since `self`.
    pub fn cpu_percent_until(&self, later: &Sample) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        100.0 * (later.cpu - self.cpu) / wall
    }
}

/// How a child ended and what it used over its whole life.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// When it was reaped.
    pub at: Instant,
    /// User + system CPU, seconds.
    pub cpu: f64,
    /// Peak resident memory, KiB.
    pub max_rss_kib: u64,
}

/// Waits for a child with a deadline, without blocking past it; Ok(None) on timeout.
/// The child is reaped here (with its resource usage), so do not wait on it again.
pub fn wait_until(child: &Child, deadline: Instant) -> Result<Option<Ended>> {
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid value; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pointers to live locals; WNOHANG never blocks.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok(Some(Ended {
                code,
                at: Instant::now(),
                cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
                max_rss_kib: usage.ru_maxrss as u64,
            }));
        }
        if r < 0 {
            bail!(
                "waiting for process {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGTERM, then SIGKILL if it has not ended within `grace`.
pub fn terminate(child: &Child, grace: Duration) -> Result<Ended> {
    signal(child.id(), libc::SIGTERM);
    if let Some(e) = wait_until(child, Instant::now() + grace)? {
        return Ok(e);
    }
    signal(child.id(), libc::SIGKILL);
    wait_until(child, Instant::now() + Duration::from_secs(5))?
        .ok_or_else(|| anyhow::anyhow!("process {} survived SIGKILL", child.id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(open_file_limit(me).unwrap() > 0);
        let (busy, all) = machine_ticks().unwrap();
        assert!(busy <= all && all > 0);
    }

    #[test]
    fn a_tree_counts_its_reaped_children() {
        let me = std::process::id();
        let (before, own_before) = (tree_cpu_seconds(me).unwrap(), cpu_seconds(me).unwrap());
        // A child that burns CPU and is reaped: its time moves into our cstime/cutime.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let (after, own_after) = (tree_cpu_seconds(me).unwrap(), cpu_seconds(me).unwrap());
        let children = (after - before) - (own_after - own_before);
        assert!(
            children >= 0.05,
            "{before} -> {after}, own {own_before} -> {own_after}"
        );
        assert!(tree_cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    // wait_until reaps the child with wait4, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn waits_for_a_child_with_its_usage() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let ended = wait_until(&child, Instant::now() + Duration::from_secs(10))
            .unwrap()
            .expect("sh exits at once");
        assert_eq!(ended.code, 3);
        assert!(ended.max_rss_kib > 0);
    }
}
