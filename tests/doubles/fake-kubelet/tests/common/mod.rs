#![allow(dead_code)]
//! Helpers for the fake-kubelet tests: fake host roots, process guards, tiny HTTP client.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fake-kubelet");

/// A fake host root: /proc/meminfo, /sys cpu and node dirs, hugepage pools.
pub struct HostRoot {
    pub dir: tempfile::TempDir,
}

impl HostRoot {
    pub fn new(mem_kb: u64) -> HostRoot {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/meminfo"),
            format!(
                "MemTotal:       {mem_kb} kB\nMemFree:         1234 kB\nMemAvailable:    5678 kB\n"
            ),
        )
        .unwrap();
        HostRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `/sys/devices/system/cpu/cpuN` for each N (plus non-cpu entries cadvisor must skip).
    pub fn flat_cpus(self, n: u32) -> Self {
        let base = self.path().join("sys/devices/system/cpu");
        for i in 0..n {
            std::fs::create_dir_all(base.join(format!("cpu{i}"))).unwrap();
        }
        std::fs::create_dir_all(base.join("cpufreq")).unwrap();
        std::fs::create_dir_all(base.join("cpuidle")).unwrap();
        self
    }

    /// `/sys/devices/system/node/nodeK/cpuN` for each node's cpu list (and the flat cpu dirs).
    pub fn numa(self, nodes: &[&[u32]]) -> Self {
        for (k, cpus) in nodes.iter().enumerate() {
            let nd = self.path().join(format!("sys/devices/system/node/node{k}"));
            std::fs::create_dir_all(&nd).unwrap();
            std::fs::write(nd.join("meminfo"), "").unwrap();
            for c in *cpus {
                std::fs::create_dir_all(nd.join(format!("cpu{c}"))).unwrap();
                std::fs::create_dir_all(self.path().join(format!("sys/devices/system/cpu/cpu{c}")))
                    .unwrap();
            }
        }
        self
    }

    pub fn online(self, list: &str) -> Self {
        let base = self.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("online"), format!("{list}\n")).unwrap();
        self
    }

    pub fn hugepages(self, size_kb: u64, nr: u64) -> Self {
        let d = self
            .path()
            .join(format!("sys/kernel/mm/hugepages/hugepages-{size_kb}kB"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("nr_hugepages"), format!("{nr}\n")).unwrap();
        std::fs::write(d.join("free_hugepages"), format!("{nr}\n")).unwrap();
        self
    }
}

/// Kills (SIGKILL) and reaps the fake kubelet when dropped.
pub struct Kubelet {
    pub child: Child,
    pub stderr_path: PathBuf,
    pub root_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

pub struct Opts<'a> {
    pub host_root: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, String)>,
    pub root_dir: Option<PathBuf>,
}

impl<'a> Opts<'a> {
    pub fn new(host_root: &'a Path) -> Self {
        Opts {
            host_root,
            args: Vec::new(),
            env: Vec::new(),
            root_dir: None,
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.env.push((k, v.into()));
        self
    }
    pub fn root_dir(mut self, p: &Path) -> Self {
        self.root_dir = Some(p.to_path_buf());
        self
    }
}

impl Kubelet {
    /// Starts the fake kubelet with `--root-dir` in a tempdir (unless given) and stderr to a file.
    pub fn start(o: Opts) -> Kubelet {
        let tmp = tempfile::tempdir().unwrap();
        let root_dir = o
            .root_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("kubelet"));
        let stderr_path = tmp.path().join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.arg(format!("--root-dir={}", root_dir.display()))
            .args(&o.args)
            .env("FAKE_KUBELET_HOST_ROOT", o.host_root)
            .env_remove("FAKE_KUBELET_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fake-kubelet");
        Kubelet {
            child,
            stderr_path,
            root_dir,
            _tmp: tmp,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn status_path(&self) -> PathBuf {
        self.root_dir.join("fake-kubelet/status.json")
    }

    pub fn status(&self) -> Option<Value> {
        let d = std::fs::read(self.status_path()).ok()?;
        serde_json::from_slice(&d).ok()
    }

    /// Wait until status.json satisfies `pred`.
    pub fn wait_status(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.status()
                && pred(&v)
            {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "status condition not met; last status: {:?}\nstderr:\n{}",
                    self.status(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Process start time (field 22 of /proc/PID/stat) and state.
pub fn proc_stat(pid: i32) -> Option<(char, u64, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields: 3 state, 4 ppid, 5 pgrp, 6 session, ..., 22 starttime
    Some((
        f[0].chars().next()?,
        f[19].parse().ok()?,
        f[1].parse().ok()?,
        f[3].parse().ok()?,
    ))
}

pub fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((s, ..)) if s != 'Z' && s != 'X')
}

pub fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Kills the recorded pod processes (detached, not our children) when dropped.
#[derive(Default)]
pub struct PodReaper {
    pids: Vec<(i32, u64)>,
}

impl PodReaper {
    pub fn add(&mut self, pid: i32) {
        if let Some((_, start, _, _)) = proc_stat(pid)
            && !self.pids.iter().any(|(p, _)| *p == pid)
        {
            self.pids.push((pid, start));
        }
    }
    /// Track every pod pid found in a status document.
    pub fn track(&mut self, status: &Value) {
        for p in status["pods"].as_array().into_iter().flatten() {
            if let Some(pid) = p["pid"].as_i64() {
                self.add(pid as i32);
            }
        }
    }
}

impl Drop for PodReaper {
    fn drop(&mut self) {
        for (pid, start) in &self.pids {
            if matches!(proc_stat(*pid), Some((_, s, ..)) if s == *start) {
                // SAFETY: killing a pod process this test created, identity checked.
                unsafe {
                    libc::kill(-*pid, libc::SIGKILL);
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Resp {
    pub code: u16,
    pub head: String,
    pub body: String,
}

pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Resp {
        code,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub fn wait_http(port: u16, path: &str, code: u16, timeout: Duration) -> Resp {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http(port, "GET", path)
            && r.code == code
        {
            return r;
        }
        if Instant::now() > deadline {
            panic!("{path} on {port} never returned {code}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A static pod manifest (JSON).
pub fn pod_manifest(
    name: &str,
    created: &str,
    cpu: Option<&str>,
    mem: Option<&str>,
    command: &[&str],
    grace: i64,
) -> String {
    let mut requests = serde_json::Map::new();
    if let Some(c) = cpu {
        requests.insert("cpu".into(), c.into());
    }
    if let Some(m) = mem {
        requests.insert("memory".into(), m.into());
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system", "uid": format!("uid-{name}"), "creationTimestamp": created},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": command,
                "resources": {"requests": requests},
            }],
        },
    })
    .to_string()
}

pub fn pod<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["pods"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}
