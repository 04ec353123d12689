//! `plan` (DESIGN §3, §9): the JSON contract, lease sources, and the invariant checked against
//! the kubelet double's own, independently written arithmetic: run it with plan's exact argv and
//! its allocatable must equal the lease.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use kubelet_resource_wrapper::capacity::fake::FakeHost;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn plan_json(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["plan", "--output", "json"];
    all.extend_from_slice(args);
    let out = agent(&all, env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan json")
}

fn host(dir: &std::path::Path, h: FakeHost<'_>) -> String {
    h.write(dir).expect("fake host");
    dir.display().to_string()
}

#[test]
fn json_has_every_contract_field_and_marathon_doubles_parse() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = host(
        dir.path(),
        FakeHost {
            cpus: 8,
            nodes: 2,
            online: Some("0-7"),
            mem_kib: 32 << 20,
            hugepages: &[(2048, 1024)],
        },
    );
    let v = plan_json(
        &[
            "--host-root",
            &root,
            "--kube-reserved",
            "cpu=100m,memory=256Mi",
        ],
        &[
            ("MARATHON_APP_RESOURCE_CPUS", "2.0"),
            ("MARATHON_APP_RESOURCE_MEM", "4196.0"),
        ],
    );
    assert_eq!(v["lease"]["cpu_millicores"], 2000);
    assert_eq!(v["lease"]["memory_bytes"].as_u64(), Some(4196 * MIB));
    assert_eq!(v["lease"]["source"], "env");
    assert_eq!(v["capacity"]["cpu_millicores"], 8000);
    assert_eq!(v["capacity"]["memory_bytes"].as_u64(), Some(32 * GIB));
    assert_eq!(v["capacity"]["hugepages_bytes"].as_u64(), Some(2 * GIB));
    assert_eq!(v["reserved"]["kube"]["cpu_millicores"], 100);
    assert_eq!(
        v["reserved"]["kube"]["memory_bytes"].as_u64(),
        Some(256 * MIB)
    );
    assert_eq!(
        v["reserved"]["eviction_hard_memory_bytes"].as_u64(),
        Some(100 * MIB)
    );
    assert_eq!(v["reserved"]["system"]["cpu_millicores"], 8000 - 2000 - 100);
    assert_eq!(
        v["reserved"]["system"]["memory_bytes"].as_u64(),
        Some(32 * GIB - 4196 * MIB - 256 * MIB - 100 * MIB - 2 * GIB)
    );
    assert_eq!(v["allocatable"]["cpu_millicores"], 2000);
    assert_eq!(v["allocatable"]["memory_bytes"].as_u64(), Some(4196 * MIB));
    assert_eq!(v["kubepods"]["cpu_shares"], 2048);
    let argv: Vec<&str> = v["kubelet_argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(argv[0], "/usr/bin/kubelet");
    assert!(
        argv.contains(&"--system-reserved=cpu=5900m,memory=27439136768"),
        "{argv:?}"
    );
    assert!(argv.contains(&"--kube-reserved=cpu=100m,memory=268435456"));
    assert!(argv.contains(&"--healthz-bind-address=127.0.0.1"));
    assert!(argv.contains(&"--healthz-port=10247"));
}

#[test]
fn sources_in_order_flags_env_legacy_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = host(
        dir.path(),
        FakeHost {
            cpus: 4,
            nodes: 0,
            online: None,
            mem_kib: 8 << 20,
            hugepages: &[],
        },
    );
    let legacy = dir.path().join("services");
    std::fs::write(&legacy, "cpu 1.0, memory 1024.0\n").expect("legacy");
    let legacy = legacy.display().to_string();
    let env = [
        ("MARATHON_APP_RESOURCE_CPUS", "2.0"),
        ("MARATHON_APP_RESOURCE_MEM", "2048.0"),
    ];
    let base = [
        "--host-root",
        root.as_str(),
        "--legacy-file",
        legacy.as_str(),
    ];
    let with = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        plan_json(&args, env)
    };
    let v = with(&["--cpus", "3", "--mem", "3072"], &env);
    assert_eq!(
        (
            v["lease"]["source"].as_str(),
            v["lease"]["cpu_millicores"].as_u64()
        ),
        (Some("flags"), Some(3000))
    );
    let v = with(
        &[],
        &[("KRW_CPUS", "0.5"), ("KRW_MEM", "512"), env[0], env[1]],
    );
    assert_eq!(
        (
            v["lease"]["source"].as_str(),
            v["lease"]["cpu_millicores"].as_u64()
        ),
        (Some("flags"), Some(500))
    );
    let v = with(&[], &env);
    assert_eq!(
        (
            v["lease"]["source"].as_str(),
            v["lease"]["cpu_millicores"].as_u64()
        ),
        (Some("env"), Some(2000))
    );
    let v = with(&[], &[]);
    assert_eq!(v["lease"]["source"], "legacy-file");
    assert_eq!(v["lease"]["memory_bytes"].as_u64(), Some(1024 * MIB));
}

#[test]
fn zero_lease_clamp_and_kubelet_arguments() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = host(
        dir.path(),
        FakeHost {
            cpus: 2,
            nodes: 1,
            online: None,
            mem_kib: 4 << 20,
            hugepages: &[],
        },
    );
    let v = plan_json(&["--host-root", &root, "--cpus", "0", "--mem", "0"], &[]);
    assert_eq!(v["allocatable"]["cpu_millicores"], 0);
    assert_eq!(v["allocatable"]["memory_bytes"], 0);
    let v = plan_json(
        &[
            "--host-root",
            &root,
            "--cpus",
            "8",
            "--mem",
            "8192",
            "--clamp",
        ],
        &[],
    );
    assert_eq!(v["lease"]["cpu_millicores"], 2000);
    assert_eq!(
        v["lease"]["memory_bytes"].as_u64(),
        Some(4 * GIB - 100 * MIB)
    );
    assert_eq!(v["clamped_from"]["cpu_millicores"], 8000);
    let args_file = dir.path().join("kubelet-args");
    std::fs::write(
        &args_file,
        "# comment\n--kubeconfig=/etc/kubernetes/kubelet.conf\n\n--v=2\n",
    )
    .expect("args");
    let v = plan_json(
        &[
            "--host-root",
            &root,
            "--cpus",
            "1",
            "--mem",
            "1024",
            "--kubelet",
            "/opt/bin/kubelet",
            "--kubelet-args-file",
            &args_file.display().to_string(),
            "--",
            "--node-labels=a=b",
        ],
        &[],
    );
    let argv: Vec<String> = serde_json::from_value(v["kubelet_argv"].clone()).expect("argv");
    assert_eq!(
        &argv[..4],
        [
            "/opt/bin/kubelet",
            "--kubeconfig=/etc/kubernetes/kubelet.conf",
            "--v=2",
            "--node-labels=a=b"
        ]
    );
    assert_eq!(argv.len(), 9, "{argv:?}");
}

#[test]
fn text_report_shows_every_term_and_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = host(
        dir.path(),
        FakeHost {
            cpus: 2,
            nodes: 1,
            online: None,
            mem_kib: 4 << 20,
            hugepages: &[],
        },
    );
    let out = agent(
        &[
            "plan",
            "--host-root",
            &root,
            "--cpus",
            "1.5",
            "--mem",
            "1536",
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "lease (from flags)",
        "system-reserved",
        "kube-reserved",
        "eviction-hard",
        "node allocatable       cpu    1500m (1500m)   memory     1536Mi",
        "kubepods cgroup",
        "--system-reserved=cpu=500m,memory=",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
}

/// Runs the kubelet double with plan's argv (healthz moved to a free port) and reads back the
/// allocatable it computed.
fn kubelet_double_allocatable(root: &str, plan: &Value) -> Value {
    let state = tempfile::tempdir().expect("state");
    let port = free_port();
    let argv: Vec<String> = serde_json::from_value(plan["kubelet_argv"].clone()).expect("argv");
    let mut args: Vec<String> = argv[1..]
        .iter()
        .map(|a| {
            if a.starts_with("--healthz-port=") {
                format!("--healthz-port={port}")
            } else {
                a.clone()
            }
        })
        .collect();
    args.push(format!("--root-dir={}", state.path().display()));
    let child = Command::new(double("fake-kubelet"))
        .args(&args)
        .env("FAKE_KUBELET_HOST_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fake kubelet");
    let guard = Guard {
        child,
        extra: Vec::new(),
        log: None,
    };
    let status_file = state.path().join("fake-kubelet/status.json");
    assert!(wait_until(Duration::from_secs(5), || status_file.exists()));
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(&status_file).expect("status"))
            .expect("json");
    drop(guard);
    assert_eq!(
        status["valid"], true,
        "kubelet double refused the reservation: {status}"
    );
    status["allocatable"].clone()
}

#[test]
fn kubelet_double_computes_allocatable_equal_to_the_lease_on_odd_hosts() {
    struct Host {
        cpus: u64,
        online: Option<&'static str>,
        mem_kib: u64,
        hugepages: &'static [(u64, u64)],
        lease: (&'static str, &'static str),
        extra: &'static [&'static str],
    }
    let hosts = [
        Host {
            cpus: 8,
            online: None,
            mem_kib: 32 << 20,
            hugepages: &[],
            lease: ("2.0", "4196.0"),
            extra: &[],
        },
        Host {
            cpus: 16,
            online: Some("0-11"),
            mem_kib: 65_843_200,
            hugepages: &[(2048, 512), (1_048_576, 2)],
            lease: ("4.35", "10000.5"),
            extra: &["--kube-reserved", "cpu=250m,memory=512Mi"],
        },
        Host {
            cpus: 4,
            online: None,
            mem_kib: 16 << 20,
            hugepages: &[],
            lease: ("0.001", "0.5"),
            extra: &[
                "--eviction-hard",
                "memory.available<5%,nodefs.available<10%",
            ],
        },
        Host {
            cpus: 2,
            online: None,
            mem_kib: 4 << 20,
            hugepages: &[],
            lease: ("0", "0"),
            extra: &[],
        },
        Host {
            cpus: 2,
            online: None,
            mem_kib: 4 << 20,
            hugepages: &[],
            lease: ("2", "3996"),
            extra: &[],
        },
    ];
    for h in hosts {
        let dir = tempfile::tempdir().expect("tmp");
        let root = host(
            dir.path(),
            FakeHost {
                cpus: h.cpus,
                nodes: 2,
                online: h.online,
                mem_kib: h.mem_kib,
                hugepages: h.hugepages,
            },
        );
        let mut args = vec!["--host-root", root.as_str()];
        args.extend_from_slice(h.extra);
        let plan = plan_json(
            &args,
            &[
                ("MARATHON_APP_RESOURCE_CPUS", h.lease.0),
                ("MARATHON_APP_RESOURCE_MEM", h.lease.1),
            ],
        );
        let got = kubelet_double_allocatable(&root, &plan);
        assert_eq!(
            got["cpu_millicores"], plan["lease"]["cpu_millicores"],
            "{:?}: {got}",
            h.lease
        );
        assert_eq!(
            got["memory_bytes"], plan["lease"]["memory_bytes"],
            "{:?}: {got}",
            h.lease
        );
    }
}

#[test]
fn plan_shows_the_kubelet_config_fields_it_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = host(
        dir.path(),
        FakeHost {
            cpus: 4,
            nodes: 1,
            online: None,
            mem_kib: 8 << 20,
            hugepages: &[],
        },
    );
    let config = dir.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         systemReserved: {cpu: 500m, memory: 1Gi}\nhealthzPort: 10248\nmaxPods: 42\naddress: 0.0.0.0\n",
    )
    .expect("write config");
    let config_flag = format!("--config={}", config.display());
    let args = [
        "--host-root",
        &root,
        "--cpus",
        "1",
        "--mem",
        "512",
        "--",
        &config_flag,
    ];
    let v = plan_json(&args, &[("KRW_ENV_FILE", "/nonexistent")]);
    let fields = v["kubelet_config"].as_array().expect("kubelet_config");
    let field = |name: &str| fields.iter().find(|f| f["field"] == name).cloned();
    let sys = field("systemReserved").expect("systemReserved read");
    assert_eq!(sys["overridden_by"], "--system-reserved");
    assert_eq!(sys["file"], config.display().to_string());
    assert_eq!(
        field("healthzPort").expect("healthzPort")["overridden_by"],
        "--healthz-port"
    );
    let max_pods = field("maxPods").expect("maxPods");
    assert_eq!(
        (
            max_pods["value"].as_str(),
            max_pods["overridden_by"].is_null()
        ),
        (Some("42"), true)
    );
    assert!(field("address").is_none(), "{fields:?}");
    let mut text_args = vec!["plan"];
    text_args.extend_from_slice(&args);
    let out = agent(&text_args, &[("KRW_ENV_FILE", "/nonexistent")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kubelet config fields read:"), "{text}");
    assert!(text.contains("overridden by --system-reserved"), "{text}");
    assert!(text.contains("maxPods"), "{text}");
}
