//! Building the fleet: one fake kube-apiserver, N emulated hosts (host root, lock file, ports,
//! kubelet state dir, settings file, their own `standby`), the fake Marathon with one agent per
//! host, and the Marathon app derived from the shipped one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kubelet_resource_wrapper::capacity::fake::FakeHost;
use kubelet_resource_wrapper::marathon::strategy::one_at_a_time;
use serde_json::{Value, json};

use crate::procs::Procs;

/// The binaries the rehearsal runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub agent: PathBuf,
    pub fake_kubelet: PathBuf,
    pub fake_apiserver: PathBuf,
    pub fake_marathon: PathBuf,
    pub emulator: PathBuf,
}

impl Bins {
    /// All next to each other in `dir` (cargo's target/debug or target/release).
    pub fn in_dir(dir: &Path) -> Result<Bins, String> {
        let find = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(format!(
                    "{} is missing: run `cargo build --workspace`",
                    p.display()
                ))
            }
        };
        Ok(Bins {
            agent: find("kubelet-resource-wrapper")?,
            fake_kubelet: find("fake-kubelet")?,
            fake_apiserver: find("fake-apiserver")?,
            fake_marathon: find("fake-marathon")?,
            emulator: find("mesos-task-emulator")?,
        })
    }
}

/// One emulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Hostname = Kubernetes node name.
    pub name: String,
    pub dir: PathBuf,
    pub cpus: u64,
    pub mem_gib: u64,
    pub hugepages_gib: u64,
    /// This host's stand-in for 127.0.0.1:10248.
    pub health_port: u16,
    pub standby_pid: u32,
}

impl Host {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    pub fn env_file(&self) -> PathBuf {
        self.dir.join("krw.env")
    }
    /// What identifies this host's kubelets on the command line.
    pub fn root_dir_arg(&self) -> String {
        format!("--root-dir={}", self.kubelet_dir().display())
    }
}

/// Everything running.
pub struct Fleet {
    pub work: PathBuf,
    pub bins: Bins,
    pub api_port: u16,
    pub api_fault: PathBuf,
    pub marathon_port: u16,
    pub events: PathBuf,
    pub hosts: Vec<Host>,
    pub scale: f64,
    pub repo: PathBuf,
}

/// Rehearsal settings that shape the fleet.
#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: usize,
    pub scale: f64,
    /// API Priority and Fairness seats per priority level (0 = unlimited).
    pub max_inflight: u32,
    pub apiserver_args: Vec<String>,
}

/// A free loopback port for a host's health check, taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port the kernel may hand to any outgoing connection or
/// `:0` bind could be taken between now and the agent's bind, and the agent would exit 78.
fn health_port(i: usize, taken: &[u16]) -> Result<u16, String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (start, span) = (low.saturating_sub(12_000).max(1024), 11_000u32);
    // Spread concurrent rehearsals apart by pid; probe until a port binds.
    let base = std::process::id().wrapping_mul(2_654_435_761) % span;
    for k in 0..span {
        let port = start + (base + i as u32 * 7 + k) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port below the ephemeral range".into())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn wait_port_file(path: &Path, procs: &Procs, pid: u32, what: &str) -> Result<u16, String> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Some(port) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return Ok(port);
        }
        if !procs.running(pid) {
            return Err(format!("{what} exited at start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not start within 30 s"))
}

/// Seconds scaled by the rehearsal's time scale, as the agent parses them.
pub fn secs(s: f64) -> String {
    format!("{:.3}", s.max(0.0))
}

impl Fleet {
    /// Starts the API server, the hosts with their `standby`, and the fake Marathon.
    pub fn start(
        work: &Path,
        repo: &Path,
        bins: Bins,
        procs: Procs,
        opts: &Options,
    ) -> Result<Fleet, String> {
        let api_fault = work.join("apiserver.fault");
        let api_port_file = work.join("apiserver.port");
        // Static tokens: the rehearsal is system:masters, each host's kubelet (and so its
        // agent's drain) is system:node:<host>, limited by the Node authorizer and by APF.
        let tokens = work.join("tokens.csv");
        let mut csv = format!(
            "{},fleet-admin,0,\"system:masters\"\n",
            crate::http::ADMIN_TOKEN
        );
        for i in 0..opts.hosts {
            csv.push_str(&format!(
                "node-token-{i},system:node:node-{i},{},\"system:nodes\"\n",
                i + 1
            ));
        }
        write(&tokens, &csv)?;
        let scale = opts.scale;
        let mut cmd = Command::new(&bins.fake_apiserver);
        cmd.args(["--listen", "127.0.0.1:0", "--port-file"])
            .arg(&api_port_file)
            .arg("--fault-file")
            .arg(&api_fault)
            .arg("--token-auth-file")
            .arg(&tokens)
            .args(["--controllers", "all"])
            .args(["--max-inflight", &opts.max_inflight.to_string()])
            // kube-controller-manager's 40 s / 60 s grace periods, scaled like the kubelet's Lease.
            .args(["--node-monitor-grace-period-s", &secs(40.0 * scale)])
            .args(["--node-startup-grace-period-s", &secs(60.0 * scale)])
            .args(&opts.apiserver_args);
        let pid = procs.spawn("fake-apiserver", cmd, &work.join("apiserver.log"))?;
        let api_port = wait_port_file(&api_port_file, &procs, pid, "fake-apiserver")?;

        let mut hosts = Vec::new();
        for i in 0..opts.hosts {
            let taken: Vec<u16> = hosts.iter().map(|h: &Host| h.health_port).collect();
            hosts.push(make_host(work, i, api_port, opts.scale, &bins, &taken)?);
        }
        for h in &mut hosts {
            let mut cmd = Command::new(&bins.agent);
            cmd.arg("standby").env_clear();
            for (k, v) in host_env(h, opts.scale) {
                cmd.env(k, v);
            }
            h.standby_pid = procs.spawn(
                &format!("standby {}", h.name),
                cmd,
                &h.dir.join("standby.log"),
            )?;
        }

        let agents: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({
                    "hostname": h.name,
                    "sandbox_root": h.dir.join("sandboxes"),
                    "extra_env": host_env(h, opts.scale).into_iter().filter(|(k, _)| *k != "PATH").collect::<std::collections::BTreeMap<_, _>>(),
                    "health_port": h.health_port,
                    // A Mesos agent offers the host minus what it keeps for the system.
                    "cpus": h.cpus as f64,
                    "mem": ((h.mem_gib - h.hugepages_gib) * 1024 - 512) as f64,
                })
            })
            .collect();
        let agents_file = work.join("agents.json");
        write(&agents_file, &Value::Array(agents).to_string())?;
        let events = work.join("marathon-events.jsonl");
        let mport_file = work.join("marathon.port");
        let mut cmd = Command::new(&bins.fake_marathon);
        cmd.args(["--listen", "127.0.0.1:0", "--schema"])
            .arg(repo.join("marathon/schema/AppDefinition.json"))
            .arg("--agents")
            .arg(&agents_file)
            .arg("--emulator")
            .arg(&bins.emulator)
            .args(["--time-scale", &secs(opts.scale)])
            // Mesos' 1 s allocation interval, scaled like the app's timings.
            .args(["--offer-interval", &secs((1.0 * opts.scale).max(0.05))])
            .arg("--event-log")
            .arg(&events)
            .arg("--port-file")
            .arg(&mport_file);
        let pid = procs.spawn("fake-marathon", cmd, &work.join("marathon.log"))?;
        let marathon_port = wait_port_file(&mport_file, &procs, pid, "fake-marathon")?;
        Ok(Fleet {
            work: work.to_path_buf(),
            bins,

            api_port,
            api_fault,
            marathon_port,
            events,
            hosts,
            scale: opts.scale,
            repo: repo.to_path_buf(),
        })
    }

    /// The shipped app for `instances` nodes of `cpus`/`mem`, adapted to the loopback fleet:
    /// the agent binary under test; the two per-host values (kubelet arguments file, health
    /// address) moved from the app's `env` to each host's settings file, because every emulated
    /// host shares one filesystem and one loopback. `minimumHealthCapacity` is recomputed for
    /// `instances` as `ansible/marathon-deploy.yml` does. Everything else is the file's: the
    /// fake Marathon scales the app's paces (health checks, backoff); budgets (drain timeout,
    /// kill grace) stay, because the agent's fixed reserves inside them do not scale.
    pub fn app(&self, instances: u64, cpus: f64, mem: f64) -> Result<Value, String> {
        let path = self.repo.join("marathon/kubelet-resource-wrapper.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut app: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        app["args"][0] = json!(self.bins.agent);
        app["instances"] = json!(instances);
        app["cpus"] = json!(cpus);
        app["mem"] = json!(mem);
        app["upgradeStrategy"]["minimumHealthCapacity"] = json!(one_at_a_time(instances));
        if let Some(env) = app["env"].as_object_mut() {
            env.remove("KRW_KUBELET_ARGS_FILE");
            env.remove("KRW_HEALTH_ADDR");
        }
        Ok(app)
    }

    /// Writes `app` to a file for `marathon deploy --app`.
    pub fn app_file(&self, name: &str, app: &Value) -> Result<PathBuf, String> {
        let p = self.work.join(format!("app-{name}.json"));
        write(&p, &app.to_string())?;
        Ok(p)
    }

    /// `kubelet-resource-wrapper marathon <args>` against the fake Marathon; (exit code, stderr).
    pub fn marathon(&self, args: &[&str], timeout_s: f64) -> (i32, String) {
        let out = Command::new(&self.bins.agent)
            .arg("marathon")
            .args(args)
            .args([
                "--marathon-url",
                &format!("http://127.0.0.1:{}", self.marathon_port),
                "--timeout",
                &secs(timeout_s),
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output();
        match out {
            Ok(o) => (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ),
            Err(e) => (-1, e.to_string()),
        }
    }
}

/// The environment a host gives both its `standby` (systemd `EnvironmentFile=`) and, as the Mesos
/// agent's executor environment, every task: where its settings file is, and the fake kubelet's
/// view of the host.
fn host_env(h: &Host, scale: f64) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/bin:/bin".into()),
        ("KRW_ENV_FILE", h.env_file().display().to_string()),
        ("FAKE_KUBELET_HOST_ROOT", h.root().display().to_string()),
        ("FAKE_KUBELET_SYNC_INTERVAL_MS", "200".into()),
        // kubelet's 40 s node Lease (renewed every quarter) and 5 min status report, scaled.
        (
            "FAKE_KUBELET_NODE_LEASE_DURATION_SECONDS",
            ((40.0 * scale).round() as u64).max(1).to_string(),
        ),
        (
            "FAKE_KUBELET_NODE_STATUS_REPORT_FREQUENCY",
            format!("{}ms", ((300_000.0 * scale) as u64).max(1000)),
        ),
    ]
}

fn make_host(
    work: &Path,
    i: usize,
    api_port: u16,
    scale: f64,
    bins: &Bins,
    taken: &[u16],
) -> Result<Host, String> {
    let name = format!("node-{i}");
    let dir = work.join("hosts").join(&name);
    // Three host sizes; every fourth host has 1 GiB of 2 MiB hugepages.
    let (cpus, mem_gib) = [(4, 8), (8, 16), (16, 32)][i % 3];
    let hugepages_gib = u64::from(i % 4 == 1);
    let h = Host {
        name,
        dir: dir.clone(),
        cpus,
        mem_gib,
        hugepages_gib,
        health_port: health_port(i, taken)?,
        standby_pid: 0,
    };
    for sub in ["kubelet", "sandboxes"] {
        mkdir(&dir.join(sub))?;
    }
    let pages: &[(u64, u64)] = if hugepages_gib > 0 {
        &[(2048, 512)]
    } else {
        &[]
    };
    FakeHost {
        cpus,
        nodes: 2,
        online: None,
        mem_kib: mem_gib << 20,
        hugepages: pages,
    }
    .write(&h.root())
    .map_err(|e| format!("{}: {e}", h.root().display()))?;
    let kubeconfig = dir.join("kubeconfig");
    write(
        &kubeconfig,
        &json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fleet", "cluster": {"server": format!("http://127.0.0.1:{api_port}")}}],
            "users": [{"name": "node", "user": {"token": format!("node-token-{i}")}}],
            "contexts": [{"name": "fleet", "context": {"cluster": "fleet", "user": "node"}}],
            "current-context": "fleet"
        })
        .to_string(),
    )?;
    let args_file = dir.join("kubelet-args");
    // kubelet's node status cadence (10 s), scaled like everything else.
    write(
        &args_file,
        &format!(
            "{}\n--kubeconfig={}\n--hostname-override={}\n--node-status-update-frequency={}ms\n",
            h.root_dir_arg(),
            kubeconfig.display(),
            h.name,
            ((10_000.0 * scale) as u64).max(200)
        ),
    )?;
    // The host's settings file (the Ansible role writes /etc/default/kubelet-resource-wrapper).
    // The knobs that pace the agent's own health probing and node checks are scaled like the
    // app's paces; its budgets and rules are untouched.
    let settings = [
        ("KRW_KUBELET", bins.fake_kubelet.display().to_string()),
        ("KRW_KUBELET_ARGS_FILE", args_file.display().to_string()),
        ("KRW_HOST_ROOT", h.root().display().to_string()),
        ("KRW_LOCK_FILE", dir.join("krw.lock").display().to_string()),
        ("KRW_HEALTH_ADDR", format!("127.0.0.1:{}", h.health_port)),
        ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
        (
            "KRW_LEGACY_FILE",
            dir.join("legacy-services").display().to_string(),
        ),
        ("KRW_LOG_FORMAT", "json".into()),
        ("KRW_HEALTH_PROBE_INTERVAL", secs((5.0 * scale).max(0.2))),
        ("KRW_NODE_CHECK_INTERVAL", secs((10.0 * scale).max(0.2))),
    ];
    let text: String = settings
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\"\n"))
        .collect();
    write(
        &h.env_file(),
        &format!("# emulated host {}\n{text}", h.name),
    )?;
    Ok(h)
}

/// (pid, start time) of every pod process the fake kubelets under `work` recorded.
pub fn pod_records(work: &Path) -> Vec<(i32, u64)> {
    let Ok(hosts) = std::fs::read_dir(work.join("hosts")) else {
        return Vec::new();
    };
    hosts
        .flatten()
        .flat_map(|h| host_pods(&h.path().join("kubelet")))
        .collect()
}

/// (pid, start time) of the pod processes one host's kubelets recorded.
pub fn host_pods(kubelet_dir: &Path) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir(kubelet_dir.join("fake-kubelet/pods")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .filter_map(|v| {
            Some((
                i32::try_from(v.get("pid")?.as_i64()?).ok()?,
                v.get("start_time")?.as_u64()?,
            ))
        })
        .collect()
}
