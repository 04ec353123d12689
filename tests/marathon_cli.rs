//! `kubelet-resource-wrapper marathon ...` end to end: the real product binary against the
//! `fake-marathon` test double (tests/doubles/fake-marathon), over loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const KRW: &str = env!("CARGO_BIN_EXE_kubelet-resource-wrapper");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Environment that would leak into the product from the developer's shell.
const SCRUBBED_ENV: &[&str] = &[
    "MARATHON_URL",
    "MARATHON_CREDENTIALS",
    "MARATHON_TOKEN",
    "KRW_APP_ID",
    "KRW_APP_FILE",
    "KRW_MAX_HOSTS",
    "KRW_MARATHON_TIMEOUT",
    "KRW_LOG_FORMAT",
    "KRW_LOG_LEVEL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// `…/target/debug/deps/marathon_cli-HASH` → `…/target/debug/fake-marathon`.
fn fake_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join(format!("fake-marathon{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        panic!(
            "{} is missing: run `cargo test --workspace` (builds the test doubles)",
            bin.display()
        );
    }
    bin
}

fn schema() -> PathBuf {
    let candidates = [
        Path::new(REPO).join("marathon/schema/AppDefinition.json"),
        Path::new(REPO).join("../shared/schemas/marathon/AppDefinition.json"),
    ];
    candidates.iter().find(|p| p.exists()).cloned().expect(
        "Marathon AppDefinition.json schema (marathon/schema/ or ../shared/schemas/marathon/)",
    )
}

/// A running fake Marathon; killed on drop.
struct Fake {
    child: Child,
    url: String,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake(extra: &[&str]) -> Fake {
    let mut child = Command::new(fake_binary())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--schema")
        .arg(schema())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fake-marathon");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Fake { child, url }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn krw(url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(KRW);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.current_dir(REPO)
        .env("MARATHON_URL", url)
        .env("KRW_LOG_LEVEL", "warn")
        .arg("marathon")
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("run kubelet-resource-wrapper");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn app_file(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write app file");
    p.to_str().expect("utf-8 path").to_string()
}

const TWO_NODE_APP: &str = r#"{
  "id": "/k8s/kubelet", "args": ["kubelet-resource-wrapper", "run"], "instances": 2,
  "cpus": 1.5, "mem": 2048, "constraints": [["hostname", "UNIQUE"]],
  "healthChecks": [{"protocol": "MESOS_HTTP", "port": 10248, "path": "/healthz"}],
  "upgradeStrategy": {"minimumHealthCapacity": 0.25, "maximumOverCapacity": 0}
}"#;

#[test]
fn deploys_the_shipped_app_file_waits_and_shows_status() {
    let f = fake(&["--hosts", "h1,h2,h3", "--deploy-seconds", "0.2"]);
    // Default --app is marathon/kubelet-resource-wrapper.json relative to the repo root.
    let r = krw(&f.url, &["deploy", "--wait"], &[]);
    r.expect_code(0);
    assert!(r.stdout.contains("created /k8s/kubelet"), "{}", r.stdout);
    assert!(r.stdout.contains("finished"), "{}", r.stdout);
    assert!(
        !r.stderr.contains("warning:"),
        "the shipped upgradeStrategy must not warn: {}",
        r.stderr
    );

    let r = krw(&f.url, &["status"], &[]);
    r.expect_code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].contains("3 instance(s) requested"), "{}", r.stdout);
    assert!(lines[0].contains("no deployment running"), "{}", r.stdout);
    assert!(lines[1].starts_with("TASK"));
    assert_eq!(lines.len(), 5, "{}", r.stdout);
    for (row, host) in lines[2..].iter().zip(["h1", "h2", "h3"]) {
        assert!(
            row.contains(host) && row.contains("TASK_RUNNING") && row.contains("healthy"),
            "{row}"
        );
        assert!(row.ends_with(" 4096"), "{row}");
    }

    let r = krw(&f.url, &["status", "--output", "json"], &[]);
    r.expect_code(0);
    let j: Value = serde_json::from_str(&r.stdout).expect("status json");
    assert_eq!(j["app"], "/k8s/kubelet");
    assert_eq!(j["instances"], 3);
    assert_eq!(j["healthy"], 3);
    assert_eq!(j["tasks"].as_array().map(Vec::len), Some(3));
    assert_eq!(j["tasks"][0]["cpus"], 2.0);
    assert_eq!(j["tasks"][0]["mem_mib"], 4096.0);

    // Redeploying the same file is an update.
    let r = krw(&f.url, &["deploy"], &[]);
    r.expect_code(0);
    assert!(r.stdout.contains("updated /k8s/kubelet"), "{}", r.stdout);
}

#[test]
fn scale_beyond_unique_hosts_warns_then_locks_409_until_forced() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = app_file(dir.path(), "app.json", TWO_NODE_APP);
    let f = fake(&["--hosts", "h1,h2", "--deploy-seconds", "0.1"]);
    krw(&f.url, &["deploy", "--app", &app, "--wait"], &[]).expect_code(0);

    // Explicit host count: exact warning, the scale still happens.
    let r = krw(&f.url, &["scale", "3", "--max-hosts", "2"], &[]);
    r.expect_code(0);
    assert!(
        r.stderr
            .contains("only 2 host(s) can run one (--max-hosts)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("waiting forever"), "{}", r.stderr);
    assert!(r.stderr.contains("409"), "{}", r.stderr);
    assert!(r.stdout.contains("from 2 to 3 instance(s)"), "{}", r.stdout);

    // The third instance is stuck; status says so.
    let r = krw(&f.url, &["status"], &[]);
    r.expect_code(0);
    assert!(
        r.stdout
            .contains("1 waiting for an offer (UnfulfilledConstraint)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("deployment running"), "{}", r.stdout);

    // Counting from Marathon now finds the ceiling in the queue; the change is refused with 409 → 75.
    let r = krw(&f.url, &["scale", "4"], &[]);
    r.expect_code(75);
    assert!(
        r.stderr
            .contains("only 2 host(s) can run one (Marathon's queue"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("UnfulfilledConstraint"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("App is locked by one or more deployments"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{}/v2/apps/k8s/kubelet", f.url)),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force"), "{}", r.stderr);

    // Following a stuck deployment times out with 75 and the reason.
    let r = krw(
        &f.url,
        &[
            "deploy",
            "--app",
            &app,
            "--force",
            "--wait",
            "--timeout",
            "10",
        ],
        &[],
    );
    r.expect_code(0);
    let r = krw(&f.url, &["scale", "3", "--wait", "--timeout", "0.8"], &[]);
    r.expect_code(75);
    assert!(r.stderr.contains("still running"), "{}", r.stderr);
    assert!(r.stderr.contains("UnfulfilledConstraint"), "{}", r.stderr);

    // --force repairs it.
    let r = krw(&f.url, &["scale", "2", "--force", "--wait"], &[]);
    r.expect_code(0);
    assert!(r.stdout.contains("finished"), "{}", r.stdout);
    let r = krw(&f.url, &["status", "--output", "json"], &[]);
    let j: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(j["waiting"], 0);
    assert_eq!(j["deployments"], Value::Array(Vec::new()));
}

#[test]
fn stalling_upgrade_strategy_is_warned_with_the_one_host_value() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = app_file(
        dir.path(),
        "app.json",
        r#"{"id": "/k8s/kubelet", "cmd": "run", "instances": 5,
            "constraints": [["hostname", "UNIQUE"]],
            "upgradeStrategy": {"minimumHealthCapacity": 0.9, "maximumOverCapacity": 0}}"#,
    );
    let f = fake(&["--hosts", "h1,h2,h3,h4,h5", "--deploy-seconds", "0"]);
    let r = krw(&f.url, &["deploy", "--app", &app], &[]);
    r.expect_code(0);
    assert!(r.stderr.contains("ceil(5 x 0.9) = 5"), "{}", r.stderr);
    assert!(
        r.stderr.contains("\"minimumHealthCapacity\": 0.7"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("\"maximumOverCapacity\": 0"),
        "{}",
        r.stderr
    );
}

#[test]
fn auth_basic_token_and_rejection() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = app_file(dir.path(), "app.json", TWO_NODE_APP);
    let f = fake(&[
        "--credentials",
        "ops:pw",
        "--token",
        "tok-1",
        "--deploy-seconds",
        "0",
    ]);

    let r = krw(&f.url, &["status"], &[]);
    r.expect_code(78);
    assert!(
        r.stderr.contains("authentication rejected (401)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&f.url), "{}", r.stderr);

    let r = krw(
        &f.url,
        &["deploy", "--app", &app, "--user", "ops:wrong"],
        &[],
    );
    r.expect_code(78);

    krw(
        &f.url,
        &["deploy", "--app", &app],
        &[("MARATHON_CREDENTIALS", "ops:pw")],
    )
    .expect_code(0);
    krw(&f.url, &["status"], &[("MARATHON_TOKEN", "tok-1")]).expect_code(0);
    krw(&f.url, &["--token", "tok-1", "status"], &[]).expect_code(0);
    let r = krw(
        &f.url,
        &["status", "--user", "ops:pw", "--token", "tok-1"],
        &[],
    );
    r.expect_code(64);
    assert!(r.stderr.contains("not both"), "{}", r.stderr);
    let r = krw(&f.url, &["status", "--user", "ops"], &[]);
    r.expect_code(64);
}

#[test]
fn invalid_app_definitions_exit_65_and_missing_file_64() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = fake(&["--deploy-seconds", "0"]);
    let bad = app_file(
        dir.path(),
        "bad.json",
        r#"{"id": "/k8s/kubelet", "cmd": "run", "instances": "three"}"#,
    );
    let r = krw(&f.url, &["deploy", "--app", &bad], &[]);
    r.expect_code(65);
    assert!(r.stderr.contains("Object is not valid"), "{}", r.stderr);
    assert!(r.stderr.contains("/instances"), "{}", r.stderr);
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.contains("kubelet-resource-wrapper:"))
            .count(),
        1
    );

    let not_json = app_file(dir.path(), "nj.json", "{ \"id\": ");
    krw(&f.url, &["deploy", "--app", &not_json], &[]).expect_code(65);
    let missing = dir.path().join("missing.json");
    let r = krw(
        &f.url,
        &["deploy", "--app", missing.to_str().expect("utf8")],
        &[],
    );
    r.expect_code(64);
    assert!(r.stderr.contains("KRW_APP_FILE"), "{}", r.stderr);

    // Scaling an app that does not exist: 404 → 70 with a hint.
    let r = krw(&f.url, &["scale", "1"], &[]);
    r.expect_code(70);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    // Bad option values are usage errors.
    krw(&f.url, &["status", "--app-id", "/Bad_Id"], &[]).expect_code(64);
    krw("not-a-url", &["status"], &[]).expect_code(64);
    krw(&f.url, &["scale", "-2"], &[]).expect_code(64);
}

#[test]
fn unreachable_marathon_exits_69() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let r = krw(&url, &["status", "--timeout", "2"], &[]);
    r.expect_code(69);
    assert!(r.stderr.contains("Marathon unreachable"), "{}", r.stderr);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
}
