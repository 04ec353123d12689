//! fake-kubelet: a test double that behaves like kubelet where kubelet-resource-wrapper can
//! observe it (flags, capacity, allocatable, healthz, signals, admission, pods that outlive
//! it, and optionally the Kubernetes API). See README.md next to Cargo.toml.

mod api;
mod capacity;
mod config_file;
mod faults;
mod flags;
mod healthz;
mod pods;
mod procs;
mod quantity;
mod util;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use util::log;

const USAGE: &str = "fake-kubelet: test double for kubelet (kubelet flag syntax).

Interpreted flags: --system-reserved --kube-reserved --eviction-hard
  --experimental-allocatable-ignore-eviction --healthz-port (10248, 0 = off)
  --healthz-bind-address (127.0.0.1) --max-pods (110) --root-dir (/var/lib/kubelet)
  --pod-manifest-path DIR --kubeconfig FILE --hostname-override NAME
  --node-status-update-frequency (10s) --v --config FILE (JSON or simple YAML
  KubeletConfiguration: maxPods healthzPort healthzBindAddress staticPodPath
  nodeStatusUpdateFrequency systemReserved kubeReserved evictionHard)
Every other kubelet flag is accepted and ignored.

Test-only environment:
  FAKE_KUBELET_HOST_ROOT       read /proc and /sys under this dir (default /)
  FAKE_KUBELET_FAULT           crash-at-start, crash-after=SECS, hang, unhealthy,
                               unhealthy-while=PATH, slow-start=SECS, ignore-sigterm,
                               no-lease-while=PATH
  FAKE_KUBELET_SYNC_INTERVAL_MS  pod sync period (default 1000)
  FAKE_KUBELET_NODE_STATUS_REPORT_FREQUENCY  nodeStatusReportFrequency (Go
                               duration; default 5m, or the update frequency if
                               --node-status-update-frequency is given)
  FAKE_KUBELET_NODE_LEASE_DURATION_SECONDS  nodeLeaseDurationSeconds (40); the
                               Lease is renewed every quarter of it
";

fn die(msg: &str) -> ! {
    eprintln!("Error: {msg}");
    std::process::exit(1);
}

fn install_signals(ignore_sigterm: bool) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let sigs: Vec<i32> = if ignore_sigterm {
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe { libc::signal(SIGTERM, libc::SIG_IGN) };
        vec![SIGINT]
    } else {
        vec![SIGTERM, SIGINT]
    };
    let mut signals = match signal_hook::iterator::Signals::new(&sigs) {
        Ok(s) => s,
        Err(e) => die(&format!("cannot install signal handlers: {e}")),
    };
    let count = Arc::new(AtomicU32::new(0));
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                log(
                    'I',
                    &format!("\"Received signal, shutting down\" signal={sig}"),
                );
                // a short shutdown window, as kubelet has; a second signal inside it exits 1
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    log('I', "\"Kubelet stopped\"");
                    std::process::exit(0);
                });
            } else {
                log('E', "\"Received second signal, exiting directly\"");
                std::process::exit(1);
            }
        }
    });
}

fn start_healthz(addr: SocketAddr, faults: Arc<faults::Faults>) {
    let delay = faults.slow_start;
    let bind_and_serve = move |faults: Arc<faults::Faults>| loop {
        match healthz::bind(addr) {
            Ok(l) => {
                log(
                    'I',
                    &format!("\"Starting healthz server\" address=\"{addr}\""),
                );
                healthz::serve(l, faults);
                return;
            }
            Err(e) => {
                log(
                    'E',
                    &format!("\"Failed to start healthz server\" err=\"listen tcp {addr}: {e}\""),
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    match delay {
        Some(d) => {
            std::thread::spawn(move || {
                std::thread::sleep(d);
                bind_and_serve(faults);
            });
        }
        None => match healthz::bind(addr) {
            Ok(l) => {
                log(
                    'I',
                    &format!("\"Starting healthz server\" address=\"{addr}\""),
                );
                std::thread::spawn(move || healthz::serve(l, faults));
            }
            Err(_) => {
                std::thread::spawn(move || bind_and_serve(faults));
            }
        },
    }
}

struct StatusWriter {
    path: PathBuf,
    base: Value,
    warned: std::cell::Cell<bool>,
}

impl StatusWriter {
    fn write(&self, pods: Vec<Value>, syncs: u64) {
        let mut v = self.base.clone();
        v["pods"] = Value::Array(pods);
        v["syncs"] = json!(syncs);
        v["updated"] = json!(util::now_rfc3339());
        let data = serde_json::to_vec_pretty(&v).unwrap_or_default();
        if let Err(e) = util::write_atomic(&self.path, &data)
            && !self.warned.replace(true)
        {
            log(
                'E',
                &format!(
                    "\"Cannot write status file\" path=\"{}\" err=\"{e}\"",
                    self.path.display()
                ),
            );
        }
    }
}

fn reserved_json(r: &flags::Reserved) -> Value {
    json!({
        "cpu_millicores": r.cpu_millicores,
        "memory_bytes": r.memory_bytes,
        "ephemeral_storage_bytes": r.ephemeral_storage_bytes,
        "pid": r.pid,
    })
}

/// A Go duration from the environment (test cadence knobs).
fn env_duration(name: &str) -> Option<Duration> {
    let v = std::env::var(name).ok()?;
    match flags::parse_go_duration(&v) {
        Some(d) if !d.is_zero() => Some(d),
        _ => die(&format!("{name}: invalid duration {v:?}")),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let faults = match faults::Faults::from_env() {
        Ok(f) => Arc::new(f),
        Err(e) => die(&e),
    };
    let cfg = match flags::parse(argv) {
        Ok(flags::ParseOutcome::Run(c)) => *c,
        Ok(flags::ParseOutcome::Help) => {
            print!("{USAGE}");
            return;
        }
        Ok(flags::ParseOutcome::Version) => {
            println!("Kubernetes v1.31.0-fake");
            return;
        }
        Err(e) => die(&e.0),
    };
    install_signals(faults.ignore_sigterm);
    if faults.crash_at_start {
        log('E', "\"fake-kubelet fault injected: crash-at-start\"");
        std::process::exit(1);
    }
    if let Some(d) = faults.crash_after {
        std::thread::spawn(move || {
            std::thread::sleep(d);
            eprintln!(
                "panic: fake-kubelet fault injected: crash-after\n\ngoroutine 1 [running]:\nmain.main()\n\t/fake/kubelet.go:1 +0x1d\nexit status 2"
            );
            std::process::exit(2);
        });
    }
    let host_root =
        PathBuf::from(std::env::var("FAKE_KUBELET_HOST_ROOT").unwrap_or_else(|_| "/".into()));
    let cap = match capacity::detect(&host_root) {
        Ok(c) => c,
        Err(e) => {
            log('E', &format!("\"Failed to get machine info\" err=\"{e}\""));
            std::process::exit(1);
        }
    };
    let alloc = capacity::compute(&cfg, &cap);
    log(
        'I',
        &format!(
            "\"Node capacity\" cpu={}m memory={} hugepages={}",
            cap.cpu_millicores,
            cap.memory_bytes,
            cap.hugepages_bytes()
        ),
    );
    eprintln!(
        "allocatable cpu={}m memory={}",
        alloc.cpu_millicores, alloc.memory_bytes
    );

    if cfg.healthz_port != 0 {
        start_healthz(
            SocketAddr::new(cfg.healthz_bind_address, cfg.healthz_port),
            faults.clone(),
        );
    }

    let node_name = cfg
        .hostname_override
        .clone()
        .unwrap_or_else(api::hostname)
        .to_lowercase();
    let hugepages: serde_json::Map<String, Value> = cap
        .hugepages
        .iter()
        .map(|(size, bytes)| (api::hugepage_name(*size), json!(bytes)))
        .collect();
    let status = StatusWriter {
        path: cfg.root_dir.join("fake-kubelet/status.json"),
        base: json!({
            "pid": std::process::id(),
            "argv": cfg.argv,
            "healthz_port": cfg.healthz_port,
            "healthz_bind_address": cfg.healthz_bind_address.to_string(),
            "node_name": node_name,
            "api_mode": cfg.kubeconfig.is_some(),
            "host_root": host_root.display().to_string(),
            "capacity": {
                "cpu_millicores": cap.cpu_millicores,
                "memory_bytes": cap.memory_bytes,
                "hugepages_bytes": cap.hugepages_bytes(),
                "hugepages": hugepages,
            },
            "system_reserved": reserved_json(&cfg.system_reserved),
            "kube_reserved": reserved_json(&cfg.kube_reserved),
            "eviction_hard_memory_bytes": alloc.eviction_hard_memory_bytes,
            "allocatable": {"cpu_millicores": alloc.cpu_millicores, "memory_bytes": alloc.memory_bytes},
            "max_pods": cfg.max_pods,
            "valid": alloc.errors.is_empty(),
            "errors": alloc.errors,
        }),
        warned: std::cell::Cell::new(false),
    };
    status.write(Vec::new(), 0);

    if !alloc.errors.is_empty() {
        // kubelet: healthz answers while initializeRuntimeDependentModules fails, then os.Exit(1)
        std::thread::sleep(Duration::from_millis(300));
        let err = format!(
            "invalid Node Allocatable configuration. {}",
            alloc.errors.join(" ")
        );
        log(
            'E',
            &format!(
                "\"Failed to start ContainerManager\" err=\"{}\"",
                err.replace('"', "\\\"")
            ),
        );
        std::process::exit(1);
    }

    let mut client = match &cfg.kubeconfig {
        None => None,
        Some(p) => match api::Client::from_kubeconfig(p) {
            Ok(c) => Some(c),
            Err(e) => {
                log('E', &format!("\"Failed to run kubelet\" err=\"{e}\""));
                std::process::exit(1);
            }
        },
    };
    if let Some(c) = &client {
        let info = api::NodeInfo {
            name: node_name.clone(),
            cpu_capacity_m: cap.cpu_millicores,
            mem_capacity: cap.memory_bytes,
            hugepages: cap.hugepages.clone(),
            cpu_alloc_m: alloc.cpu_millicores,
            mem_alloc: alloc.memory_bytes,
            max_pods: cfg.max_pods,
        };
        let cadence = api::StatusCadence {
            update_every: cfg.node_status_update_frequency,
            report_every: env_duration("FAKE_KUBELET_NODE_STATUS_REPORT_FREQUENCY").unwrap_or(
                if cfg.node_status_update_frequency_explicit {
                    cfg.node_status_update_frequency
                } else {
                    Duration::from_secs(300)
                },
            ),
        };
        let lease_secs = std::env::var("FAKE_KUBELET_NODE_LEASE_DURATION_SECONDS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(40);
        let (c1, c2, node, faults) = (c.clone(), c.clone(), node_name.clone(), faults.clone());
        std::thread::spawn(move || api::node_loop(c1, info, cadence));
        std::thread::spawn(move || api::lease_loop(c2, node, lease_secs, faults));
    }

    let interval = std::env::var("FAKE_KUBELET_SYNC_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(1));
    run_sync_loop(
        &cfg,
        &mut client,
        &node_name,
        alloc.cpu_millicores,
        alloc.memory_bytes,
        interval,
        &status,
    );
}

fn run_sync_loop(
    cfg: &flags::Config,
    client: &mut Option<api::Client>,
    node_name: &str,
    alloc_cpu: i64,
    alloc_mem: i64,
    interval: Duration,
    status: &StatusWriter,
) -> ! {
    let mut engine = pods::Engine::new(&cfg.root_dir, cfg.max_pods, alloc_cpu, alloc_mem);
    let mut bad = std::collections::HashMap::new();
    let mut api_pods: Option<Vec<pods::PodSpec>> = None;
    let mut syncs = 0u64;
    loop {
        let mut desired = match &cfg.pod_manifest_path {
            Some(dir) => pods::read_manifest_dir(Path::new(dir), &mut bad),
            None => Vec::new(),
        };
        let mut ready = true;
        if let Some(c) = client.as_ref() {
            match c.list_pods(node_name) {
                Ok(p) => api_pods = Some(p),
                Err(e) => log('E', &format!("\"Failed to list pods\" err=\"{e}\"")),
            }
            // until the API source has answered once, orphaned pod records are not cleaned up
            // (kubelet waits for all sources before HandlePodCleanups); static pods run anyway
            ready = api_pods.is_some();
            desired.extend(api_pods.clone().unwrap_or_default());
        }
        engine.sync(
            desired,
            ready,
            client.as_mut().map(|c| c as &mut dyn pods::ApiSink),
        );
        syncs += 1;
        status.write(engine.status(), syncs);
        std::thread::sleep(interval);
    }
}
