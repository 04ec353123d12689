//! The task-kill path (DESIGN §6). Mesos SIGTERMs the agent and kubelet at the same instant
//! and SIGKILLs whatever is left after the grace period; kubelet's death does not stop pod
//! containers. Within `--drain-timeout` the agent keeps a kubelet with zero allocatable running
//! (so admission rejects the node's pods and evicted pods are really terminated), drains the
//! node through the API when it can, then stops kubelet and exits 0 with a summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::drain::{self, ApiError, DrainOptions, DrainReport};
use crate::health::Phase;
use crate::runner::Agent;
use crate::spawner::Child;

/// The summary of one task kill.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillReport {
    /// `api-drain`, or `zero-allocatable` when the API could not be used.
    pub mode: &'static str,
    /// Pods evicted and gone.
    pub evicted: u64,
    /// Pods a PodDisruptionBudget still protected at the end.
    pub blocked: u64,
    /// Pods still on the node at the end, with why.
    pub left: Vec<String>,
    /// Zero-allocatable kubelets started during the window.
    pub zero_kubelet_starts: u32,
    /// Seconds from SIGTERM to the end.
    pub seconds: f64,
    /// A remark for the summary line.
    pub note: String,
}

/// Where the API drain goes: credentials and node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTarget {
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
    /// The node as kubelet registers it.
    pub node: String,
}

/// The API target for this agent, or why there is none.
pub fn api_target(agent: &Agent) -> Result<ApiTarget, String> {
    if agent.args.no_drain {
        return Err("--no-drain given".into());
    }
    let kubeconfig = agent
        .args
        .kubeconfig
        .clone()
        .or_else(|| agent.setup.kubelet_kubeconfig())
        .ok_or("no --kubeconfig and kubelet has none")?;
    let node = agent.setup.node_name().map_err(|e| e.message)?;
    Ok(ApiTarget { kubeconfig, node })
}

async fn api_drain(
    target: Result<ApiTarget, String>,
    opts: DrainOptions,
    window_end: Instant,
) -> Result<DrainReport, ApiError> {
    let target = target.map_err(ApiError::Other)?;
    let client = drain::connect(&target.kubeconfig).await?;
    drain::drain(&client, &target.node, opts, window_end).await
}

/// Handles SIGTERM received at `at`, with `child` the kubelet that was running then.
pub async fn terminate(agent: &mut Agent, child: Option<Child>, at: Instant) -> KillReport {
    agent.health.update(|s| s.phase = Phase::Draining);
    let deadline = at + agent.args.drain_timeout;
    // Reserve time at the end to stop the last kubelet cleanly before Mesos' SIGKILL.
    let stop_reserve = agent.args.stop_timeout + Duration::from_millis(500);
    let window_end = deadline.checked_sub(stop_reserve).unwrap_or(at);
    let target = api_target(agent);
    let opts = DrainOptions {
        skip_emptydir: agent.args.drain_skip_emptydir,
        skip_unmanaged: agent.args.drain_skip_unmanaged,
    };
    if let Some(mut child) = child {
        // Under Mesos kubelet got the same SIGTERM and is already exiting; stop_child gives it a
        // moment, then signals it itself (the agent alone was signalled, e.g. by systemd).
        let info = agent.stop_child(&mut child).await;
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
    let drained = {
        let stop = stop.clone();
        async move {
            let result = api_drain(target, opts, window_end).await;
            if let Err(e) = &result {
                // Logged once; the zero-allocatable kubelet keeps running for the whole window.
                tracing::warn!(error = %e, "API drain not possible; falling back to zero allocatable for the drain window");
                tokio::time::sleep_until(tokio::time::Instant::from_std(window_end)).await;
            }
            stop.notify_one();
            result
        }
    };
    let (result, starts) = tokio::join!(drained, agent.keep_zero_kubelet(stop));
    report.zero_kubelet_starts = starts;
    match result {
        Ok(d) => {
            report.mode = "api-drain";
            report.evicted = d.evicted.len() as u64;
            report.blocked = d.blocked.len() as u64;
            report.left = d.left;
            report.note = format!(
                "cordoned by {}; {} PodDisruptionBudget refusals retried",
                if d.cordoned_by_agent {
                    "the agent"
                } else {
                    "an operator (kept)"
                },
                d.pdb_refusals
            );
            agent.count_outcome("evicted", report.evicted);
            agent.count_outcome("blocked", report.blocked);
            agent.count_outcome("left", report.left.len() as u64);
        }
        Err(e) => {
            report.note = format!(
                "{e}; kubelet ran with zero allocatable for the drain window so admission rejected pods that request resources (BestEffort pods are not covered; pod outcomes not observable)"
            );
        }
    }
    report.seconds = at.elapsed().as_secs_f64();
    agent.metrics.drain_seconds.set(report.seconds);
    report
}
