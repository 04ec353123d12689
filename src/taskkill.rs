//! The kill phase: what happens when the agent ends (DESIGN §6). "What happens on SIGTERM" is
//! all in this file, as is every other ending: SIGHUP, SIGQUIT and the crash-loop exit 75.
//!
//! Mesos SIGTERMs the agent and kubelet at the same instant and SIGKILLs whatever is left after
//! the grace period; kubelet's death does not stop pod containers. So on SIGTERM (and SIGINT
//! and SIGHUP, which mean the same here), within `--drain-timeout`:
//! - With API access: kubelet keeps running with the lease's allocatable (restarted if it
//!   exited) while the node is cordoned and its pods evicted, PodDisruptionBudgets honoured.
//!   Only for the last [`FORCE_WINDOW`] of the budget, and only if pods are still there, is
//!   kubelet restarted with zero allocatable and `--max-pods=0`: admission rejects every pod
//!   and kubelet kills their containers with a 1 s grace (`--drain-at-deadline force`, the
//!   default; `leave` leaves them running and says so).
//!   An API that fails at the start (away, refusing, throttling) is retried with backoff, and
//!   any `Retry-After`, until the eviction deadline while kubelet keeps the lease's allocatable.
//! - Without API access (or when the retries run out): kubelet runs with zero allocatable and
//!   zero pods for the rest of the window; the PodDisruptionBudget-guarded pods it kills are
//!   counted by dry-run evictions if the API answers, else reported unknown.
//! - Then kubelet is stopped and one summary line says what was evicted, what was forced and
//!   what is still on the node (from the API when it answers, else kubelet's pod directories).
//!
//! SIGQUIT means "leave now": kubelet is stopped without draining and the summary counts what
//! is left. Exit 75 (kubelet failing too often) cannot run a kubelet to clean up, so its summary
//! counts what is left, too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::Notify;

use crate::agent::{Agent, ApiTarget, Ending, KubeletMode};
use crate::cli::{DrainAtDeadline, RunArgs};
use crate::drain::{self, ApiError, DrainOptions, DrainReport, Politeness};
use crate::exit::Failure;
use crate::health::Phase;
use crate::spawner::{Child, ExitInfo};

/// The end of the drain budget given to a kubelet with zero allocatable and zero pods, when
/// pods are still on the node: time to start, reject every pod and kill its containers with
/// kubelet's 1 s grace.
pub const FORCE_WINDOW: Duration = Duration::from_secs(3);

/// Time kept after `--stop-timeout` for the agent's own exit.
const EXIT_SLACK: Duration = Duration::from_millis(500);

/// The summary of how the agent ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillReport {
    /// What ended the agent: `SIGTERM`, `SIGINT`, `SIGHUP`, `SIGQUIT` or `kubelet-failing`.
    pub ending: &'static str,
    /// `api-drain`, `zero-allocatable` (no API), or `none` (nothing was drained).
    pub mode: &'static str,
    /// Pods evicted and gone.
    pub evicted: u64,
    /// Pods a PodDisruptionBudget still protected when the eviction phase ended.
    pub blocked: u64,
    /// PodDisruptionBudget-guarded pods that zero allocatable then forced off the node.
    pub forced: u64,
    /// Whether `forced` could not be known (the fallback ran and the API never told).
    pub forced_unknown: bool,
    /// Pods still on the node at the end, with why.
    pub left: Vec<String>,
    /// Where `left` was counted: `api`, `kubelet-pod-dirs` or `unknown`.
    pub left_counted_from: &'static str,
    /// Zero-allocatable kubelets started.
    pub zero_kubelet_starts: u32,
    /// Seconds from the signal to the end.
    pub seconds: f64,
    /// A remark for the summary line.
    pub note: String,
}

/// A warning for a `--drain-timeout` that cannot cover `--stop-timeout` and the force window,
/// logged at start.
pub fn budget_warning(args: &RunArgs) -> Option<String> {
    let needed = args.stop_timeout + EXIT_SLACK + FORCE_WINDOW;
    (args.drain_timeout < needed).then(|| {
        format!(
            "--drain-timeout {:.1}s cannot cover --stop-timeout {:.1}s + {:.1}s to force what is left + {:.1}s to exit: pods may be left on the node at task kill",
            args.drain_timeout.as_secs_f64(),
            args.stop_timeout.as_secs_f64(),
            FORCE_WINDOW.as_secs_f64(),
            EXIT_SLACK.as_secs_f64()
        )
    })
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}

/// Ends the agent after the signal received at `at`, with `child` the kubelet running then.
pub async fn terminate(
    agent: &mut Agent,
    child: Option<Child>,
    at: Instant,
    ending: Ending,
) -> KillReport {
    agent.health.update(|s| s.phase = Phase::Draining);
    let mut report = match ending {
        Ending::Quit => quit(agent, child).await,
        Ending::Drain(signal) => {
            let mut r = drain_and_stop(agent, child, at).await;
            r.ending = signal_name(signal);
            r
        }
    };
    report.seconds = at.elapsed().as_secs_f64();
    agent.metrics.drain_seconds.set(report.seconds);
    agent
        .metrics
        .node
        .left_behind_pods
        .set(i64::try_from(report.left.len()).unwrap_or(i64::MAX));
    log_report(&report, matches!(ending, Ending::Drain(_)));
    report
}

/// Exit 75: kubelet failed too often, so no kubelet can clean up. Counts what is left, logs
/// the summary and hands back the failure.
pub async fn give_up(agent: &mut Agent, failure: Failure) -> Failure {
    let started = Instant::now();
    let (left, from) = count_left(agent, None).await;
    let report = KillReport {
        ending: "kubelet-failing",
        mode: "none",
        left,
        left_counted_from: from,
        seconds: started.elapsed().as_secs_f64(),
        note: format!("{}; pods on the node were not drained", failure.message),
        ..KillReport::default()
    };
    agent
        .metrics
        .node
        .left_behind_pods
        .set(i64::try_from(report.left.len()).unwrap_or(i64::MAX));
    log_report(&report, false);
    failure
}

async fn quit(agent: &mut Agent, child: Option<Child>) -> KillReport {
    if let Some(mut child) = child {
        agent.stop_child(&mut child).await;
    }
    let (left, from) = count_left(agent, None).await;
    KillReport {
        ending: "SIGQUIT",
        mode: "none",
        left,
        left_counted_from: from,
        note: "SIGQUIT: kubelet stopped without draining".into(),
        ..KillReport::default()
    }
}

async fn drain_and_stop(agent: &mut Agent, child: Option<Child>, at: Instant) -> KillReport {
    let deadline = at + agent.args.drain_timeout;
    // Reserve time at the end to stop the last kubelet cleanly before Mesos' SIGKILL.
    let window_end = deadline
        .checked_sub(agent.args.stop_timeout + EXIT_SLACK)
        .unwrap_or(at);
    let mut report = KillReport {
        mode: "zero-allocatable",
        ..KillReport::default()
    };
    if Instant::now() >= window_end {
        if let Some(mut child) = child {
            agent.stop_child(&mut child).await;
        }
        report.mode = "none";
        report.note = format!(
            "--drain-timeout {:.1}s leaves no window after --stop-timeout; nothing was drained",
            agent.args.drain_timeout.as_secs_f64()
        );
        (report.left, report.left_counted_from) = count_left(agent, None).await;
        return report;
    }
    let target = agent.api_target();
    let client = match &target {
        Ok(t) => drain::connect(&t.kubeconfig)
            .await
            .map(|c| (c, t.clone()))
            .map_err(|e| e.to_string()),
        Err(why) => Err(why.clone()),
    };
    match client {
        Ok((client, target)) => {
            api_drain(agent, child, client, &target, window_end, &mut report).await;
        }
        Err(why) => {
            if let Some(mut child) = child {
                let info = agent.stop_child(&mut child).await;
                tracing::info!(pid = child.pid, status = %info, "kubelet stopped after the signal");
            }
            tracing::warn!(%why, "API drain not possible; kubelet runs with zero allocatable and zero pods for the drain window");
            report.zero_kubelet_starts = zero_window(agent, window_end).await;
            report.note = format!(
                "{why}; kubelet ran with zero allocatable and --max-pods=0 for the drain window, so admission rejected every pod"
            );
            (report.left, report.left_counted_from) = count_left(agent, None).await;
        }
    }
    report
}

/// The API drain: evictions while kubelet keeps the lease, then (policy `force`) zero
/// allocatable and zero pods for what is left, then the final count.
async fn api_drain(
    agent: &mut Agent,
    child: Option<Child>,
    client: Client,
    target: &ApiTarget,
    window_end: Instant,
    report: &mut KillReport,
) {
    let policy = agent.args.drain_at_deadline;
    // A short budget gives the evictions at least its first half.
    let force_window = FORCE_WINDOW.min(window_end.saturating_duration_since(Instant::now()) / 2);
    let evictions_end = match policy {
        DrainAtDeadline::Force => window_end.checked_sub(force_window).unwrap_or(window_end),
        DrainAtDeadline::Leave => window_end,
    };
    let opts = DrainOptions {
        skip_emptydir: agent.args.drain_skip_emptydir,
        skip_unmanaged: agent.args.drain_skip_unmanaged,
    };
    let politeness = Politeness {
        max_in_flight: agent.args.drain_max_in_flight as usize,
        throttled: agent.metrics.node.api_throttled.clone(),
    };
    let throttled = politeness.throttled.clone();
    let stop = Arc::new(Notify::new());
    let drained = {
        let (stop, client, node, kubeconfig) = (
            stop.clone(),
            client.clone(),
            target.node.clone(),
            target.kubeconfig.clone(),
        );
        async move {
            let result =
                drain_with_retries(client, &node, &kubeconfig, opts, &politeness, evictions_end)
                    .await;
            stop.notify_one();
            result
        }
    };
    // During the evictions (and the retries before them) kubelet keeps the lease's allocatable,
    // so PodDisruptionBudget-guarded pods keep running and evicted pods are really terminated.
    // The node is cordoned: nothing new lands.
    let (result, _) = tokio::join!(
        drained,
        keep_kubelet(agent, KubeletMode::Lease, child, stop)
    );
    let drain_report = match result {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "API drain not possible; falling back to zero allocatable and zero pods for the rest of the window");
            // Which pods a budget guards is asked while zero allocatable starts (dry runs,
            // before kubelet kills them), so the summary can say what was forced past a budget.
            let guarded = drain::pdb_guarded(
                &client,
                &target.node,
                opts,
                Instant::now() + Duration::from_secs(1),
                &throttled,
            );
            let (guarded, starts) = tokio::join!(guarded, zero_window(agent, window_end));
            report.zero_kubelet_starts = starts;
            (report.left, report.left_counted_from) = count_left(agent, Some(&client)).await;
            report.note = format!("{e}; fell back to zero allocatable and --max-pods=0");
            match guarded {
                Some(keys) => {
                    let still = |k: &String| report.left.iter().any(|l| l == k);
                    report.forced = keys.iter().filter(|k| !still(k)).count() as u64;
                    agent.metrics.node.forced_pods.inc_by(report.forced);
                    report.left = explain(
                        std::mem::take(&mut report.left),
                        &keys
                            .iter()
                            .map(|k| format!("{k} (PodDisruptionBudget)"))
                            .collect::<Vec<_>>(),
                    );
                }
                None => {
                    report.forced_unknown = true;
                    report.note.push_str(
                        "; PodDisruptionBudget-guarded pods forced: unknown (the API did not answer)",
                    );
                }
            }
            agent.count_outcome("left", report.left.len() as u64);
            return;
        }
    };
    report.mode = "api-drain";
    report.evicted = drain_report.evicted.len() as u64;
    report.blocked = drain_report.blocked.len() as u64;
    agent.count_outcome("evicted", report.evicted);
    agent.count_outcome("blocked", report.blocked);
    report.note = note_for(&drain_report, policy);
    if !drain_report.left.is_empty() && policy == DrainAtDeadline::Force {
        tracing::info!(
            left = drain_report.left.len(),
            blocked_by_pdb = report.blocked,
            "drain budget ending: kubelet restarts with zero allocatable and --max-pods=0 for what is left"
        );
        report.forced = report.blocked;
        agent.metrics.node.forced_pods.inc_by(report.forced);
        let until = window_end.min(Instant::now() + force_window.max(FORCE_WINDOW / 2));
        report.zero_kubelet_starts = zero_window(agent, until).await;
    }
    let (left, from) = count_left(agent, Some(&client)).await;
    report.left = explain(left, &drain_report.left);
    report.left_counted_from = from;
    agent.count_outcome("left", report.left.len() as u64);
}

/// Runs the API drain, retrying with backoff (and any `Retry-After`) until `until`: an API
/// that is away or refusing when the signal arrives is often back seconds later, and only the
/// API drain honours PodDisruptionBudgets. A refused credential rebuilds the client from the
/// kubeconfig (rotated certificates, a replaced token).
async fn drain_with_retries(
    mut client: Client,
    node: &str,
    kubeconfig: &std::path::Path,
    opts: DrainOptions,
    politeness: &Politeness,
    until: Instant,
) -> Result<DrainReport, ApiError> {
    let mut backoff = Duration::from_millis(250);
    let mut attempts = 0u32;
    loop {
        let e = match drain::drain(&client, node, opts, politeness, until).await {
            Ok(report) => {
                if attempts > 0 {
                    tracing::info!(attempts = attempts + 1, "API drain started after retries");
                }
                return Ok(report);
            }
            Err(e) => e,
        };
        attempts += 1;
        if matches!(e, ApiError::Kubeconfig { .. }) {
            return Err(e);
        }
        if matches!(e, ApiError::Forbidden(_)) {
            tracing::warn!(
                "API refused the agent's credentials; rebuilding the client from the kubeconfig"
            );
            match drain::connect(kubeconfig).await {
                Ok(c) => client = c,
                Err(e) => return Err(e),
            }
        }
        let wait = drain::take_retry_after().unwrap_or(backoff).max(backoff);
        if Instant::now() + wait >= until {
            return Err(e);
        }
        if attempts == 1 {
            tracing::warn!(error = %e, until_seconds = until.saturating_duration_since(Instant::now()).as_secs_f64(), "API drain failed; retrying until the eviction deadline while kubelet keeps the lease");
        } else {
            tracing::debug!(error = %e, attempts, "API drain failed again; retrying");
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn note_for(d: &DrainReport, policy: DrainAtDeadline) -> String {
    format!(
        "cordoned by {}; {} PodDisruptionBudget refusals retried; at the deadline: {}",
        if d.cordoned_by_agent {
            "the agent"
        } else {
            "an operator (kept)"
        },
        d.pdb_refusals,
        match policy {
            DrainAtDeadline::Force => "force",
            DrainAtDeadline::Leave => "leave",
        }
    )
}

/// Replaces the bare keys of pods still there with the drain's reasons where it has one.
fn explain(left: Vec<String>, reasons: &[String]) -> Vec<String> {
    left.into_iter()
        .map(|key| {
            reasons
                .iter()
                .find(|r| r.starts_with(&format!("{key} (")))
                .cloned()
                .unwrap_or(key)
        })
        .collect()
}

/// Runs a kubelet with zero allocatable and zero pods until `until`, then stops it. Returns
/// how many were started.
async fn zero_window(agent: &mut Agent, until: Instant) -> u32 {
    let stop = Arc::new(Notify::new());
    let timer = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            stop.notify_one();
        }
    };
    let ((), starts) = tokio::join!(timer, keep_kubelet(agent, KubeletMode::Zero, None, stop));
    starts
}

/// Keeps a kubelet in `mode` running until `stop` is notified, restarting it if it exits
/// (after a short pause), then stops it. `child`, if still running after a moment (the agent
/// alone was signalled), is kept instead of being replaced; under Mesos it got the same
/// SIGTERM and is exiting. Returns how many kubelets were started.
async fn keep_kubelet(
    agent: &mut Agent,
    mode: KubeletMode,
    child: Option<Child>,
    stop: Arc<Notify>,
) -> u32 {
    let mut starts = 0;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut current = match child {
        Some(mut c) => {
            match tokio::time::timeout(Duration::from_millis(200), &mut c.exited).await {
                Ok(res) => {
                    let info = res.unwrap_or(ExitInfo {
                        code: None,
                        signal: None,
                        at: Instant::now(),
                    });
                    agent.note_exit(&info);
                    tracing::info!(pid = c.pid, status = %info, "kubelet exited after the signal; restarting it for the drain");
                    None
                }
                Err(_) => Some(c),
            }
        }
        None => None,
    };
    loop {
        let mut child = match current.take() {
            Some(c) => c,
            None => match agent.start_kubelet(mode).await {
                Ok(c) => {
                    starts += 1;
                    c
                }
                Err(e) => {
                    tracing::error!(error = %e, ?mode, "cannot start kubelet for the drain window");
                    (&mut stopped).await;
                    return starts;
                }
            },
        };
        tokio::select! {
            res = &mut child.exited => {
                let info = res.unwrap_or(ExitInfo { code: None, signal: None, at: Instant::now() });
                agent.note_exit(&info);
                tracing::warn!(status = %info, ?mode, "kubelet exited during the drain window; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = &mut stopped => return starts,
                }
            }
            _ = &mut stopped => {
                agent.stop_child(&mut child).await;
                return starts;
            }
        }
    }
}

/// What is still on the node: pods bound to it that are not Succeeded or Failed, from the API
/// when it answers; else the pod directories kubelet has not cleaned up.
async fn count_left(agent: &Agent, client: Option<&Client>) -> (Vec<String>, &'static str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    if let Ok(target) = agent.api_target() {
        let client = match client {
            Some(c) => Some(c.clone()),
            None => drain::connect(&target.kubeconfig).await.ok(),
        };
        if let Some(c) = client {
            let throttled = &agent.metrics.node.api_throttled;
            if let Ok(pods) = drain::pods_on_node(&c, &target.node, deadline, throttled).await {
                let left = pods
                    .iter()
                    .filter(|p| drain::is_active(p))
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or("default"),
                            p.metadata.name.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                return (left, "api");
            }
        }
    }
    let dir = agent.setup.kubelet_root_dir().join("pods");
    match std::fs::read_dir(&dir) {
        Ok(entries) => (
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| format!("pod {} (kubelet pod dir)", e.file_name().to_string_lossy()))
                .collect(),
            "kubelet-pod-dirs",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), "kubelet-pod-dirs"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot count kubelet's pod dirs");
            (Vec::new(), "unknown")
        }
    }
}

/// The one summary line: `task kill finished` after a drain, `agent exiting` otherwise.
fn log_report(report: &KillReport, drained: bool) {
    macro_rules! summary {
        ($message:literal) => {
            tracing::info!(
        ending = report.ending,
        mode = report.mode,
        evicted = report.evicted,
        blocked_by_pdb = report.blocked,
        forced_past_pdb = report.forced,
        forced_past_pdb_known = !report.forced_unknown,
        left_behind = report.left.len(),
        left = %report.left.join(","),
        left_counted_from = report.left_counted_from,
        zero_allocatable_kubelets = report.zero_kubelet_starts,
        seconds = report.seconds,
        note = %report.note,
        $message
            )
        };
    }
    if drained {
        summary!("task kill finished");
    } else {
        summary!("agent exiting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_kept_for_pods_still_there() {
        let reasons = vec![
            "ns/a (PodDisruptionBudget)".to_string(),
            "ns/b (DaemonSet pod (ignored like --ignore-daemonsets))".to_string(),
        ];
        assert_eq!(
            explain(vec!["ns/a".into(), "ns/c".into()], &reasons),
            vec!["ns/a (PodDisruptionBudget)".to_string(), "ns/c".to_string()]
        );
    }
}
