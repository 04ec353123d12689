//! Prometheus metrics (text exposition format) on an opt-in address: the lease, every
//! reservation term, kubelet up and restarts, health checks and their latency, drain results.

use std::sync::atomic::AtomicU64;

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

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Node allocatable the agent computed (= lease), CPU.
    pub allocatable_cpu: Gauge,
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
    /// Node liveness and drain outcomes (health matrix, task kill); see [`NodeMetrics`].
    pub node: NodeMetrics,
}

fn gauge_u64(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

impl Metrics {
    /// Builds the registry, with the constant reservation terms already set.
    pub fn new(capacity: &Capacity, reservation: &Reservation) -> Metrics {
        let mut registry = Registry::with_prefix("krw");
        let r = reservation;
        for (name, help, value) in [
            (
                "lease_cpu_millicores",
                "CPU granted by Marathon",
                r.lease.cpu_millicores,
            ),
            (
                "lease_memory_bytes",
                "Memory granted by Marathon",
                r.lease.memory_bytes,
            ),
            (
                "capacity_cpu_millicores",
                "Host CPU as kubelet measures it",
                capacity.cpu_millicores,
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
                "system_reserved_cpu_millicores",
                "--system-reserved cpu",
                r.system_reserved.cpu_millicores,
            ),
            (
                "system_reserved_memory_bytes",
                "--system-reserved memory",
                r.system_reserved.memory_bytes,
            ),
            (
                "kube_reserved_cpu_millicores",
                "--kube-reserved cpu",
                r.kube_reserved.cpu_millicores,
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
            node: NodeMetrics::default(),
            registry,
        };
        m.allocatable_cpu
            .set(i64::try_from(r.allocatable.cpu_millicores).unwrap_or(i64::MAX));
        m.allocatable_memory
            .set(i64::try_from(r.allocatable.memory_bytes).unwrap_or(i64::MAX));
        m.register_dynamic()
    }

    fn register_dynamic(mut self) -> Metrics {
        let reg = &mut self.registry;
        reg.register(
            "allocatable_cpu_millicores",
            "Node allocatable CPU the agent configured",
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
        self.node.register(reg);
        self
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
