//! Child processes that die with the test (or with the process that started them),
//! free ports, and waiting on observable state.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (released for the caller to bind). Panics only
/// when no loopback port can be bound at all.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Makes the process `cmd` starts receive SIGTERM when the thread that spawns it
/// ends (a panic, a killed benchmark), so no broker or simulator outlives its run.
/// Spawn from the thread that owns the child for its whole life.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A spawned child that is killed when dropped, even when the test panics.
pub struct ChildGuard {
    /// The process.
    pub child: Option<Child>,
}

impl ChildGuard {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (libc constant) to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) has no memory effects; the pid is our own child's.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for exit with a timeout; returns the output (stdout/stderr if piped). Kills on timeout.
    pub fn wait_output(&mut self, timeout: Duration) -> Option<Output> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return child.wait_with_output().ok(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let out = child.wait_with_output().ok();
                    panic!(
                        "process did not exit within {timeout:?}; stderr: {}",
                        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                            .unwrap_or_default()
                    );
                }
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with stdout and stderr piped, killed on drop.
pub fn spawn(cmd: &mut Command) -> ChildGuard {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    ChildGuard { child: Some(child) }
}

/// Runs `cmd` to completion within `timeout` (panics when it takes longer).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    spawn(cmd).wait_output(timeout).expect("output")
}

/// Polls `cond` every 20 ms until it holds; false if `timeout` passes first.
/// For state that has no event to await (rows in a database, files on disk).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `env` with each of `extra` set, replacing an earlier value of the same variable.
pub fn env_with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_with_replaces_earlier_values() {
        let env = vec![("A".to_string(), "1".to_string()), ("B".into(), "2".into())];
        let env = env_with(env, &[("A", "3"), ("C", "4")]);
        let want: Vec<(String, String)> = [("B", "2"), ("A", "3"), ("C", "4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn wait_until_reports_a_timeout_as_false() {
        assert!(!wait_until(Duration::from_millis(50), || false));
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n > 2
        }));
    }

    #[test]
    fn a_child_guard_kills_on_drop() {
        let mut guard = spawn(Command::new("sleep").arg("30"));
        assert!(guard.is_running());
        let pid = guard.pid() as i32;
        drop(guard);
        // SAFETY: signal 0 only checks that the pid exists; it was our reaped child.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "sleep {pid} survived its guard");
    }
}
