//! Flags, capacity detection from a fake host root, allocatable arithmetic, invalid reservations.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn run_to_exit(args: &[&str], host: &HostRoot) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("FAKE_KUBELET_HOST_ROOT", host.path())
        .env_remove("FAKE_KUBELET_FAULT")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn unknown_and_malformed_flags_exit_1() {
    let host = HostRoot::new(1024 * 1024).flat_cpus(1);
    let (code, err) = run_to_exit(&["--xyz"], &host);
    assert_eq!(code, 1);
    assert!(err.contains("Error: unknown flag: --xyz"), "{err}");
    let (code, err) = run_to_exit(&["--healthz-port=0", "--xyz=1"], &host);
    assert_eq!(code, 1);
    assert!(err.contains("Error: unknown flag: --xyz"), "{err}");
    let (code, err) = run_to_exit(&["--system-reserved=gpu=1"], &host);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reserve \"gpu\" resource"), "{err}");
    let (code, err) = run_to_exit(&["--kube-reserved=cpu=1,memory=-1Gi"], &host);
    assert_eq!(code, 1);
    assert!(
        err.contains("resource quantity for \"memory\" cannot be negative"),
        "{err}"
    );
    let (code, err) = run_to_exit(&["--system-reserved=memory=12XB"], &host);
    assert_eq!(code, 1, "{err}");
    let (code, err) = run_to_exit(&["--max-pods", "many"], &host);
    assert_eq!(code, 1, "{err}");
    let (code, err) = run_to_exit(&["--eviction-hard=memory.available=100Mi"], &host);
    assert_eq!(code, 1, "{err}");
    let (code, err) = run_to_exit(&["--fail-swap-on=perhaps"], &host);
    assert_eq!(code, 1, "{err}");
    let (code, _) = run_to_exit(&["--version"], &host);
    assert_eq!(code, 0);
}

fn capacity_of(host: &HostRoot, extra: &[&str]) -> (serde_json::Value, String) {
    let mut o = Opts::new(host.path()).arg("--healthz-port=0");
    for a in extra {
        o = o.arg(*a);
    }
    let k = Kubelet::start(o);
    let st = k.wait_status(Duration::from_secs(3), |_| true);
    // the allocatable line is printed before status.json is written
    let err = k.stderr();
    (st, err)
}

#[test]
fn capacity_numa_offline_and_hugepages() {
    let host = HostRoot::new(8_000_000)
        .numa(&[&[0, 1, 2, 3], &[4, 5, 6, 7]])
        .online("0-2,4,6")
        .hugepages(2048, 10)
        .hugepages(1_048_576, 1);
    let (st, err) = capacity_of(&host, &[]);
    let huge = 10 * 2048 * 1024 + 1024 * 1024 * 1024i64;
    assert_eq!(st["capacity"]["cpu_millicores"], 5000);
    assert_eq!(st["capacity"]["memory_bytes"], 8_000_000i64 * 1024);
    assert_eq!(st["capacity"]["hugepages_bytes"], huge);
    assert_eq!(st["eviction_hard_memory_bytes"], 100 << 20);
    let mem = 8_000_000i64 * 1024 - (100 << 20) - huge;
    assert_eq!(st["allocatable"]["memory_bytes"], mem);
    assert_eq!(st["allocatable"]["cpu_millicores"], 5000);
    assert!(
        err.contains(&format!("allocatable cpu=5000m memory={mem}")),
        "{err}"
    );
}

#[test]
fn capacity_numa_without_online_file_counts_all() {
    let host = HostRoot::new(2_000_000).numa(&[&[0, 1], &[2, 3], &[4]]);
    let (st, _) = capacity_of(&host, &[]);
    assert_eq!(st["capacity"]["cpu_millicores"], 5000);
    assert_eq!(st["capacity"]["hugepages_bytes"], 0);
}

#[test]
fn capacity_without_node_dirs_falls_back_to_cpu_dirs() {
    // cadvisor's getCPUTopology counts every cpuN directory here, offline ones included.
    let host = HostRoot::new(4_000_000).flat_cpus(6).online("0-3");
    let (st, _) = capacity_of(&host, &["--experimental-allocatable-ignore-eviction"]);
    assert_eq!(st["capacity"]["cpu_millicores"], 6000);
    // eviction ignored: allocatable memory == capacity
    assert_eq!(st["eviction_hard_memory_bytes"], 0);
    assert_eq!(st["allocatable"]["memory_bytes"], 4_000_000i64 * 1024);
    let host = HostRoot::new(4_000_000).flat_cpus(3);
    let (st, _) = capacity_of(&host, &["--eviction-hard=memory.available<10%"]);
    assert_eq!(st["capacity"]["cpu_millicores"], 3000);
    let ev = (4_000_000f64 * 1024.0 * f64::from(10f32 / 100.0)) as i64;
    assert_eq!(st["eviction_hard_memory_bytes"], ev);
}

#[test]
fn node_allocatable_docs_example() {
    // 16 CPUs, 32Gi; kube cpu=1,memory=2Gi; system cpu=500m,memory=1Gi; memory.available<500Mi
    let host = HostRoot::new(32 * 1024 * 1024).flat_cpus(16);
    let (st, err) = capacity_of(
        &host,
        &[
            "--kube-reserved=cpu=1,memory=2Gi,ephemeral-storage=1Gi",
            "--system-reserved",
            "cpu=500m,memory=1Gi,ephemeral-storage=1Gi",
            "--eviction-hard=memory.available<500Mi,nodefs.available<10%",
        ],
    );
    // 32Gi - 2Gi - 1Gi - 500Mi = 29196Mi. The docs round this to "28.5Gi" (28.5Gi would need
    // 512Mi); kubelet's arithmetic is exact, so the exact number is what we check.
    let mem = 32 * (1i64 << 30) - 2 * (1 << 30) - (1 << 30) - 500 * (1 << 20);
    assert_eq!(mem, 29196 * (1i64 << 20));
    assert!((mem as f64 / (1u64 << 30) as f64 - 28.5).abs() < 0.02);
    assert_eq!(st["allocatable"]["cpu_millicores"], 14500);
    assert_eq!(st["allocatable"]["memory_bytes"], mem);
    assert_eq!(st["kube_reserved"]["cpu_millicores"], 1000);
    assert_eq!(st["system_reserved"]["memory_bytes"], 1i64 << 30);
    assert_eq!(st["eviction_hard_memory_bytes"], 500 << 20);
    assert!(
        err.contains(&format!("allocatable cpu=14500m memory={mem}")),
        "{err}"
    );
}

#[test]
fn reservation_above_capacity_serves_healthz_then_exits_1() {
    let host = HostRoot::new(1_000_000).flat_cpus(2);
    let port = free_port();
    let mut k = Kubelet::start(
        Opts::new(host.path())
            .arg(format!("--healthz-port={port}"))
            .arg("--system-reserved=cpu=1,memory=1000000Ki"),
    );
    let r = wait_http(port, "/healthz", 200, Duration::from_millis(1500));
    assert_eq!(r.body, "ok");
    let st = k.wait_exit(Duration::from_secs(3)).expect("exits");
    assert_eq!(st.code(), Some(1));
    let reservation = 1_000_000i64 * 1024 + (100 << 20);
    let capacity = 1_000_000i64 * 1024;
    let line = format!(
        "\"Failed to start ContainerManager\" err=\"invalid Node Allocatable configuration. Resource \\\"memory\\\" has a reservation of {reservation} but capacity of {capacity}. Expected capacity >= reservation.\""
    );
    let err = k.stderr();
    assert!(err.contains(&line), "missing {line}\nin\n{err}");
}

#[test]
fn reservation_equal_to_capacity_is_valid_with_zero_allocatable() {
    let host = HostRoot::new(1_000_000).flat_cpus(2).hugepages(2048, 4);
    let huge = 4 * 2048 * 1024i64;
    let sys_mem = 1_000_000i64 * 1024 - (100 << 20) - huge;
    let mut k = Kubelet::start(
        Opts::new(host.path())
            .arg("--healthz-port=0")
            .arg(format!("--system-reserved=cpu=2,memory={sys_mem}")),
    );
    let st = k.wait_status(Duration::from_secs(3), |_| true);
    assert_eq!(st["allocatable"]["cpu_millicores"], 0);
    assert_eq!(st["allocatable"]["memory_bytes"], 0);
    assert_eq!(st["valid"], true);
    assert!(
        k.wait_exit(Duration::from_millis(600)).is_none(),
        "must keep running"
    );
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let host = HostRoot::new(4_000_000).flat_cpus(4);
    let cfg = host.path().join("kubelet-config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 7\nsystemReserved:\n  cpu: \"1\"\n  memory: 1Gi\nevictionHard:\n  memory.available: \"200Mi\"\n",
    )
    .unwrap();
    let (st, _) = capacity_of(
        &host,
        &[
            &format!("--config={}", cfg.display()),
            "--system-reserved=cpu=500m",
        ],
    );
    assert_eq!(st["max_pods"], 7);
    assert_eq!(st["system_reserved"]["cpu_millicores"], 500);
    assert_eq!(
        st["system_reserved"]["memory_bytes"], 0,
        "flag replaces the whole map"
    );
    assert_eq!(st["eviction_hard_memory_bytes"], 200 << 20);
    let (code, err) = run_to_exit(&["--config=/nonexistent/kubelet.yaml"], &host);
    assert_eq!(code, 1);
    assert!(err.contains("failed to load Kubelet config file"), "{err}");
}
