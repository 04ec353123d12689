//! The task-kill path (DESIGN §6). Mesos SIGTERMs the agent and kubelet at the same instant
//! and SIGKILLs whatever is left after the grace period; kubelet's death does not stop pod
//! containers. Within `--drain-timeout` the agent keeps a kubelet with zero allocatable running
//! (so admission rejects the node's pods and their containers are stopped), drains the node
//! through the API when it can, then stops kubelet and exits 0 with a summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::health::Phase;
use crate::runner::Agent;
use crate::spawner::Child;

/// The summary of one task kill.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillReport {
    /// `zero-allocatable` (no API access) or `api-drain`.
    pub mode: &'static str,
    /// Pods evicted and gone.
    pub evicted: u64,
    /// Pods whose eviction a PodDisruptionBudget refused until the end.
    pub blocked: u64,
    /// Pods still on the node at the end (namespace/name).
    pub left: Vec<String>,
    /// Zero-allocatable kubelets started during the window.
    pub zero_kubelet_starts: u32,
    /// Seconds from SIGTERM to the end.
    pub seconds: f64,
    /// A remark for the summary line.
    pub note: String,
}

/// Handles SIGTERM received at `at`, with `child` the kubelet that was running then.
pub async fn terminate(agent: &mut Agent, child: Option<Child>, at: Instant) -> KillReport {
    agent.health.update(|s| s.phase = Phase::Draining);
    let deadline = at + agent.args.drain_timeout;
    // Reserve time at the end to stop the last kubelet cleanly before Mesos' SIGKILL.
    let stop_reserve = agent.args.stop_timeout + Duration::from_millis(500);
    let window_end = deadline.checked_sub(stop_reserve).unwrap_or(at);
    if let Some(mut child) = child {
        // Kubelet got the same SIGTERM from Mesos and exits 0 on its own; give it until the
        // stop timeout, then stop it ourselves (a SIGTERM sent to the agent alone).
        let info = agent
            .await_or_stop(&mut child, agent.args.stop_timeout)
            .await;
        tracing::info!(pid = child.pid, status = %info, "kubelet stopped after SIGTERM");
    }
    let mut report = KillReport {
        mode: "zero-allocatable",
        ..KillReport::default()
    };
    if Instant::now() >= window_end {
        report.note = format!(
            "--drain-timeout {:.1}s leaves no window after --stop-timeout; nothing was drained",
            agent.args.drain_timeout.as_secs_f64()
        );
        report.seconds = at.elapsed().as_secs_f64();
        return report;
    }
    let stop = Arc::new(Notify::new());
    let window = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(window_end)).await;
            stop.notify_one();
        }
    };
    let (_, starts) = tokio::join!(window, agent.keep_zero_kubelet(stop));
    report.zero_kubelet_starts = starts;
    report.note = "no API access: kubelet ran with zero allocatable for the drain window so admission rejected pods that request resources; BestEffort pods are not covered and pod outcomes are not observable".into();
    report.seconds = at.elapsed().as_secs_f64();
    agent.metrics.drain_seconds.set(report.seconds);
    report
}
