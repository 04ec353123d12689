//! Test helpers: run the emulator, read its events, a tiny HTTP server, process guards.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_mesos-task-emulator");

/// Writes `app` as `app.json` in `dir`.
pub fn write_app(dir: &Path, app: &Value) -> PathBuf {
    let p = dir.join("app.json");
    std::fs::write(&p, serde_json::to_vec_pretty(app).unwrap()).unwrap();
    p
}

fn kill(pid: i32, sig: i32) {
    if pid > 1 {
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Is `pid` alive (present and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !(state.starts_with('Z') || state.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// A running emulator. Dropping it kills the emulator, the task's process group and every pid
/// registered with `own`.
pub struct Emu {
    child: Child,
    rx: Receiver<Value>,
    pub events: Vec<Value>,
    pub task_pid: Option<i32>,
    owned: Arc<Mutex<Vec<i32>>>,
    pub status: Option<ExitStatus>,
}

impl Emu {
    pub fn start(app: &Path, args: &[&str]) -> Emu {
        let mut child = Command::new(BIN)
            .arg("--app")
            .arg(app)
            .args(args)
            // Must never reach the task: Mesos does not pass the agent's environment.
            .env("EMULATOR_TEST_LEAK", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn emulator");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                // With --inherit-stdio the task's own output shares our stdout.
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "_raw", "line": line}));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Emu {
            child,
            rx,
            events: Vec::new(),
            task_pid: None,
            owned: Arc::new(Mutex::new(Vec::new())),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Registers a pid for cleanup on drop.
    pub fn own(&self, pid: i32) {
        self.owned.lock().unwrap().push(pid);
    }

    /// Waits for the next event named `name` (earlier events of other kinds are kept in `events`).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.events.push(v.clone());
                    if v["event"] == "launched" {
                        self.task_pid = v["pid"].as_i64().map(|p| p as i32);
                    }
                    if v["event"] == name {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no {name:?} event within {timeout:?}; events so far: {:#?}",
                    self.events
                ),
            }
        }
    }

    pub fn launched(&mut self) -> Value {
        self.wait_event("launched", Duration::from_secs(5))
    }

    /// Events named `name` seen so far.
    pub fn seen(&self, name: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// Waits for the emulator to exit (bounded) and drains remaining events.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(200)) {
                    self.events.push(v);
                }
                self.status = Some(st);
                return st;
            }
            assert!(
                Instant::now() < end,
                "emulator did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(p) = self.task_pid {
            // The task leads its own process group and session.
            kill(-p, libc::SIGKILL);
        }
        for &p in self.owned.lock().unwrap().iter() {
            if alive(p) {
                kill(p, libc::SIGKILL);
            }
        }
    }
}

/// A loopback HTTP server answering every request with the current `status`.
pub struct HttpServer {
    pub port: u16,
    pub status: Arc<AtomicU16>,
    pub hits: Arc<AtomicU16>,
}

impl HttpServer {
    pub fn start(initial: u16) -> HttpServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(initial));
        let hits = Arc::new(AtomicU16::new(0));
        let (s2, h2) = (status.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h2.fetch_add(1, Ordering::SeqCst);
                let code = s2.load(Ordering::SeqCst);
                let _ = write!(
                    c,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        HttpServer { port, status, hits }
    }

    pub fn set(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
}

/// A loopback port with nothing listening on it.
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Reads a pid written by the task into `file`, waiting up to 3 s.
pub fn read_pid(file: &Path) -> i32 {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(s) = std::fs::read_to_string(file)
            && let Ok(p) = s.trim().parse()
        {
            return p;
        }
        assert!(Instant::now() < end, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `env` output (one `K=V` a line) into pairs.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Waits up to 3 s for `file` to exist with some content.
pub fn wait_file(file: &Path) {
    let end = Instant::now() + Duration::from_secs(3);
    while !std::fs::metadata(file).is_ok_and(|m| m.len() > 0) {
        assert!(Instant::now() < end, "{} never appeared", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
