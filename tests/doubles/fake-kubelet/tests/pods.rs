//! Static pods: detached processes, admission, restart with lower allocatable, manifest resync.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const FAST: (&str, &str) = ("FAKE_KUBELET_SYNC_INTERVAL_MS", "100");

fn running(st: &Value, name: &str) -> Option<i32> {
    let p = pod(st, name)?;
    if p["phase"] == "Running" {
        p["pid"].as_i64().map(|x| x as i32)
    } else {
        None
    }
}

#[test]
fn pods_are_detached_and_survive_sigterm() {
    let host = HostRoot::new(4_000_000).flat_cpus(2);
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("web.json"),
        pod_manifest(
            "web",
            "2024-01-01T00:00:00Z",
            Some("100m"),
            Some("64Mi"),
            &["sleep", "300"],
            1,
        ),
    )
    .unwrap();
    let mut reaper = PodReaper::default();
    let mut k = Kubelet::start(
        Opts::new(host.path())
            .arg("--healthz-port=0")
            .arg(format!(
                "--pod-manifest-path={}",
                manifests.path().display()
            ))
            .env(FAST.0, FAST.1)
            .env("SECRET_FROM_KUBELET_ENV", "leak"),
    );
    let st = k.wait_status(Duration::from_secs(3), |s| running(s, "web").is_some());
    reaper.track(&st);
    let pid = running(&st, "web").unwrap();
    let (_, start, ppid, sid) = proc_stat(pid).unwrap();
    assert_ne!(ppid, k.pid(), "pod must not be kubelet's child");
    let (_, _, _, ksid) = proc_stat(k.pid()).unwrap();
    assert_ne!(sid, ksid, "pod must not share kubelet's session");
    assert_eq!(sid, pid, "pod is its own session leader");
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(env, b"PATH=/usr/bin:/bin\0");
    // per-pod record with pid + start time
    let rec: Value = serde_json::from_slice(
        &std::fs::read(k.root_dir.join("fake-kubelet/pods/kube-system_web.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["pid"], pid);
    assert_eq!(rec["start_time"], start);
    k.signal(libc::SIGTERM);
    assert_eq!(k.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "pod must outlive kubelet");
}

#[test]
fn restart_with_zero_allocatable_rejects_requesting_pods_keeps_best_effort() {
    let host = HostRoot::new(4_000_000).flat_cpus(4).hugepages(2048, 8);
    let manifests = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let m = |f: &str, body: String| std::fs::write(manifests.path().join(f), body).unwrap();
    m(
        "a.json",
        pod_manifest(
            "a-cpu",
            "2024-01-01T00:00:01Z",
            Some("500m"),
            None,
            &["sleep", "300"],
            1,
        ),
    );
    m(
        "b.json",
        pod_manifest(
            "b-mem",
            "2024-01-01T00:00:02Z",
            None,
            Some("100Mi"),
            &["sleep", "300"],
            1,
        ),
    );
    m(
        "c.json",
        pod_manifest(
            "c-besteffort",
            "2024-01-01T00:00:03Z",
            None,
            None,
            &["sleep", "300"],
            1,
        ),
    );
    // a pod that ignores SIGTERM, with a 30 s grace period of its own: a rejected pod is killed
    // by housekeeping with a 1 s grace override (HandlePodCleanups), not its own grace
    m(
        "d.json",
        pod_manifest(
            "d-stubborn",
            "2024-01-01T00:00:04Z",
            Some("100m"),
            None,
            &["sh", "-c", "trap '' TERM; sleep 300"],
            30,
        ),
    );
    let mut reaper = PodReaper::default();
    let opts = |extra: Option<String>| {
        let mut o = Opts::new(host.path())
            .root_dir(root.path())
            .arg("--healthz-port=0")
            .arg(format!(
                "--pod-manifest-path={}",
                manifests.path().display()
            ))
            .env(FAST.0, FAST.1);
        if let Some(e) = extra {
            o = o.arg(e);
        }
        o
    };
    let mut k = Kubelet::start(opts(None));
    let st = k.wait_status(Duration::from_secs(3), |s| {
        ["a-cpu", "b-mem", "c-besteffort", "d-stubborn"]
            .iter()
            .all(|n| running(s, n).is_some())
    });
    reaper.track(&st);
    let pids: Vec<i32> = ["a-cpu", "b-mem", "c-besteffort", "d-stubborn"]
        .iter()
        .map(|n| running(&st, n).unwrap())
        .collect();
    k.signal(libc::SIGTERM);
    assert_eq!(k.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert!(pids.iter().all(|p| alive(*p)));

    // zero allocatable: system-reserved = capacity - eviction - hugepages
    let huge = 8 * 2048 * 1024i64;
    let sys_mem = 4_000_000i64 * 1024 - (100 << 20) - huge;
    let mut k2 = Kubelet::start(opts(Some(format!(
        "--system-reserved=cpu=4,memory={sys_mem}"
    ))));
    let kpid = k2.pid();
    let st = k2.wait_status(Duration::from_secs(3), |s| {
        s["pid"] == kpid && s["pods"].as_array().is_some_and(|a| a.len() == 4)
    });
    assert_eq!(st["allocatable"]["cpu_millicores"], 0);
    assert_eq!(st["allocatable"]["memory_bytes"], 0);
    let a = pod(&st, "a-cpu").unwrap();
    assert_eq!(
        (a["phase"].as_str(), a["reason"].as_str()),
        (Some("Failed"), Some("OutOfcpu"))
    );
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .starts_with("Pod was rejected: ")
    );
    let b = pod(&st, "b-mem").unwrap();
    assert_eq!(
        (b["phase"].as_str(), b["reason"].as_str()),
        (Some("Failed"), Some("OutOfmemory"))
    );
    assert_eq!(
        running(&st, "c-besteffort"),
        Some(pids[2]),
        "BestEffort pod adopted, not restarted"
    );
    assert!(
        wait_dead(pids[0], Duration::from_secs(2)),
        "rejected cpu pod killed"
    );
    assert!(
        wait_dead(pids[1], Duration::from_secs(2)),
        "rejected memory pod killed"
    );
    assert!(
        alive(pids[3]),
        "SIGTERM-ignoring pod still inside its grace period"
    );
    assert!(
        wait_dead(pids[3], Duration::from_secs(3)),
        "SIGKILL after the 1 s grace override, not the pod's own 30 s"
    );
    assert!(alive(pids[2]));
    let dir = |n: &str| root.path().join("pods").join(format!("uid-{n}"));
    let st = k2.wait_status(Duration::from_secs(3), |_| !dir("d-stubborn").exists());
    assert!(
        dir("c-besteffort").is_dir(),
        "pod dir of a running pod: {st}"
    );

    // zero pods as well: the BestEffort pod is rejected by the pod count and killed
    k2.signal(libc::SIGTERM);
    assert_eq!(
        k2.wait_exit(Duration::from_secs(2)).unwrap().code(),
        Some(0)
    );
    let k3 = Kubelet::start(
        opts(Some(format!("--system-reserved=cpu=4,memory={sys_mem}"))).arg("--max-pods=0"),
    );
    let kpid = k3.pid();
    let st = k3.wait_status(Duration::from_secs(3), |s| {
        s["pid"] == kpid && pod(s, "c-besteffort").is_some_and(|p| p["phase"] == "Failed")
    });
    let c = pod(&st, "c-besteffort").unwrap();
    assert_eq!(c["reason"], "OutOfpods", "{c}");
    assert!(
        wait_dead(pids[2], Duration::from_secs(3)),
        "BestEffort pod killed under --max-pods=0"
    );
    k3.wait_status(Duration::from_secs(3), |_| !dir("c-besteffort").exists());
}

#[test]
fn admission_order_max_pods_and_manifest_resync() {
    let host = HostRoot::new(4_000_000).flat_cpus(2);
    let manifests = tempfile::tempdir().unwrap();
    let m = |f: &str, body: String| std::fs::write(manifests.path().join(f), body).unwrap();
    // allocatable cpu = 1000m: the older pod fits, the newer one does not
    m(
        "new.json",
        pod_manifest(
            "newer",
            "2024-01-02T00:00:00Z",
            Some("600m"),
            None,
            &["sleep", "300"],
            1,
        ),
    );
    m(
        "old.json",
        pod_manifest(
            "older",
            "2024-01-01T00:00:00Z",
            Some("600m"),
            None,
            &["sleep", "300"],
            1,
        ),
    );
    let mut reaper = PodReaper::default();
    let k = Kubelet::start(
        Opts::new(host.path())
            .arg("--healthz-port=0")
            .arg("--system-reserved=cpu=1")
            .arg("--max-pods=2")
            .arg(format!(
                "--pod-manifest-path={}",
                manifests.path().display()
            ))
            .env(FAST.0, FAST.1),
    );
    let st = k.wait_status(Duration::from_secs(3), |s| {
        running(s, "older").is_some() && pod(s, "newer").is_some()
    });
    reaper.track(&st);
    assert_eq!(pod(&st, "newer").unwrap()["reason"], "OutOfcpu");
    // best-effort pods fit until max-pods: 1 admitted + 1 = 2 ok, the next is OutOfpods
    m(
        "be1.json",
        pod_manifest(
            "be1",
            "2024-01-03T00:00:00Z",
            None,
            None,
            &["sleep", "300"],
            1,
        ),
    );
    let st = k.wait_status(Duration::from_secs(3), |s| running(s, "be1").is_some());
    reaper.track(&st);
    m(
        "be2.json",
        pod_manifest(
            "be2",
            "2024-01-04T00:00:00Z",
            None,
            None,
            &["sleep", "300"],
            1,
        ),
    );
    let st = k.wait_status(Duration::from_secs(3), |s| pod(s, "be2").is_some());
    assert_eq!(pod(&st, "be2").unwrap()["reason"], "OutOfpods");
    // removing a manifest kills the pod
    let be1 = running(&st, "be1").unwrap();
    std::fs::remove_file(manifests.path().join("be1.json")).unwrap();
    k.wait_status(Duration::from_secs(3), |s| pod(s, "be1").is_none());
    assert!(wait_dead(be1, Duration::from_secs(2)));
    assert!(
        !k.root_dir
            .join("fake-kubelet/pods/kube-system_be1.json")
            .exists()
    );
}

#[test]
fn exited_container_is_restarted_and_orphans_are_killed_on_restart() {
    let host = HostRoot::new(4_000_000).flat_cpus(2);
    let manifests = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("p.json"),
        pod_manifest(
            "p",
            "2024-01-01T00:00:00Z",
            None,
            None,
            &["sleep", "300"],
            1,
        ),
    )
    .unwrap();
    let mut reaper = PodReaper::default();
    let o = || {
        Opts::new(host.path())
            .root_dir(root.path())
            .arg("--healthz-port=0")
            .arg(format!(
                "--pod-manifest-path={}",
                manifests.path().display()
            ))
            .env(FAST.0, FAST.1)
            .env("FAKE_KUBELET_CONTAINER_BACKOFF", "1s")
    };
    let mut k = Kubelet::start(o());
    let st = k.wait_status(Duration::from_secs(3), |s| running(s, "p").is_some());
    reaper.track(&st);
    let pid = running(&st, "p").unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let st = k.wait_status(Duration::from_secs(4), |s| {
        running(s, "p").is_some_and(|p| p != pid)
    });
    reaper.track(&st);
    let pid2 = running(&st, "p").unwrap();
    assert_eq!(pod(&st, "p").unwrap()["restarts"], 1);
    k.signal(libc::SIGTERM);
    k.wait_exit(Duration::from_secs(2)).unwrap();
    // manifest removed while kubelet was down: the next kubelet kills the orphan
    std::fs::remove_file(manifests.path().join("p.json")).unwrap();
    let k2 = Kubelet::start(o());
    let kpid = k2.pid();
    k2.wait_status(Duration::from_secs(3), |s| {
        s["pid"] == kpid && s["syncs"].as_u64() >= Some(1)
    });
    assert!(wait_dead(pid2, Duration::from_secs(3)));
}
