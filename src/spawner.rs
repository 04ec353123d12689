//! Starts kubelet from one dedicated, long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process
//! (research/anchors.md §3.5). Spawning from a tokio blocking-pool thread would kill kubelet when
//! that idle thread is reaped, so every kubelet is forked by this thread, which lives as long as
//! the agent. The fork/prctl race (agent dies between fork and prctl) is closed by comparing the
//! parent pid recorded before the fork with `getppid()` after the prctl.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use tokio::sync::oneshot;

/// How a kubelet process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// When the agent saw it end.
    pub at: Instant,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => write!(f, "signal {sig}"),
            (None, None) => f.write_str("unknown status"),
        }
    }
}

/// A started kubelet: its pid and a receiver that resolves when it has exited and been reaped.
#[derive(Debug)]
pub struct Child {
    /// Process id.
    pub pid: u32,
    /// When it was started.
    pub started: Instant,
    /// Resolves once the process has exited.
    pub exited: oneshot::Receiver<ExitInfo>,
}

struct Request {
    argv: Vec<String>,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Handle to the spawner thread.
#[derive(Debug, Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Request>,
}

impl Spawner {
    /// Starts the dedicated spawner thread.
    pub fn start() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("kubelet-spawner".into())
            .spawn(move || serve(rx))?;
        Ok(Spawner { tx })
    }

    /// Execs `argv[0]` directly (no shell) with `argv[1..]`; stdout/stderr are the agent's.
    pub async fn spawn(&self, argv: Vec<String>) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { argv, reply })
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("spawner thread dropped the request"))?
    }
}

fn serve(rx: mpsc::Receiver<Request>) {
    // One kubelet at a time: this thread waits for each child before taking the next request,
    // so it stays alive (and PDEATHSIG armed) for as long as any kubelet runs.
    while let Ok(Request { argv, reply }) = rx.recv() {
        match spawn_one(&argv) {
            Ok(mut child) => {
                let (exit_tx, exit_rx) = oneshot::channel();
                let pid = child.id();
                let started = Instant::now();
                if reply
                    .send(Ok(Child {
                        pid,
                        started,
                        exited: exit_rx,
                    }))
                    .is_err()
                {
                    let _ = child.kill();
                }
                let info = match child.wait() {
                    Ok(status) => ExitInfo {
                        code: status.code(),
                        signal: status.signal(),
                        at: Instant::now(),
                    },
                    Err(_) => ExitInfo {
                        code: None,
                        signal: None,
                        at: Instant::now(),
                    },
                };
                let _ = exit_tx.send(info);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

fn spawn_one(argv: &[String]) -> io::Result<std::process::Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty kubelet argv"))?;
    let parent = nix::unistd::getpid().as_raw();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions
    // (prctl, getppid, raise) without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The agent died before the death signal was armed.
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    cmd.spawn()
}
