//! The `txpipe` binary as a child process whose stderr is read line by line
//! while it runs, so a test can kill it at a moment it announces.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

pub struct Running {
    child: Child,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

pub fn spawn(args: &[&str], env: &[(String, String)]) -> Running {
    spawn_in(Path::new("."), args, env)
}

/// [`spawn`] with `dir` as the working directory.
pub fn spawn_in(dir: &Path, args: &[&str], env: &[(String, String)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_txpipe"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        // Many children run at once: no HTTP endpoints unless a test asks.
        .env("TXPIPE__HTTP__LISTEN", "")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        log: Vec::new(),
    }
}

pub enum Waited {
    /// The line appeared (the process is still running).
    Seen,
    /// The process exited first.
    Exited(ExitStatus),
    TimedOut,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stderr line contains `needle` `times` times.
    pub fn wait_for(&mut self, needle: &str, times: usize, timeout: Duration) -> Waited {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.log.push(line);
                    if hit {
                        seen += 1;
                        if seen >= times {
                            return Waited::Seen;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        self.drain();
                        return Waited::Exited(status);
                    }
                    if Instant::now() >= deadline {
                        return Waited::TimedOut;
                    }
                }
            }
        }
    }

    /// Waits up to `time`; returns the exit status if the process ended.
    pub fn run_for(&mut self, time: Duration) -> Option<ExitStatus> {
        match self.wait_for("\u{0}never\u{0}", 1, time) {
            Waited::Exited(status) => Some(status),
            _ => None,
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
        self.log
    }

    /// Sends a signal (e.g. `"TERM"`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own.
    pub fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, Vec<String>) {
        let status = self.run_for(timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.drain();
        (status, self.log)
    }

    /// Peak resident memory so far (VmHWM), in bytes, while it runs.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Collects the lines still on their way after the process ended: the
    /// reader thread may not have passed on the last ones yet (a test once
    /// missed the final "shutdown complete"), so read until it sees the
    /// pipe's end, which comes as soon as the process is gone.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.log.push(line);
        }
    }
}

/// Waits for a line containing `needle`; panics with the log if the
/// process exits first or it does not come within `timeout`.
pub fn expect_line(running: &mut Running, needle: &str, timeout: Duration) {
    match running.wait_for(needle, 1, timeout) {
        Waited::Seen => {}
        Waited::Exited(status) => panic!(
            "exited ({status}) before {needle:?}:\n{}",
            running.log.join("\n")
        ),
        Waited::TimedOut => panic!("no {needle:?}:\n{}", running.log.join("\n")),
    }
}

/// Waits (up to two minutes) for the process to exit, which it must do
/// successfully; returns its log.
pub fn finish(running: Running) -> Vec<String> {
    let (status, log) = running.wait(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        log.join("\n")
    );
    log
}

/// Whether a line of `log` contains `needle`.
pub fn said(log: &[String], needle: &str) -> bool {
    log.iter().any(|line| line.contains(needle))
}
