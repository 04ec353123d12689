//! The edge between the command line and the pure core: gathers the lease inputs, reads host
//! capacity, parses the policy and kubelet's arguments, and maps every error to the one-line
//! message and exit code of DESIGN §8.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use crate::capacity::{self, Capacity};
use crate::cli::NodeArgs;
use crate::exit::{ExitStatus, Failure};
use crate::kubelet_args::{self, KubeletHealthz};
use crate::lease::{self, Lease, LeaseInputs, LeaseSource, LegacyFile};
use crate::reservation::{self, EvictionHard, Policy, Reservation};

/// The flag the agent adds in zero modes so kubelet admits no pod at all.
pub const ZERO_PODS_FLAG: &str = "--max-pods=0";

/// Everything needed to start kubelet on this host, computed before anything is started.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// The host's capacity as kubelet measures it.
    pub capacity: Capacity,
    /// The reservation that gives `allocatable == lease`.
    pub reservation: Reservation,
    /// The operator's policy.
    pub policy: Policy,
    /// The kubelet binary.
    pub kubelet: PathBuf,
    /// The operator's kubelet arguments (file first, then after `--`).
    pub user_args: Vec<String>,
    /// The configured kubelet healthz port (0 = pick one per start).
    pub kubelet_healthz_port: u16,
}

impl NodeSetup {
    /// Kubelet's argv for the lease, with its healthz on `port`.
    pub fn argv(&self, port: u16) -> Vec<String> {
        self.argv_for(&self.reservation, port)
    }

    /// Kubelet's argv with zero allocatable and zero pods (standby and the task-kill window).
    ///
    /// Zero CPU and memory alone still admit BestEffort pods: kubelet's admission
    /// (`pkg/kubelet/lifecycle/predicate.go`, the scheduler's `fitsRequest`) checks the pod
    /// count first and returns early for a pod that requests nothing. `--max-pods=0` (validation
    /// only refuses negative values) makes the count check reject every pod, static pods
    /// included. It comes last, after the operator's arguments, so it wins (pflag keeps the last
    /// value of an int flag, and flags override kubelet's config file).
    pub fn zero_argv(&self, port: u16) -> Result<Vec<String>, Failure> {
        let zero = reservation::compute(
            &self.capacity,
            Lease::zero(self.reservation.lease.source),
            &self.policy,
        )
        .map_err(|e| Failure::new(ExitStatus::Config, e.to_string()))?;
        let mut argv = self.argv_for(&zero, port);
        argv.push(ZERO_PODS_FLAG.to_string());
        Ok(argv)
    }

    /// Kubelet's `--root-dir` (default `/var/lib/kubelet`): its `pods/<uid>` directories tell
    /// which pods it has not cleaned up yet, even while no API is reachable.
    pub fn kubelet_root_dir(&self) -> PathBuf {
        kubelet_args::user_flag_value(&self.user_args, "--root-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet"))
    }

    fn argv_for(&self, reservation: &Reservation, port: u16) -> Vec<String> {
        kubelet_args::build_argv(
            &self.kubelet,
            &self.user_args,
            reservation,
            &self.policy.eviction_hard,
            KubeletHealthz {
                bind: Ipv4Addr::LOCALHOST,
                port,
            },
        )
    }

    /// The port kubelet's healthz gets for the next start: the configured one, or a free one.
    pub fn pick_healthz_port(&self) -> Result<u16, Failure> {
        if self.kubelet_healthz_port != 0 {
            return Ok(self.kubelet_healthz_port);
        }
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| {
                Failure::new(
                    ExitStatus::Software,
                    format!("cannot find a free loopback port for kubelet's healthz: {e}"),
                )
            })
    }

    /// The kubeconfig kubelet itself uses (`--kubeconfig` in its arguments), if any.
    pub fn kubelet_kubeconfig(&self) -> Option<PathBuf> {
        kubelet_args::user_flag_value(&self.user_args, "--kubeconfig").map(PathBuf::from)
    }

    /// The node name kubelet registers: its `--hostname-override`, else this host's name
    /// (lower-cased, as kubelet does).
    pub fn node_name(&self) -> Result<String, Failure> {
        if let Some(name) = kubelet_args::user_flag_value(&self.user_args, "--hostname-override") {
            return Ok(name.trim().to_lowercase());
        }
        nix::unistd::gethostname()
            .map_err(|e| Failure::new(ExitStatus::Software, format!("cannot read host name: {e}")))
            .map(|h| h.to_string_lossy().trim().to_lowercase())
    }
}

/// Which lease to use: the task's, or nothing at all (standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseMode {
    /// Resolve the lease from flags, Marathon variables or the legacy file.
    FromSources,
    /// Zero allocatable; lease inputs are ignored.
    Zero,
}

/// Builds the node setup from the command line and the process environment.
pub fn prepare(args: &NodeArgs, mode: LeaseMode) -> Result<NodeSetup, Failure> {
    prepare_with_env(args, mode, &|name| std::env::var(name).ok())
}

/// [`prepare`] with an explicit environment lookup (tests pass a map).
pub fn prepare_with_env(
    args: &NodeArgs,
    mode: LeaseMode,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NodeSetup, Failure> {
    let usage = |msg: String| Failure::new(ExitStatus::Usage, msg);
    let policy = Policy {
        kube_reserved: reservation::parse_kube_reserved(&args.kube_reserved)
            .map_err(|e| usage(e.to_string()))?,
        eviction_hard: EvictionHard::parse(&args.eviction_hard)
            .map_err(|e| usage(e.to_string()))?,
        clamp: args.clamp,
    };
    let mut user_args = Vec::new();
    if let Some(path) = &args.kubelet_args_file {
        user_args = kubelet_args::read_args_file(path).map_err(|e| usage(e.to_string()))?;
    }
    user_args.extend(args.kubelet_args.iter().cloned());
    kubelet_args::check_user_args(&user_args).map_err(|e| usage(e.to_string()))?;

    let lease = match mode {
        LeaseMode::Zero => Lease::zero(LeaseSource::Flags),
        LeaseMode::FromSources => {
            let inputs = LeaseInputs {
                flag_cpus: args.cpus.clone(),
                flag_mem: args.mem.clone(),
                env_cpus: env(lease::ENV_CPUS),
                env_mem: env(lease::ENV_MEM),
                legacy: Some(LegacyFile::read(&args.legacy_file)),
            };
            lease::resolve(&inputs).map_err(|e| Failure::new(ExitStatus::DataErr, e.to_string()))?
        }
    };
    let capacity = capacity::read(&args.host_root).map_err(|e| {
        Failure::new(
            ExitStatus::Config,
            format!(
                "cannot measure host capacity under --host-root {}: {e}",
                args.host_root.display()
            ),
        )
    })?;
    let reservation = reservation::compute(&capacity, lease, &policy)
        .map_err(|e| Failure::new(ExitStatus::Config, e.to_string()))?;
    Ok(NodeSetup {
        capacity,
        reservation,
        policy,
        kubelet: args.kubelet.clone(),
        user_args,
        kubelet_healthz_port: args.kubelet_healthz_port,
    })
}

/// Checks that the kubelet binary exists and is executable (exit 69 otherwise).
pub fn check_kubelet_binary(path: &std::path::Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let unavailable = |why: String| {
        Failure::new(
            ExitStatus::Unavailable,
            format!(
                "kubelet binary {} {why}; install kubelet or pass --kubelet PATH",
                path.display()
            ),
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| unavailable(format!("cannot be used ({e})")))?;
    if !meta.is_file() {
        return Err(unavailable("is not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(unavailable("is not executable".into()));
    }
    Ok(())
}
