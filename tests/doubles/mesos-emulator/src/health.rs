//! The executor-side health checker (Mesos `src/checks/checker_process.cpp`): one probe at a time,
//! first after `delay`, then `interval` after each probe completes.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::Msg;

#[derive(Debug, Clone)]
pub enum Probe {
    /// `curl ... <url>`
    Http {
        url: String,
    },
    Tcp {
        addr: SocketAddr,
    },
    /// `sh -c <command>` in the task's environment and sandbox.
    Command {
        command: String,
        env: Vec<(String, String)>,
        cwd: String,
    },
}

impl Probe {
    pub fn describe(&self) -> String {
        match self {
            Probe::Http { url } => format!("curl {url}"),
            Probe::Tcp { addr } => format!("tcp {addr}"),
            Probe::Command { command, .. } => format!("sh -c {command}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub probe: Probe,
    pub delay: f64,
    pub interval: f64,
    pub timeout: f64,
    pub grace: f64,
    pub max_failures: u32,
}

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub healthy: bool,
    pub status: Option<u32>,
    pub message: String,
}

/// Sleeps up to `secs`, returning early (false) when `stop` is set.
fn sleep_unless(stop: &AtomicBool, secs: f64) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    while Instant::now() < end {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    !stop.load(Ordering::SeqCst)
}

pub fn spawn_checker(cfg: CheckConfig, stop: Arc<AtomicBool>, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        if !sleep_unless(&stop, cfg.delay) {
            return;
        }
        loop {
            let r = run_probe(&cfg.probe, cfg.timeout);
            if stop.load(Ordering::SeqCst) || tx.send(Msg::Health(r)).is_err() {
                return;
            }
            if !sleep_unless(&stop, cfg.interval) {
                return;
            }
        }
    });
}

/// Runs a child to completion, killing it after `timeout` seconds (0 = no timeout).
fn run_with_timeout(mut cmd: Command, timeout: f64) -> Result<(i32, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to run probe: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        (s, e)
    });
    // The checker's own deadline; curl's --max-time normally fires first.
    let deadline = (timeout > 0.0).then(|| Instant::now() + Duration::from_secs_f64(timeout + 1.0));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("wait failed: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("probe timed out after {timeout}s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    match status.code() {
        Some(c) => Ok((c, format!("{}{}", stdout.trim(), stderr.trim()))),
        None => Err("probe killed by a signal".into()),
    }
}

pub fn run_probe(probe: &Probe, timeout: f64) -> ProbeResult {
    match probe {
        Probe::Http { url } => {
            let mut cmd = Command::new("curl");
            cmd.args([
                "-s",
                "-S",
                "-L",
                "-k",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                "-g",
            ]);
            if timeout > 0.0 {
                cmd.arg("--max-time").arg(format!("{timeout}"));
            }
            cmd.arg(url);
            // No proxies or other surprises from the emulator's own environment.
            cmd.env_clear()
                .env("PATH", crate::app::HOST_DEFAULT_PATH)
                .env("NO_PROXY", "*");
            match run_with_timeout(cmd, timeout) {
                Ok((0, out)) => {
                    let code_str: String = out.chars().take_while(|c| c.is_ascii_digit()).collect();
                    match code_str.parse::<u32>() {
                        Ok(code) => ProbeResult {
                            healthy: (200..400).contains(&code),
                            status: Some(code),
                            message: format!("HTTP {code}"),
                        },
                        Err(_) => ProbeResult {
                            healthy: false,
                            status: None,
                            message: format!("unexpected curl output: {out}"),
                        },
                    }
                }
                Ok((c, out)) => ProbeResult {
                    healthy: false,
                    status: None,
                    message: format!("curl exited {c}: {out}"),
                },
                Err(e) => ProbeResult {
                    healthy: false,
                    status: None,
                    message: e,
                },
            }
        }
        Probe::Tcp { addr } => {
            let t = if timeout > 0.0 {
                Duration::from_secs_f64(timeout)
            } else {
                Duration::from_secs(3600)
            };
            match TcpStream::connect_timeout(addr, t) {
                Ok(_) => ProbeResult {
                    healthy: true,
                    status: None,
                    message: format!("connected to {addr}"),
                },
                Err(e) => ProbeResult {
                    healthy: false,
                    status: None,
                    message: format!("connect to {addr}: {e}"),
                },
            }
        }
        Probe::Command { command, env, cwd } => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(command)
                .env_clear()
                .envs(env.iter().cloned())
                .current_dir(cwd);
            match run_with_timeout(cmd, timeout) {
                Ok((0, _)) => ProbeResult {
                    healthy: true,
                    status: None,
                    message: "command exited 0".into(),
                },
                Ok((c, _)) => ProbeResult {
                    healthy: false,
                    status: None,
                    message: format!("command exited {c}"),
                },
                Err(e) => ProbeResult {
                    healthy: false,
                    status: None,
                    message: e,
                },
            }
        }
    }
}
