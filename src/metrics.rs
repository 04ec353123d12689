//! Prometheus metrics on an opt-in address: the lease, every reservation term, kubelet up and
//! restarts, health checks and their latency, drain results, shed connections and dropped log
//! lines. Base units only (cores, bytes, seconds); every series exists from the start, at zero.
//! Served as the classic text format (0.0.4) or, when asked for, OpenMetrics 1.0.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::capacity::Capacity;
use crate::reservation::Reservation;

/// A `result` label (`ok` / `fail`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `fail`.
    pub result: &'static str,
}

/// An `outcome` label for evictions (`evicted`, `blocked`, `failed`, `left`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened to the pod.
    pub outcome: &'static str,
}

/// Labels of shed HTTP connections: which server, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabel {
    /// `healthz` or `metrics`.
    pub server: &'static str,
    /// See [`crate::http::Shed::label`].
    pub reason: &'static str,
}

/// Every `outcome` label value of [`Metrics::evictions`].
pub const OUTCOMES: [&str; 4] = ["evicted", "blocked", "failed", "left"];

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Node allocatable the agent computed (= lease), CPU cores.
    pub allocatable_cpu: Gauge<f64, AtomicU64>,
    /// Node allocatable the agent computed (= lease), memory.
    pub allocatable_memory: Gauge,
    /// 1 while a kubelet process runs.
    pub kubelet_up: Gauge,
    /// 1 while the running kubelet has zero allocatable (standby or task-kill window).
    pub kubelet_zero_allocatable: Gauge,
    /// Unexpected kubelet exits followed by a restart.
    pub kubelet_restarts: Counter,
    /// Resident memory of the running kubelet (sampled by the prober).
    pub kubelet_resident_bytes: Gauge,
    /// Results of /healthz requests served to Marathon/Mesos.
    pub health_checks: Family<ResultLabel, Counter>,
    /// Latency of /healthz requests served.
    pub health_check_seconds: Histogram,
    /// Results of the agent's probes of kubelet's own healthz.
    pub kubelet_probes: Family<ResultLabel, Counter>,
    /// Latency of those probes.
    pub kubelet_probe_seconds: Histogram,
    /// Duration of the last task-kill drain.
    pub drain_seconds: Gauge<f64, AtomicU64>,
    /// Pods handled by the last drains, by outcome.
    pub evictions: Family<OutcomeLabel, Counter>,
    /// 1 when the node's reported allocatable differs from the lease (capacity detection mismatch).
    pub allocatable_mismatch: Gauge,
    /// HTTP connections closed without an answer, by server and reason.
    pub http_connections_shed: Family<ShedLabel, Counter>,
    /// Log lines dropped because the log writer's queue was full (stderr not read).
    log_lines_dropped: Counter,
    /// Node liveness and drain outcomes (health matrix, task kill); see [`NodeMetrics`].
    pub node: NodeMetrics,
}

fn gauge_u64(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// Millicores as cores (the base unit).
fn cores(millicores: u64) -> f64 {
    millicores as f64 / 1000.0
}

fn gauge_cores(registry: &mut Registry, name: &str, help: &str, millicores: u64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(cores(millicores));
    registry.register(name, help, g);
}

impl Metrics {
    /// Builds the registry, with the constant reservation terms already set.
    pub fn new(capacity: &Capacity, reservation: &Reservation) -> Metrics {
        let mut registry = Registry::with_prefix("krw");
        let r = reservation;
        for (name, help, millicores) in [
            (
                "lease_cpu_cores",
                "CPU cores granted by Marathon",
                r.lease.cpu_millicores,
            ),
            (
                "capacity_cpu_cores",
                "Host CPU cores as kubelet measures them",
                capacity.cpu_millicores,
            ),
            (
                "system_reserved_cpu_cores",
                "--system-reserved cpu, in cores",
                r.system_reserved.cpu_millicores,
            ),
            (
                "kube_reserved_cpu_cores",
                "--kube-reserved cpu, in cores",
                r.kube_reserved.cpu_millicores,
            ),
        ] {
            gauge_cores(&mut registry, name, help, millicores);
        }
        for (name, help, value) in [
            (
                "lease_memory_bytes",
                "Memory granted by Marathon",
                r.lease.memory_bytes,
            ),
            (
                "capacity_memory_bytes",
                "Host MemTotal as kubelet measures it",
                capacity.memory_bytes,
            ),
            (
                "capacity_hugepages_bytes",
                "Pre-allocated hugepages",
                capacity.hugepages_bytes,
            ),
            (
                "system_reserved_memory_bytes",
                "--system-reserved memory",
                r.system_reserved.memory_bytes,
            ),
            (
                "kube_reserved_memory_bytes",
                "--kube-reserved memory",
                r.kube_reserved.memory_bytes,
            ),
            (
                "eviction_hard_memory_bytes",
                "Memory held back by --eviction-hard memory.available",
                r.eviction_hard_memory_bytes,
            ),
        ] {
            gauge_u64(&mut registry, name, help, value);
        }
        let m = Metrics {
            allocatable_cpu: Gauge::default(),
            allocatable_memory: Gauge::default(),
            kubelet_up: Gauge::default(),
            kubelet_zero_allocatable: Gauge::default(),
            kubelet_restarts: Counter::default(),
            kubelet_resident_bytes: Gauge::default(),
            health_checks: Family::default(),
            health_check_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
            kubelet_probes: Family::default(),
            kubelet_probe_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0]),
            drain_seconds: Gauge::default(),
            evictions: Family::default(),
            allocatable_mismatch: Gauge::default(),
            http_connections_shed: Family::default(),
            log_lines_dropped: Counter::default(),
            node: NodeMetrics::default(),
            registry,
        };
        m.allocatable_cpu.set(cores(r.allocatable.cpu_millicores));
        m.allocatable_memory
            .set(i64::try_from(r.allocatable.memory_bytes).unwrap_or(i64::MAX));
        m.zero_series();
        m.register_dynamic()
    }

    /// Creates every labelled series at zero, so that none appears only when it first counts.
    fn zero_series(&self) {
        for result in ["ok", "fail"] {
            let _ = self.health_checks.get_or_create(&ResultLabel { result });
            let _ = self.kubelet_probes.get_or_create(&ResultLabel { result });
        }
        for outcome in OUTCOMES {
            let _ = self.evictions.get_or_create(&OutcomeLabel { outcome });
        }
        for server in ["healthz", "metrics"] {
            for reason in crate::http::Shed::ALL {
                let _ = self.http_connections_shed.get_or_create(&ShedLabel {
                    server,
                    reason: reason.label(),
                });
            }
        }
    }

    fn register_dynamic(mut self) -> Metrics {
        let reg = &mut self.registry;
        reg.register(
            "allocatable_cpu_cores",
            "Node allocatable CPU cores the agent configured",
            self.allocatable_cpu.clone(),
        );
        reg.register(
            "allocatable_memory_bytes",
            "Node allocatable memory the agent configured",
            self.allocatable_memory.clone(),
        );
        reg.register(
            "kubelet_up",
            "1 while a kubelet process runs",
            self.kubelet_up.clone(),
        );
        reg.register(
            "kubelet_zero_allocatable",
            "1 while kubelet runs with zero allocatable",
            self.kubelet_zero_allocatable.clone(),
        );
        reg.register(
            "kubelet_restarts",
            "Kubelet restarts after unexpected exits",
            self.kubelet_restarts.clone(),
        );
        reg.register(
            "kubelet_resident_bytes",
            "Resident memory of the running kubelet",
            self.kubelet_resident_bytes.clone(),
        );
        reg.register(
            "health_checks",
            "GET /healthz requests served, by result",
            self.health_checks.clone(),
        );
        reg.register(
            "health_check_seconds",
            "Latency of GET /healthz as served",
            self.health_check_seconds.clone(),
        );
        reg.register(
            "kubelet_probes",
            "Probes of kubelet's own healthz, by result",
            self.kubelet_probes.clone(),
        );
        reg.register(
            "kubelet_probe_seconds",
            "Latency of probes of kubelet's own healthz",
            self.kubelet_probe_seconds.clone(),
        );
        reg.register(
            "drain_seconds",
            "Duration of the last task-kill drain",
            self.drain_seconds.clone(),
        );
        reg.register(
            "evictions",
            "Pods handled by task-kill drains, by outcome",
            self.evictions.clone(),
        );
        reg.register(
            "allocatable_mismatch",
            "1 when the node's reported allocatable differs from the lease",
            self.allocatable_mismatch.clone(),
        );
        reg.register(
            "http_connections_shed",
            "HTTP connections closed without an answer, by server and reason (capacity: oldest idle shed for a new one; head_timeout; descriptors)",
            self.http_connections_shed.clone(),
        );
        reg.register(
            "log_lines_dropped",
            "Log lines dropped because stderr was not read fast enough",
            self.log_lines_dropped.clone(),
        );
        self.node.register(reg);
        self
    }

    /// The registry in OpenMetrics 1.0 text format.
    pub fn encode_openmetrics(&self) -> String {
        // Monotonic and race-free however many scrapes run at once.
        self.log_lines_dropped
            .inner()
            .fetch_max(crate::logging::dropped_lines(), Ordering::Relaxed);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The registry in the classic Prometheus text format, version 0.0.4.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode_openmetrics())
    }
}

/// Rewrites OpenMetrics text as the classic 0.0.4 format: a counter family is named with its
/// `_total` suffix in `# HELP`/`# TYPE` (as its samples are), and there is no `# UNIT` or `# EOF`.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_with_their_suffix() {
        let om = "# HELP krw_x Things.\n# TYPE krw_x counter\nkrw_x_total 0\n# HELP krw_g A gauge.\n# TYPE krw_g gauge\n# UNIT krw_g bytes\nkrw_g 1.5\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP krw_x_total Things.\n# TYPE krw_x_total counter\nkrw_x_total 0\n# HELP krw_g A gauge.\n# TYPE krw_g gauge\nkrw_g 1.5\n"
        );
    }
}

/// Node liveness and drain outcomes. Every series exists from start at 0.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// 1 when the API answers and the kubelet's Lease `renewTime + leaseDurationSeconds` is in
    /// the past; 0 otherwise, including when unknown.
    pub lease_expired: Gauge,
    /// 1 when the node's Ready condition is True (reported only, never a 503).
    pub ready: Gauge,
    /// 1 when the last API reading got an answer.
    pub api_reachable: Gauge,
    /// Pods still on the node at the end of the last drain or exit.
    pub left_behind_pods: Gauge,
    /// Pods forced past their PodDisruptionBudget at the end of the drain budget.
    pub forced_pods: Counter,
    /// HTTP 429 answers received from the API server.
    pub api_throttled: Counter,
}

impl NodeMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "node_lease_expired",
            "1 when the API answers and the kubelet's node Lease has expired",
            self.lease_expired.clone(),
        );
        reg.register(
            "node_ready",
            "1 when the node's Ready condition is True (reported only)",
            self.ready.clone(),
        );
        reg.register(
            "api_reachable",
            "1 when the last Kubernetes API reading got an answer",
            self.api_reachable.clone(),
        );
        reg.register(
            "drain_left_behind_pods",
            "Pods still on the node at the end of the last drain or exit",
            self.left_behind_pods.clone(),
        );
        reg.register(
            "drain_forced_pods",
            "Pods forced past their PodDisruptionBudget at the end of the drain budget",
            self.forced_pods.clone(),
        );
        reg.register(
            "api_throttled",
            "HTTP 429 answers received from the Kubernetes API",
            self.api_throttled.clone(),
        );
    }
}
