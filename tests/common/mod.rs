#![allow(dead_code)]
//! Shared harness for the product's integration tests: locating the binaries (the agent and the
//! test doubles built by `cargo test --workspace`), fake host roots, process guards that kill by
//! pid on drop, the Mesos task emulator driver, and a tiny loopback HTTP client.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kubelet_resource_wrapper::capacity::fake::FakeHost;
use serde_json::{Value, json};

/// The agent binary.
pub const AGENT: &str = env!("CARGO_BIN_EXE_kubelet-resource-wrapper");

/// A test double's binary, built next to the test executable by `cargo test --workspace`.
pub fn double(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir of the test executable");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (it builds the test doubles)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A scratch area: fake host root, kubelet root dir, pod manifests, lock file.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// A host with `cpus` CPUs over 2 NUMA nodes and `mem_gib` of memory, no hugepages.
    pub fn new(cpus: u64, mem_gib: u64) -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        FakeHost {
            cpus,
            nodes: 2,
            online: None,
            mem_kib: mem_gib << 20,
            hugepages: &[],
        }
        .write(&dir.path().join("host"))
        .expect("fake host");
        for sub in ["kubelet", "manifests"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        Scratch { dir }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn host_root(&self) -> PathBuf {
        self.path("host")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.path("krw.lock")
    }
    /// Writes a static pod manifest the fake kubelet runs as a detached `sleep`.
    pub fn pod(&self, name: &str, cpu: &str, memory: &str) {
        let mut resources = json!({});
        if !cpu.is_empty() || !memory.is_empty() {
            let mut req = serde_json::Map::new();
            if !cpu.is_empty() {
                req.insert("cpu".into(), json!(cpu));
            }
            if !memory.is_empty() {
                req.insert("memory".into(), json!(memory));
            }
            resources = json!({"requests": req});
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "command": ["sleep", "3600"], "resources": resources}]}
        });
        std::fs::write(
            self.path(&format!("manifests/{name}.json")),
            serde_json::to_vec_pretty(&pod).expect("json"),
        )
        .expect("write pod");
    }
    /// The fake kubelet's status file, if written.
    pub fn kubelet_status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.path("kubelet/fake-kubelet/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
    /// Pids of pod processes the fake kubelet recorded.
    pub fn pod_pids(&self) -> Vec<i32> {
        let dir = self.path("kubelet/fake-kubelet/pods");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
            .filter_map(|v| v.get("pid").and_then(Value::as_i64))
            .map(|p| p as i32)
            .collect()
    }
    /// Kubelet arguments the fake kubelet needs for this scratch area.
    pub fn kubelet_args(&self) -> Vec<String> {
        vec![
            format!("--root-dir={}", self.path("kubelet").display()),
            format!("--pod-manifest-path={}", self.path("manifests").display()),
        ]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in self.pod_pids() {
            kill_pid(pid, libc::SIGKILL);
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn kill_pid(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: plain kill(2) on a pid this test started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Processes whose command line mentions `needle` (to find stray kubelets by their root dir).
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
                && String::from_utf8_lossy(&cmd).contains(needle)
                && alive(pid)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (with its process group) when dropped.
pub struct Guard {
    pub child: Child,
    pub extra: Vec<i32>,
    /// Where its stderr goes (a file, so a chatty child can never block on a full pipe).
    pub log: Option<tempfile::NamedTempFile>,
}

impl Guard {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Waits for exit up to `timeout`; returns the exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn signal(&self, sig: i32) {
        kill_pid(self.pid(), sig);
    }
    /// Everything the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f.path()).ok())
            .unwrap_or_default()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for pid in &self.extra {
            kill_pid(*pid, libc::SIGKILL);
        }
    }
}

/// Runs the agent with `args`, capturing stdout and stderr.
pub fn agent(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(AGENT);
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run agent")
}

/// Starts the agent in the background (stderr, its and kubelet's, captured in a file).
pub fn spawn_agent(args: &[String], env: &[(&str, String)]) -> Guard {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut cmd = Command::new(AGENT);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Guard {
        child: cmd.spawn().expect("spawn agent"),
        extra: Vec::new(),
        log: Some(log),
    }
}

/// A plain HTTP/1.1 request on loopback; returns (status, body). `None` if no answer.
pub fn http(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The shipped Marathon app, adapted to this test: the agent's path, fake kubelet, scratch
/// paths, a free health port and fast timings. The rest of the app (constraints, upgrade
/// strategy, kill grace) is the real file's.
pub fn test_app(scratch: &Scratch, health_port: u16, extra_env: &[(&str, &str)]) -> Value {
    test_app_with(scratch, health_port, extra_env, &[])
}

/// [`test_app`] with extra kubelet arguments in the kubelet arguments file.
pub fn test_app_with(
    scratch: &Scratch,
    health_port: u16,
    extra_env: &[(&str, &str)],
    kubelet_args: &[String],
) -> Value {
    let text = std::fs::read_to_string(repo().join("marathon/kubelet-resource-wrapper.json"))
        .expect("marathon app json");
    let mut app: Value = serde_json::from_str(&text).expect("app json");
    // The shipped args with the binary swapped for the one under test.
    app["args"][0] = json!(AGENT);
    let args_file = scratch.path("kubelet-args");
    std::fs::write(
        &args_file,
        format!(
            "# kubelet's own arguments\n{}\n{}\n",
            scratch.kubelet_args().join("\n"),
            kubelet_args.join("\n")
        ),
    )
    .expect("kubelet args file");
    // Scaled-down kill grace; the drain timeout below stays under it, as in the shipped app.
    app["taskKillGracePeriodSeconds"] = json!(6);
    let env = app["env"].as_object_mut().expect("env object");
    let fake_kubelet = double("fake-kubelet");
    for (k, v) in [
        ("KRW_KUBELET", fake_kubelet.display().to_string()),
        ("KRW_KUBELET_ARGS_FILE", args_file.display().to_string()),
        ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
        ("KRW_LOCK_FILE", scratch.lock_file().display().to_string()),
        ("KRW_HEALTH_ADDR", format!("127.0.0.1:{health_port}")),
        ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
        (
            "KRW_LEGACY_FILE",
            scratch.path("services").display().to_string(),
        ),
        ("KRW_HEALTH_PROBE_INTERVAL", "0.3".into()),
        ("KRW_RESTART_BACKOFF_INITIAL", "0.2".into()),
        ("KRW_LOG_FORMAT", "json".into()),
        ("KRW_DRAIN_TIMEOUT", "3".into()),
        ("KRW_STOP_TIMEOUT", "1".into()),
        ("KRW_NODE_CHECK_INTERVAL", "0.5".into()),
        (
            "FAKE_KUBELET_HOST_ROOT",
            scratch.host_root().display().to_string(),
        ),
        ("FAKE_KUBELET_SYNC_INTERVAL_MS", "200".into()),
    ] {
        env.insert(k.into(), json!(v));
    }
    for (k, v) in extra_env {
        env.insert((*k).into(), json!(v));
    }
    app
}

/// The Mesos task emulator running one app; events are read on a thread.
pub struct Emulator {
    pub guard: Guard,
    events: mpsc::Receiver<Value>,
    pub seen: VecDeque<Value>,
    pub sandbox: PathBuf,
    _app_file: tempfile::NamedTempFile,
}

impl Emulator {
    /// Launches `app` under the emulator with fast health checks on `health_port`.
    pub fn launch(app: &Value, sandbox: &Path, health_port: u16, extra: &[&str]) -> Emulator {
        let mut file = tempfile::NamedTempFile::new().expect("app file");
        file.write_all(app.to_string().as_bytes())
            .expect("write app");
        let mut cmd = Command::new(double("mesos-task-emulator"));
        cmd.arg("--app")
            .arg(file.path())
            .arg("--sandbox")
            .arg(sandbox)
            .args([
                "--health-delay",
                "0.3",
                "--health-interval",
                "0.3",
                "--health-timeout",
                "1",
            ])
            .arg("--health-port")
            .arg(health_port.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn emulator");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Emulator {
            guard: Guard {
                child,
                extra: Vec::new(),
                log: None,
            },
            events: rx,
            seen: VecDeque::new(),
            sandbox: sandbox.to_path_buf(),
            _app_file: file,
        }
    }

    /// Waits for the first event (from now on) matching `pred`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push_back(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for a `health` event with `healthy == want`.
    pub fn wait_health(&mut self, want: bool, timeout: Duration) -> bool {
        self.wait_for(timeout, |v| {
            v["event"] == "health" && v["healthy"] == Value::Bool(want)
        })
        .is_some()
    }

    /// Waits for a healthy check; fails the test with the agent's log if none comes in time.
    pub fn expect_healthy(&mut self, timeout: Duration) {
        assert!(
            self.wait_health(true, timeout),
            "never healthy; agent log:\n{}",
            self.task_stderr()
        );
    }

    /// The task's stderr (the agent's log) so far.
    pub fn task_stderr(&self) -> String {
        std::fs::read_to_string(self.sandbox.join("stderr")).unwrap_or_default()
    }

    /// Asks Mesos to kill the task (SIGTERM to the emulator).
    pub fn kill_task(&self) {
        self.guard.signal(libc::SIGTERM);
    }
}

/// A JSON request to the fake kube-apiserver (plain HTTP on loopback, bearer token).
pub fn api(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect apiserver");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The fake kube-apiserver on an ephemeral port with a token file: `admin` (system:masters) and
/// `node-<name>` (system:node:<name>, system:nodes).
pub struct ApiServer {
    pub guard: Guard,
    pub port: u16,
    pub fault_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub const ADMIN: &str = "admin-token";

impl ApiServer {
    /// With token authentication (see the struct doc).
    pub fn start(node: &str) -> ApiServer {
        ApiServer::launch(double("fake-apiserver"), Some(node), &[])
    }

    /// `binary` without a token file: every request is served as an administrator.
    pub fn open(binary: PathBuf) -> ApiServer {
        ApiServer::launch(binary, None, &[])
    }

    /// [`ApiServer::open`] with extra server arguments (e.g. `--max-inflight`).
    pub fn open_with(binary: PathBuf, args: &[String]) -> ApiServer {
        ApiServer::launch(binary, None, args)
    }

    fn launch(binary: PathBuf, node: Option<&str>, args: &[String]) -> ApiServer {
        let dir = tempfile::tempdir().expect("tmp");
        let port_file = dir.path().join("port");
        let fault_file = dir.path().join("fault");
        let mut cmd = Command::new(binary);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--port-file")
            .arg(&port_file)
            .arg("--fault-file")
            .arg(&fault_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(node) = node {
            let tokens = dir.path().join("tokens.csv");
            std::fs::write(
                &tokens,
            format!(
                "{ADMIN},admin,1,\"system:masters\"\nnode-token,system:node:{node},2,\"system:nodes\"\ndrainer-token,drainer,3\n"
            ),
        )
            .expect("tokens");
            cmd.arg("--token-auth-file").arg(&tokens);
        }
        let child = cmd.spawn().expect("fake apiserver");
        let guard = Guard {
            child,
            extra: Vec::new(),
            log: None,
        };
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&port_file).is_ok_and(|t| t.trim().parse::<u16>().is_ok())
        }));
        let port = std::fs::read_to_string(&port_file)
            .expect("port")
            .trim()
            .parse()
            .expect("port number");
        ApiServer {
            guard,
            port,
            fault_file,
            _dir: dir,
        }
    }

    /// A kubeconfig (JSON is valid YAML) for the node identity.
    pub fn node_kubeconfig(&self, path: &Path) {
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": format!("http://127.0.0.1:{}", self.port)}}],
            "users": [{"name": "node", "user": {"token": "node-token"}}],
            "contexts": [{"name": "node@fake", "context": {"cluster": "fake", "user": "node"}}],
            "current-context": "node@fake"
        });
        std::fs::write(path, kc.to_string()).expect("kubeconfig");
    }

    /// A kubeconfig without credentials (for a server started with [`ApiServer::open`]).
    pub fn anonymous_kubeconfig(&self, path: &Path) {
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": format!("http://127.0.0.1:{}", self.port)}}],
            "users": [{"name": "anonymous", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "anonymous"}}],
            "current-context": "fake"
        });
        std::fs::write(path, kc.to_string()).expect("kubeconfig");
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        api(self.port, method, path, ADMIN, body)
    }

    /// Pods bound to `node` as (name, phase, terminating).
    pub fn pods_on(&self, node: &str) -> Vec<(String, String, bool)> {
        let (_, list) = self.admin(
            "GET",
            &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
            None,
        );
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["status"]["phase"].as_str().unwrap_or("").to_string(),
                    p["metadata"]["deletionTimestamp"].is_string(),
                )
            })
            .collect()
    }
}
