//! Black-box tests of the fake Marathon binary over loopback HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../../shared/schemas/marathon/AppDefinition.json"
);

/// A running fake; killed on drop.
struct Fake {
    child: Child,
    addr: String,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn schema_path() -> String {
    let candidates = [
        SCHEMA,
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../marathon/schema/AppDefinition.json"
        ),
    ];
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .expect("AppDefinition.json in ../shared/schemas/marathon or marathon/schema")
}

fn start(extra: &[&str]) -> Fake {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-marathon"))
        .args(["--listen", "127.0.0.1:0", "--schema", &schema_path()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fake-marathon");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Fake { child, addr }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(fake: &Fake, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Resp {
    let mut s = TcpStream::connect(&fake.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        fake.addr,
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n").expect("http response");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = if payload.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(payload).unwrap_or(Value::String(payload.to_string()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn get(f: &Fake, path: &str) -> Resp {
    request(f, "GET", path, None, None)
}

fn put(f: &Fake, path: &str, body: Value) -> Resp {
    request(f, "PUT", path, None, Some(&body.to_string()))
}

fn kubelet_app(instances: u64) -> Value {
    json!({
        "id": "/k8s/kubelet",
        "cmd": "kubelet-resource-wrapper run",
        "cpus": 2.0,
        "mem": 4096.0,
        "instances": instances,
        "constraints": [["hostname", "UNIQUE"]],
        "healthChecks": [{"protocol": "MESOS_HTTP", "port": 10248, "path": "/healthz"}],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.0}
    })
}

fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn prints_one_listening_line_and_writes_port_file() {
    let dir = std::env::temp_dir().join(format!("fake-marathon-port-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let port_file = dir.join("port");
    let f = start(&["--port-file", port_file.to_str().expect("utf8")]);
    let port = std::fs::read_to_string(&port_file).expect("port file");
    assert!(f.addr.ends_with(&format!(":{}", port.trim())));
    assert!(f.addr.starts_with("127.0.0.1:"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn schema_rejection_is_422_with_details_and_bad_json_is_400() {
    let f = start(&[]);
    let r = put(&f, "/v2/apps/k8s/kubelet", json!({"instances": "three"}));
    assert_eq!(r.status, 422);
    assert_eq!(r.body["message"], "Object is not valid");
    assert_eq!(r.body["details"][0]["path"], "/instances");
    assert!(
        r.body["details"][0]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );

    // Unknown top-level field (additionalProperties false); POST without id.
    let r = put(&f, "/v2/apps/k8s/kubelet", json!({"tty": true}));
    assert_eq!(r.status, 422);
    let r = request(&f, "POST", "/v2/apps", None, Some(r#"{"cmd":"x"}"#));
    assert_eq!(r.status, 422);
    let r = request(&f, "POST", "/v2/apps", None, Some("{not json"));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["message"], "Invalid JSON");
    // Nothing was created.
    assert_eq!(get(&f, "/v2/apps/k8s/kubelet").status, 404);
}

#[test]
fn post_creates_then_conflicts_and_get_embeds_counts() {
    let f = start(&["--deploy-seconds", "0.1"]);
    let r = request(
        &f,
        "POST",
        "/v2/apps",
        None,
        Some(&kubelet_app(2).to_string()),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.body["id"], "/k8s/kubelet");
    assert!(r.body["version"].is_string());
    let dep = r
        .header("Marathon-Deployment-Id")
        .expect("deployment header")
        .to_string();
    assert_eq!(r.body["deployments"][0]["id"], dep.as_str());
    let r = request(
        &f,
        "POST",
        "/v2/apps",
        None,
        Some(&kubelet_app(2).to_string()),
    );
    assert_eq!(r.status, 409);

    let r = get(
        &f,
        "/v2/apps/k8s/kubelet?embed=app.counts&embed=app.deployments",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body["app"]["tasksRunning"], 2);
    assert_eq!(r.body["app"]["tasksHealthy"], 2);
    assert!(r.body["app"].get("tasks").is_none());
    assert!(wait_until(Duration::from_secs(5), || {
        get(&f, "/v2/deployments").body == json!([])
    }));
    let r = get(&f, "/v2/apps/k8s/kubelet?embed=app.deployments");
    assert_eq!(r.body["app"]["deployments"], json!([]));
}

#[test]
fn running_deployment_locks_app_409_until_force() {
    let f = start(&["--deploy-seconds", "30"]);
    let r = put(&f, "/v2/apps/k8s/kubelet", kubelet_app(2));
    assert_eq!(r.status, 201);
    let dep = r.body["deploymentId"]
        .as_str()
        .expect("deploymentId")
        .to_string();
    assert_eq!(r.header("Marathon-Deployment-Id"), Some(dep.as_str()));
    assert!(r.body["version"].is_string());

    let r = put(&f, "/v2/apps/k8s/kubelet", json!({"instances": 1}));
    assert_eq!(r.status, 409);
    assert!(r.body["message"].as_str().is_some_and(|m| m.starts_with(
        "App is locked by one or more deployments. Override with the option '?force=true'"
    )));
    assert_eq!(r.body["deployments"][0]["id"], dep.as_str());

    let deps = get(&f, "/v2/deployments").body;
    assert_eq!(deps[0]["id"], dep.as_str());
    assert_eq!(deps[0]["affectedApps"][0], "/k8s/kubelet");
    assert_eq!(get(&f, &format!("/v2/deployments/{dep}")).status, 200);

    let r = put(
        &f,
        "/v2/apps/k8s/kubelet?force=true",
        json!({"instances": 1}),
    );
    assert_eq!(r.status, 200);
    let deps = get(&f, "/v2/deployments").body;
    assert_eq!(deps.as_array().map(Vec::len), Some(1));
    assert_ne!(deps[0]["id"], dep.as_str());
    // Partial update kept the rest of the app.
    let app = get(&f, "/v2/apps/k8s/kubelet").body;
    assert_eq!(app["app"]["instances"], 1);
    assert_eq!(app["app"]["cpus"], 2.0);

    // Deleting a deployment with force stops it (202).
    let id = deps[0]["id"].as_str().expect("id").to_string();
    let r = request(
        &f,
        "DELETE",
        &format!("/v2/deployments/{id}?force=true"),
        None,
        None,
    );
    assert_eq!(r.status, 202);
    assert_eq!(get(&f, "/v2/deployments").body, json!([]));
}

#[test]
fn basic_and_token_auth() {
    let f = start(&["--credentials", "ops:s3cret", "--token", "tok123"]);
    let r = get(&f, "/v2/deployments");
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").is_some());
    // base64("ops:s3cret") = b3BzOnMzY3JldA==
    let r = request(
        &f,
        "GET",
        "/v2/deployments",
        Some("Basic b3BzOnMzY3JldA=="),
        None,
    );
    assert_eq!(r.status, 200);
    let r = request(
        &f,
        "GET",
        "/v2/deployments",
        Some("Basic b3BzOndyb25n"),
        None,
    );
    assert_eq!(r.status, 401);
    let r = request(&f, "GET", "/v2/deployments", Some("token=tok123"), None);
    assert_eq!(r.status, 200);
    let r = request(&f, "GET", "/v2/deployments", Some("token=nope"), None);
    assert_eq!(r.status, 401);
    // Unauthorised writes change nothing.
    let r = request(&f, "PUT", "/v2/apps/a", None, Some(r#"{"cmd":"x"}"#));
    assert_eq!(r.status, 401);
    let r = request(&f, "GET", "/v2/apps/a", Some("token=tok123"), None);
    assert_eq!(r.status, 404);
}

#[test]
fn unique_beyond_hosts_queues_unfulfilled_constraint_and_never_finishes() {
    let f = start(&["--hosts", "h1,h2", "--deploy-seconds", "0.1"]);
    let r = put(&f, "/v2/apps/k8s/kubelet", kubelet_app(3));
    assert_eq!(r.status, 201);
    let dep = r.body["deploymentId"].as_str().expect("id").to_string();

    let tasks = get(&f, "/v2/apps/k8s/kubelet/tasks").body;
    let tasks = tasks["tasks"].as_array().expect("tasks").clone();
    assert_eq!(tasks.len(), 2);
    let mut hosts: Vec<&str> = tasks.iter().filter_map(|t| t["host"].as_str()).collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["h1", "h2"]);
    for t in &tasks {
        assert_eq!(t["state"], "TASK_RUNNING");
        assert_eq!(t["healthCheckResults"][0]["alive"], true);
        assert!(t["startedAt"].is_string());
        assert_eq!(t["cpus"], 2.0);
        assert_eq!(t["mem"], 4096.0);
    }

    let q = get(&f, "/v2/queue?embed=lastUnusedOffers").body;
    let entry = &q["queue"][0];
    assert_eq!(entry["count"], 1);
    assert_eq!(entry["app"]["id"], "/k8s/kubelet");
    let reasons = entry["processedOffersSummary"]["rejectSummaryLastOffers"]
        .as_array()
        .expect("reasons");
    let uc = reasons
        .iter()
        .find(|r| r["reason"] == "UnfulfilledConstraint")
        .expect("UnfulfilledConstraint");
    assert_eq!(uc["declined"], 2);
    assert_eq!(entry["lastUnusedOffers"].as_array().map(Vec::len), Some(2));

    std::thread::sleep(Duration::from_millis(400));
    let deps = get(&f, "/v2/deployments").body;
    assert_eq!(deps[0]["id"], dep.as_str(), "deployment must stay open");
    let r = put(&f, "/v2/apps/k8s/kubelet", json!({"cpus": 3.0}));
    assert_eq!(r.status, 409);

    // Scaling back to the host count with force clears the queue and the deployment finishes.
    let r = put(
        &f,
        "/v2/apps/k8s/kubelet?force=true",
        json!({"instances": 2}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(&f, "/v2/queue").body, json!({"queue": []}));
    assert!(wait_until(Duration::from_secs(5), || {
        get(&f, "/v2/deployments").body == json!([])
    }));
}

#[test]
fn kill_task_with_scale_decrements_instances() {
    let f = start(&["--hosts", "h1,h2,h3", "--deploy-seconds", "0"]);
    assert_eq!(put(&f, "/v2/apps/k8s/kubelet", kubelet_app(3)).status, 201);
    let tasks = get(&f, "/v2/apps/k8s/kubelet/tasks").body;
    let victim = tasks["tasks"][0]["id"].as_str().expect("id").to_string();
    std::thread::sleep(Duration::from_millis(50));
    let r = request(
        &f,
        "DELETE",
        &format!("/v2/apps/k8s/kubelet/tasks/{victim}?scale=true"),
        None,
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.body["deploymentId"].is_string());
    let app = get(&f, "/v2/apps/k8s/kubelet").body;
    assert_eq!(app["app"]["instances"], 2);
    let tasks = app["app"]["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t["id"] != victim.as_str()));
    let r = request(&f, "DELETE", "/v2/apps/k8s/kubelet/tasks/nope", None, None);
    assert_eq!(r.status, 404);
}

#[test]
fn restart_under_unique_without_spare_host_stalls_with_default_strategy() {
    let f = start(&["--hosts", "h1,h2", "--deploy-seconds", "0"]);
    let mut app = kubelet_app(2);
    app["upgradeStrategy"] = json!({"minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.0});
    assert_eq!(put(&f, "/v2/apps/k8s/kubelet", app).status, 201);
    assert!(wait_until(Duration::from_secs(5), || {
        get(&f, "/v2/deployments").body == json!([])
    }));
    let r = put(&f, "/v2/apps/k8s/kubelet", json!({"mem": 2048.0}));
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        get(&f, "/v2/deployments").body.as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(get(&f, "/v2/queue").body["queue"][0]["count"], 1);
}

/// The Mesos task emulator next to this test's binary (built by `cargo build --workspace`).
fn emulator() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir");
    let path = dir.join("mesos-task-emulator");
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace`",
        path.display()
    );
    path
}

/// A live fake on `hosts` agents, its scratch dir and its event log.
fn start_live(hosts: usize) -> (Fake, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let agents: Vec<Value> = (0..hosts)
        .map(|i| json!({"hostname": format!("h{i}"), "sandbox_root": dir.path().join(format!("h{i}"))}))
        .collect();
    let agents_file = dir.path().join("agents.json");
    std::fs::write(&agents_file, Value::Array(agents).to_string()).expect("agents");
    let f = start(&[
        "--agents",
        agents_file.to_str().expect("utf8"),
        "--emulator",
        emulator().to_str().expect("utf8"),
        "--time-scale",
        "0.1",
        "--offer-interval",
        "0.1",
        "--event-log",
        dir.path().join("events.jsonl").to_str().expect("utf8"),
    ]);
    (f, dir)
}

/// An app whose task is `sleep` and whose COMMAND check passes once the task has run a moment.
fn sleeper(instances: u64, m: f64) -> Value {
    json!({
        "id": "/sleeper",
        "args": ["sleep", "300"],
        "cpus": 1.0, "mem": 64.0, "instances": instances,
        "constraints": [["hostname", "UNIQUE"]],
        "portDefinitions": [],
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"},
                          "delaySeconds": 2, "intervalSeconds": 2, "timeoutSeconds": 10,
                          "gracePeriodSeconds": 100, "maxConsecutiveFailures": 3}],
        "taskKillGracePeriodSeconds": 5,
        "backoffSeconds": 20, "backoffFactor": 2, "maxLaunchDelaySeconds": 300,
        "upgradeStrategy": {"minimumHealthCapacity": m, "maximumOverCapacity": 0.0}
    })
}

fn live_tasks(f: &Fake) -> Vec<Value> {
    get(f, "/v2/apps/sleeper/tasks").body["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn events(dir: &tempfile::TempDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn settled(f: &Fake, n: usize) -> bool {
    let tasks = live_tasks(f);
    get(f, "/v2/deployments").body == json!([])
        && tasks.len() == n
        && tasks
            .iter()
            .all(|t| t["healthCheckResults"][0]["alive"] == true)
}

#[test]
fn live_restart_rolls_one_host_at_a_time_health_gated() {
    let (f, dir) = start_live(3);
    assert_eq!(put(&f, "/v2/apps/sleeper", sleeper(3, 0.5)).status, 201);
    // Not healthy before the first probe: the start deployment stays open until then.
    assert_ne!(get(&f, "/v2/deployments").body, json!([]));
    assert!(wait_until(Duration::from_secs(20), || settled(&f, 3)));
    let first: Vec<String> = live_tasks(&f)
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();

    assert_eq!(
        put(&f, "/v2/apps/sleeper", json!({"cpus": 0.5})).status,
        200
    );
    let mut min_healthy = usize::MAX;
    let mut max_tasks = 0;
    let done = wait_until(Duration::from_secs(60), || {
        let tasks = live_tasks(&f);
        let healthy = tasks
            .iter()
            .filter(|t| t["healthCheckResults"][0]["alive"] == true && t["state"] == "TASK_RUNNING")
            .count();
        min_healthy = min_healthy.min(healthy);
        max_tasks = max_tasks.max(tasks.len());
        let mut hosts: Vec<&str> = tasks.iter().filter_map(|t| t["host"].as_str()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        assert_eq!(hosts.len(), tasks.len(), "two tasks on one host: {tasks:?}");
        settled(&f, 3) && tasks.iter().all(|t| t["cpus"] == 0.5)
    });
    assert!(done, "restart never finished: {:?}", events(&dir));
    assert!(min_healthy >= 2, "more than one host down at once");
    assert!(max_tasks <= 3, "maxCapacity 3 exceeded");
    let now: Vec<String> = live_tasks(&f)
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    assert!(now.iter().all(|id| !first.contains(id)));
    // Kills and launches alternate: each old task is killed only after a new one turned healthy.
    let ev = events(&dir);
    let kills = ev
        .iter()
        .filter(|e| e["event"] == "kill" && e["reason"] == "Upgrading")
        .count();
    assert_eq!(kills, 3);
}

#[test]
fn live_scale_down_kills_youngest_first_and_a_dead_task_is_relaunched_after_backoff() {
    let (f, dir) = start_live(3);
    let mut app = sleeper(2, 0.5);
    app["instances"] = json!(2);
    assert_eq!(put(&f, "/v2/apps/sleeper", app).status, 201);
    assert!(wait_until(Duration::from_secs(20), || settled(&f, 2)));
    assert_eq!(
        put(&f, "/v2/apps/sleeper", json!({"instances": 3})).status,
        200
    );
    assert!(wait_until(Duration::from_secs(20), || settled(&f, 3)));
    let youngest = live_tasks(&f)
        .iter()
        .max_by_key(|t| t["startedAt"].as_str().unwrap_or("").to_string())
        .and_then(|t| t["id"].as_str().map(String::from))
        .expect("a task");
    assert_eq!(
        put(&f, "/v2/apps/sleeper", json!({"instances": 2})).status,
        200
    );
    assert!(wait_until(Duration::from_secs(20), || settled(&f, 2)));
    assert!(live_tasks(&f).iter().all(|t| t["id"] != youngest.as_str()));

    // The task's process dies by itself (TASK_FAILED): relaunched, but only after backoffSeconds
    // (20 s × time scale 0.1 = 2 s).
    let victim = live_tasks(&f)[0]["id"].as_str().expect("id").to_string();
    let pid = events(&dir)
        .iter()
        .find(|e| e["event"] == "running" && e["task"] == victim.as_str())
        .and_then(|e| e["pid"].as_i64())
        .expect("pid of the task");
    // SAFETY: SIGKILL to the sleep this test's fake launched.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        events(&dir)
            .iter()
            .any(|e| e["event"] == "terminal" && e["task"] == victim.as_str())
    }));
    let died = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(20), || live_tasks(&f).len() == 2));
    assert!(died.elapsed() >= Duration::from_millis(1500), "no backoff");
    let ev = events(&dir);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "terminal" && e["state"] == "TASK_FAILED")
    );
    assert!(ev.iter().any(|e| e["event"] == "backoff"));
}
