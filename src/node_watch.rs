//! While `run` serves: read the node from the API every few seconds to (1) feed its Ready
//! condition and heartbeat into `/healthz`, (2) undo the agent's own cordon once kubelet is
//! healthy and the node Ready (never an operator's), and (3) compare the node's reported
//! allocatable with the lease, logging and exporting any mismatch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drain::{self, Uncordon};
use crate::health::{NodeReadiness, SharedHealth};
use crate::metrics::Metrics;
use crate::reservation::Resources;
use crate::taskkill::ApiTarget;

/// A Ready heartbeat older than this makes the node count as not ready.
pub const HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(60);

/// Watches the node until the task is dropped.
pub async fn run(
    target: ApiTarget,
    interval: Duration,
    lease: Resources,
    health: Arc<SharedHealth>,
    metrics: Arc<Metrics>,
) {
    let started = k8s_openapi::jiff::Timestamp::now();
    let mut client = None;
    let mut uncordon_done = false;
    let mut last_mismatch: Option<Resources> = None;
    let mut warned_unreachable = false;
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if client.is_none() {
            match drain::connect(&target.kubeconfig).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !warned_unreachable {
                        tracing::warn!(error = %e, "cannot use the Kubernetes API; node checks paused");
                        warned_unreachable = true;
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let node = match drain::get_node(c, &target.node, Duration::from_secs(3)).await {
            Ok(node) => node,
            Err(e) => {
                // The API being away is not the node being unhealthy: forget the last reading.
                health.update(|s| s.node = None);
                if !warned_unreachable {
                    tracing::warn!(node = %target.node, error = %e, "cannot read the node");
                    warned_unreachable = true;
                }
                continue;
            }
        };
        warned_unreachable = false;
        let view = drain::node_view(
            &node,
            k8s_openapi::jiff::Timestamp::now(),
            HEARTBEAT_STALE_AFTER,
        );
        let ready = view.ready.clone();
        health.update(|s| {
            s.node = Some(NodeReadiness {
                at: Instant::now(),
                result: ready,
            })
        });
        let fresh = view.heartbeat.is_some_and(|hb| hb > started);
        if view.ready.is_err() || !fresh {
            continue;
        }
        let kubelet_healthy = health.verdict().is_ok();
        if !uncordon_done && kubelet_healthy {
            match drain::uncordon_if_ours(c, &node).await {
                Ok(Uncordon::Removed) => {
                    tracing::info!(node = %target.node, "uncordoned the node the agent had cordoned");
                    uncordon_done = true;
                }
                Ok(Uncordon::OperatorCordonKept) => {
                    tracing::info!(node = %target.node, "node is cordoned by an operator; leaving it cordoned");
                    uncordon_done = true;
                }
                Ok(Uncordon::NotCordoned) => uncordon_done = true,
                Err(e) => {
                    tracing::warn!(node = %target.node, error = %e, "cannot uncordon; will retry")
                }
            }
        }
        if let Some(reported) = view.allocatable {
            let mismatch = reported != lease;
            metrics.allocatable_mismatch.set(i64::from(mismatch));
            if mismatch && last_mismatch != Some(reported) {
                tracing::warn!(
                    node = %target.node,
                    lease_cpu_millicores = lease.cpu_millicores,
                    lease_memory_bytes = lease.memory_bytes,
                    reported_cpu_millicores = reported.cpu_millicores,
                    reported_memory_bytes = reported.memory_bytes,
                    "node allocatable differs from the lease: kubelet measures capacity differently from the agent"
                );
            }
            last_mismatch = mismatch.then_some(reported);
        }
    }
}
