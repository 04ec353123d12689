//! While `run` serves: read the node's Lease and Node object from the API every few seconds to
//! (1) tell `/healthz` whether kubelet renews its Lease while the API answers (the only API fact
//! that can fail the check), and report Ready, API reachability and allocatable; (2) undo the
//! agent's own cordon once kubelet is healthy, the node Ready and its Lease renewed since this
//! agent started (never an operator's cordon); (3) compare the node's allocatable with the lease.
//!
//! While the node still carries the agent's own cordon, `/healthz` answers 503 ("uncordon
//! pending") and the node is read every [`UNCORDON_PENDING_INTERVAL`], and at once when kubelet's
//! health first turns good, so the uncordon follows health within a second or so.
//!
//! Liveness is the Lease `kube-node-lease/<node>` (kubelet renews it every 10 s, 0.25 × its
//! 40 s `leaseDurationSeconds`), never the Ready condition's `lastHeartbeatTime`: since
//! NodeLease, kubelet posts node status only on change or every 5 minutes. The Node authorizer
//! lets a kubelet's own identity `get` its own Lease in `kube-node-lease`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;

use crate::agent::ApiTarget;
use crate::drain::{self, ApiError, Uncordon};
use crate::health::{DEFAULT_LEASE_DURATION, LeaseReading, NodeApiView, SharedHealth};
use crate::metrics::Metrics;
use crate::reservation::Resources;

/// The namespace kubelet keeps node Leases in.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How often the node is read while an uncordon of the agent's own cordon is pending.
pub const UNCORDON_PENDING_INTERVAL: Duration = Duration::from_secs(1);

/// Whether `node` carries the agent's own cordon: its annotation and `spec.unschedulable`.
pub fn own_cordon(node: &k8s_openapi::api::core::v1::Node) -> bool {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    unschedulable
        && node
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(drain::CORDON_ANNOTATION))
}

/// Waits for the next node check: `interval`, or [`UNCORDON_PENDING_INTERVAL`] while an
/// uncordon may be pending, cut short when kubelet's health turns good.
async fn next_check(interval: Duration, pending: bool, health: &SharedHealth) {
    let wait = if pending {
        interval.min(UNCORDON_PENDING_INTERVAL)
    } else {
        interval
    };
    let until = Instant::now() + wait;
    let was_good = health.verdict_before_uncordon().is_ok();
    loop {
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
        if pending && !was_good && health.verdict_before_uncordon().is_ok() {
            return;
        }
    }
}

/// What a Lease says at `now`: current, expired (and how long ago), or unreadable.
pub fn lease_reading(lease: &Lease, now: Timestamp) -> (LeaseReading, Option<Timestamp>) {
    let spec = lease.spec.as_ref();
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LEASE_DURATION);
    let Some(renewed) = renewed else {
        return (LeaseReading::Unknown, None);
    };
    let age = Duration::try_from(now.duration_since(renewed)).unwrap_or(Duration::ZERO);
    let reading = if age > duration {
        LeaseReading::Expired {
            ago: age - duration,
            duration,
        }
    } else {
        LeaseReading::Current
    };
    (reading, Some(renewed))
}

/// Watches the node until the task is dropped.
pub async fn run(
    target: ApiTarget,
    interval: Duration,
    lease: Resources,
    health: Arc<SharedHealth>,
    metrics: Arc<Metrics>,
) {
    let started = Timestamp::now();
    let mut client: Option<Client> = None;
    let mut uncordon_done = false;
    let mut last_mismatch: Option<Resources> = None;
    let mut warned: Option<String> = None;
    let interval = interval.max(Duration::from_millis(100));
    // Until the node has been read, an own cordon may be there.
    let mut pending = true;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            next_check(interval, pending && !uncordon_done, &health).await;
        }
        if client.is_none() {
            match drain::connect(&target.kubeconfig).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn_once(
                        &mut warned,
                        &e,
                        "cannot use the Kubernetes API; node checks paused",
                    );
                    record_away(&health, &metrics);
                    continue;
                }
            }
        }
        let Some(c) = client.clone() else { continue };
        let reading = read(&c, &target.node, &metrics).await;
        if let Some(e) = &reading.error {
            warn_once(&mut warned, e, "cannot read the node or its Lease");
            if matches!(e, ApiError::Forbidden(_)) {
                // Rotated client certificates or a replaced token: build a new client from
                // the kubeconfig on the next tick.
                client = None;
            }
        } else if warned.take().is_some() {
            tracing::info!(node = %target.node, "node and Lease readable again");
        }
        let mismatch = reading
            .node
            .as_ref()
            .and_then(|v| v.allocatable)
            .and_then(|reported| {
                (reported != lease).then(|| {
                format!(
                    "node allocatable cpu={}m memory={} differs from the lease cpu={}m memory={}",
                    reported.cpu_millicores,
                    reported.memory_bytes,
                    lease.cpu_millicores,
                    lease.memory_bytes
                )
            })
            });
        let view = NodeApiView {
            at: Instant::now(),
            reachable: reading.reachable,
            lease: reading.lease.clone(),
            ready: reading.node.as_ref().map(|v| v.ready.clone()),
            allocatable_mismatch: mismatch,
            own_cordon: !uncordon_done && reading.node_object.as_ref().is_some_and(own_cordon),
        };
        if reading.node_object.is_some() {
            pending = view.own_cordon;
        }
        metrics.node.api_reachable.set(i64::from(view.reachable));
        metrics.node.lease_expired.set(i64::from(
            view.reachable
                && matches!(
                    view.lease,
                    LeaseReading::Expired { .. } | LeaseReading::Missing
                ),
        ));
        metrics
            .node
            .ready
            .set(i64::from(matches!(view.ready, Some(Ok(())))));
        health.update(|s| s.api = Some(view));
        let Some(node_view) = reading.node else {
            continue;
        };
        if let Some(reported) = node_view.allocatable {
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
        // Uncordon once: kubelet healthy, Ready=True, and the Lease renewed since this agent
        // started (so it is this kubelet's renewal, not one left from before the kill).
        // A Lease the agent may not read (403, malformed) cannot hold the uncordon back: that
        // would keep /healthz at 503 over a permissions problem a restart cannot fix.
        let renewed_since_start = reading.renewed.is_some_and(|t| t > started)
            || matches!(reading.lease, LeaseReading::Unknown);
        if uncordon_done
            || node_view.ready.is_err()
            || !renewed_since_start
            || health.verdict_before_uncordon().is_err()
        {
            continue;
        }
        let Some(node) = reading.node_object else {
            continue;
        };
        let uncordoned =
            tokio::time::timeout(Duration::from_secs(3), drain::uncordon_if_ours(&c, &node))
                .await
                .unwrap_or_else(|_| Err(ApiError::Unreachable("no answer within 3s".into())));
        match uncordoned {
            Ok(Uncordon::Removed) => {
                tracing::info!(node = %target.node, "uncordoned the node the agent had cordoned");
                uncordon_done = true;
                pending = false;
                clear_own_cordon(&health);
            }
            Ok(Uncordon::OperatorCordonKept) => {
                tracing::info!(node = %target.node, "node is cordoned by an operator; leaving it cordoned");
                uncordon_done = true;
            }
            Ok(Uncordon::NotCordoned) => uncordon_done = true,
            Err(e @ ApiError::Forbidden(_)) => {
                // A restart cannot fix refused credentials: stop holding /healthz at 503.
                tracing::error!(node = %target.node, error = %e, "the API refused the uncordon; the node stays cordoned until an operator uncordons it");
                uncordon_done = true;
                clear_own_cordon(&health);
            }
            Err(e) => {
                tracing::warn!(node = %target.node, error = %e, "cannot uncordon; will retry")
            }
        }
    }
}

/// One reading of the node and its Lease.
struct Reading {
    reachable: bool,
    lease: LeaseReading,
    renewed: Option<Timestamp>,
    node: Option<drain::NodeView>,
    node_object: Option<k8s_openapi::api::core::v1::Node>,
    error: Option<ApiError>,
}

async fn read(client: &Client, node: &str, metrics: &Metrics) -> Reading {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let timeout = Duration::from_secs(3);
    let mut reading = Reading {
        reachable: false,
        lease: LeaseReading::Unknown,
        renewed: None,
        node: None,
        node_object: None,
        error: None,
    };
    match tokio::time::timeout(timeout, leases.get_opt(node)).await {
        Ok(Ok(Some(lease))) => {
            reading.reachable = true;
            (reading.lease, reading.renewed) = lease_reading(&lease, Timestamp::now());
        }
        Ok(Ok(None)) => {
            reading.reachable = true;
            reading.lease = LeaseReading::Missing;
        }
        Ok(Err(e)) => {
            if matches!(&e, kube::Error::Api(s) if s.code == 429) {
                metrics.node.api_throttled.inc();
            }
            // An HTTP answer means the API is there, even if it refused this request.
            reading.reachable = matches!(e, kube::Error::Api(_));
            reading.error = Some(drain::classify(&e));
        }
        Err(_) => reading.error = Some(ApiError::Unreachable("no answer within 3s".into())),
    }
    if reading.error.is_some() && !reading.reachable {
        return reading;
    }
    match drain::get_node(client, node, timeout).await {
        Ok(n) => {
            reading.reachable = true;
            reading.node = Some(drain::node_view(&n));
            reading.node_object = Some(n);
        }
        Err(e) => {
            reading.reachable |= e.answered();
            if reading.error.is_none() {
                reading.error = Some(e);
            }
        }
    }
    reading
}

/// Stops holding `/healthz` at 503 for the agent's own cordon (lifted, or never liftable).
fn clear_own_cordon(health: &SharedHealth) {
    health.update(|s| {
        if let Some(api) = s.api.as_mut() {
            api.own_cordon = false;
        }
    });
}

fn record_away(health: &SharedHealth, metrics: &Metrics) {
    metrics.node.api_reachable.set(0);
    metrics.node.lease_expired.set(0);
    health.update(|s| {
        if let Some(api) = s.api.as_mut() {
            api.reachable = false;
        }
    });
}

fn warn_once(warned: &mut Option<String>, e: &ApiError, what: &str) {
    let text = e.to_string();
    if warned.as_deref() != Some(text.as_str()) {
        tracing::warn!(error = %text, "{what}");
        *warned = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(renew: &str, duration: i64) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": "n", "leaseDurationSeconds": duration, "renewTime": renew}
        }))
        .expect("lease")
    }

    #[test]
    fn lease_is_current_until_renew_time_plus_duration() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let (r, renewed) = lease_reading(&lease("2026-01-01T00:00:30.000000Z", 40), now);
        assert_eq!(r, LeaseReading::Current);
        assert!(renewed.is_some());
        let (r, _) = lease_reading(&lease("2026-01-01T00:00:10.000000Z", 40), now);
        assert_eq!(
            r,
            LeaseReading::Expired {
                ago: Duration::from_secs(10),
                duration: Duration::from_secs(40)
            }
        );
        let no_renew: Lease =
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {}})).expect("lease");
        assert_eq!(lease_reading(&no_renew, now).0, LeaseReading::Unknown);
    }
}
