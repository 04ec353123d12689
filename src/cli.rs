//! Command-line interface (DESIGN §2, §9). Every option can also come from an environment
//! variable, because Marathon configures tasks through `env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::marathon::MarathonArgs;

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "kubelet-resource-wrapper",
    version,
    about = "Runs kubelet as a Marathon task so Kubernetes gets exactly the Mesos lease of this host",
    long_about = "Runs kubelet as a Marathon task so Kubernetes gets exactly the Mesos lease of this host.\n\n\
        Exit codes: 0 ok, 64 usage, 65 bad lease data, 69 kubelet missing or not executable, \
        70 internal error, 73 host lock held, 75 kubelet failing too often, 78 configuration impossible \
        (lease exceeds host, unreadable host files)."
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for one JSON object per line.
    #[arg(long, global = true, env = "KRW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `kubelet_resource_wrapper=debug`).
    #[arg(long, global = true, env = "KRW_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A readable report.
    Text,
    /// One JSON object (DESIGN §9).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute and print the lease, host capacity, reservation, allocatable and kubelet command line; change nothing.
    Plan(PlanArgs),
    /// Run kubelet with the computed reservation and supervise it (the Marathon task's command).
    Run(RunArgs),
    /// Boot-time service: keep kubelet registered with zero allocatable while no Marathon task holds the host.
    Standby(RunArgs),
    /// Talk to the Marathon REST API: deploy the app, scale the number of Kubernetes nodes, show status.
    Marathon(MarathonArgs),
}

/// Options that decide the reservation and kubelet's command line (plan, run, standby).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Granted CPUs (cores, fractional); overrides MARATHON_APP_RESOURCE_CPUS. Needs --mem too.
    #[arg(long, env = "KRW_CPUS", value_name = "CORES")]
    pub cpus: Option<String>,
    /// Granted memory in MiB (fractional); overrides MARATHON_APP_RESOURCE_MEM. Needs --cpus too.
    #[arg(long, env = "KRW_MEM", value_name = "MIB")]
    pub mem: Option<String>,
    /// Legacy lease file written by Nokia's Marathon cmd (`cpu 2.0, memory 4196.0`), used when neither flags nor Marathon variables are set.
    #[arg(long, env = "KRW_LEGACY_FILE", value_name = "PATH", default_value = crate::lease::DEFAULT_LEGACY_FILE)]
    pub legacy_file: PathBuf,
    /// Read /proc and /sys under this directory instead of / (host capacity as kubelet measures it).
    #[arg(long, env = "KRW_HOST_ROOT", value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    /// Kubelet's --kube-reserved (cpu and memory only), e.g. cpu=100m,memory=256Mi.
    #[arg(
        long,
        env = "KRW_KUBE_RESERVED",
        value_name = "LIST",
        default_value = ""
    )]
    pub kube_reserved: String,
    /// Kubelet's --eviction-hard; the default is kubelet's own Linux default.
    #[arg(long, env = "KRW_EVICTION_HARD", value_name = "LIST", default_value = crate::reservation::DEFAULT_EVICTION_HARD)]
    pub eviction_hard: String,
    /// Shrink a lease larger than the host to the maximum grantable instead of failing with exit 78.
    #[arg(long, env = "KRW_CLAMP")]
    pub clamp: bool,
    /// The kubelet binary (executed directly, never through a shell).
    #[arg(
        long,
        env = "KRW_KUBELET",
        value_name = "PATH",
        default_value = "/usr/bin/kubelet"
    )]
    pub kubelet: PathBuf,
    /// File with kubelet's own arguments, one per line (`#` comments); placed before arguments given after `--`.
    #[arg(long, env = "KRW_KUBELET_ARGS_FILE", value_name = "PATH")]
    pub kubelet_args_file: Option<PathBuf>,
    /// Loopback port for kubelet's own healthz, moved aside from 10248; 0 picks a free port at each start.
    #[arg(
        long,
        env = "KRW_KUBELET_HEALTHZ_PORT",
        value_name = "PORT",
        default_value_t = 10247
    )]
    pub kubelet_healthz_port: u16,
    /// Kubelet's own arguments (after `--`).
    #[arg(last = true, value_name = "KUBELET_ARGS")]
    pub kubelet_args: Vec<String>,
}

/// `plan` options.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// What to compute from.
    #[command(flatten)]
    pub node: NodeArgs,
    /// `text` or `json`.
    #[arg(long, env = "KRW_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `run` and `standby` options.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// What to compute from.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Address of the health endpoint Marathon's MESOS_HTTP check calls (GET /healthz).
    #[arg(
        long,
        env = "KRW_HEALTH_ADDR",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:10248"
    )]
    pub health_addr: SocketAddr,
    /// Address for Prometheus metrics (GET /metrics); off unless given.
    #[arg(long, env = "KRW_METRICS_ADDR", value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Kubernetes API credentials for draining on task kill; default: kubelet's own --kubeconfig.
    /// The node is the one kubelet registers: its --hostname-override if given, else this host's name.
    #[arg(long, env = "KRW_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not use the Kubernetes API on task kill; only run kubelet with zero allocatable for the drain window.
    #[arg(long, env = "KRW_NO_DRAIN")]
    pub no_drain: bool,
    /// Seconds from SIGTERM until the agent has stopped kubelet and exited; keep it below Marathon's taskKillGracePeriodSeconds.
    #[arg(long, env = "KRW_DRAIN_TIMEOUT", value_name = "SECONDS", default_value = "25", value_parser = parse_seconds)]
    pub drain_timeout: Duration,
    /// How often `run` reads its Node from the API (Ready condition for /healthz, uncordon, allocatable check).
    #[arg(long, env = "KRW_NODE_CHECK_INTERVAL", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub node_check_interval: Duration,
    /// On task kill, leave pods that use emptyDir volumes (kubectl drain without --delete-emptydir-data).
    #[arg(long, env = "KRW_DRAIN_SKIP_EMPTYDIR")]
    pub drain_skip_emptydir: bool,
    /// On task kill, leave pods no controller manages (kubectl drain without --force).
    #[arg(long, env = "KRW_DRAIN_SKIP_UNMANAGED")]
    pub drain_skip_unmanaged: bool,
    /// What happens at the end of the drain budget to pods still on the node (PodDisruptionBudget-guarded ones included):
    /// `force` restarts kubelet with zero allocatable and --max-pods=0 so it kills them (1 s grace), `leave` leaves them running.
    #[arg(long, env = "KRW_DRAIN_AT_DEADLINE", value_enum, default_value_t = DrainAtDeadline::Force)]
    pub drain_at_deadline: DrainAtDeadline,
    /// Most eviction requests in flight at once during a drain (API server politeness when many nodes drain together).
    #[arg(long, env = "KRW_DRAIN_MAX_IN_FLIGHT", value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub drain_max_in_flight: u32,
    /// Host-wide lock; a second `run` on the host exits 73. `<PATH>.run` is held by `run` for its lifetime.
    #[arg(
        long,
        env = "KRW_LOCK_FILE",
        value_name = "PATH",
        default_value = "/run/kubelet-resource-wrapper.lock"
    )]
    pub lock_file: PathBuf,
    /// First restart delay after kubelet exits unexpectedly; doubles on each failure.
    #[arg(long, env = "KRW_RESTART_BACKOFF_INITIAL", value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub restart_backoff_initial: Duration,
    /// Longest restart delay.
    #[arg(long, env = "KRW_RESTART_BACKOFF_MAX", value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub restart_backoff_max: Duration,
    /// A kubelet that ran this long resets the backoff.
    #[arg(long, env = "KRW_RESTART_STABLE_AFTER", value_name = "SECONDS", default_value = "120", value_parser = parse_seconds)]
    pub restart_stable_after: Duration,
    /// Kubelet failures tolerated within --restart-window before the agent exits 75.
    #[arg(long, env = "KRW_MAX_FAILURES", value_name = "N", default_value_t = 5)]
    pub max_failures: u32,
    /// Window for counting kubelet failures.
    #[arg(long, env = "KRW_RESTART_WINDOW", value_name = "SECONDS", default_value = "600", value_parser = parse_seconds)]
    pub restart_window: Duration,
    /// How often the agent probes kubelet's own healthz in the background (well inside Marathon's check interval; each probe costs a few wakeups).
    #[arg(long, env = "KRW_HEALTH_PROBE_INTERVAL", value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub health_probe_interval: Duration,
    /// Deadline for one probe of kubelet's healthz (keep it below Marathon's timeoutSeconds).
    #[arg(long, env = "KRW_HEALTH_PROBE_TIMEOUT", value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub health_probe_timeout: Duration,
    /// How long kubelet gets to exit after SIGTERM before SIGKILL.
    #[arg(long, env = "KRW_STOP_TIMEOUT", value_name = "SECONDS", default_value = "3", value_parser = parse_seconds)]
    pub stop_timeout: Duration,
}

/// The drain policy for pods still on the node when the drain budget ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrainAtDeadline {
    /// Apply zero allocatable and zero pods: kubelet rejects and kills what is left, past its PodDisruptionBudget.
    Force,
    /// Leave what is left running (on resources Mesos re-offers) and report it.
    Leave,
}

/// Parses a non-negative, finite number of seconds (fractions allowed).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !value.is_finite() || !(0.0..=1e9).contains(&value) {
        return Err(format!(
            "{text:?} is not a non-negative number of seconds below 1e9"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}
