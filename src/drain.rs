//! Draining the node through the Kubernetes API on task kill (DESIGN §6.1), and undoing the
//! agent's own cordon when the task comes back.
//!
//! Everything runs with the kubelet's own credentials by default: the node authorizer lets a
//! kubelet patch its own Node object (not its taints, which cordoning does not touch) and
//! NodeRestriction lets it evict pods bound to itself (research/kubelet.md §7).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::quantity;
use crate::reservation::Resources;

/// Annotation the agent puts on a node it cordoned, so that only its own cordon is undone.
pub const CORDON_ANNOTATION: &str = "kubelet-resource-wrapper/cordoned-at";
/// Annotation of static (mirror) pods; `kubectl drain` skips them.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why the API cannot be used; the agent falls back to the zero-allocatable window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No connection, a timeout or a server error.
    #[error("Kubernetes API unreachable: {0}")]
    Unreachable(String),
    /// 401/403: the credentials may not do this.
    #[error("Kubernetes API refused the agent's credentials: {0}")]
    Forbidden(String),
    /// The kubeconfig cannot be loaded.
    #[error("kubeconfig {path}: {problem}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// 429 from API Priority and Fairness until the deadline.
    #[error("Kubernetes API throttled the agent (429) until the deadline: {0}")]
    Throttled(String),
    /// Anything else the API answered.
    #[error("Kubernetes API error: {0}")]
    Other(String),
}

impl ApiError {
    /// Whether the API answered (as opposed to a refused connection, a timeout or a bad
    /// kubeconfig).
    pub fn answered(&self) -> bool {
        matches!(
            self,
            ApiError::Forbidden(_) | ApiError::Throttled(_) | ApiError::Other(_)
        )
    }
}

/// Maps a kube error to why the API cannot be used.
pub fn classify(e: &kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            ApiError::Forbidden(status.message.clone())
        }
        kube::Error::Api(status) if status.code >= 500 => {
            ApiError::Other(format!("HTTP {}: {}", status.code, status.message))
        }
        kube::Error::Api(status) => {
            ApiError::Other(format!("HTTP {}: {}", status.code, status.message))
        }
        other => ApiError::Unreachable(other.to_string()),
    }
}

/// Connects with a kubeconfig (client certs, tokens, exec plugins and TLS are kube-rs' job).
pub async fn connect(kubeconfig: &Path) -> Result<Client, ApiError> {
    let bad = |problem: String| ApiError::Kubeconfig {
        path: kubeconfig.display().to_string(),
        problem,
    };
    // kube reads the file with a blocking read: a FIFO or a device planted there would hang the
    // runtime thread (and the task kill with it). Only a bounded regular file gets that far.
    crate::fsread::read_bytes(kubeconfig, crate::fsread::CONFIG_CAP)
        .map_err(|e| bad(e.to_string()))?;
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(2));
    // kube's default retry layer would absorb 429/503/504 (up to 15 retries): the agent owns
    // its retries, honours Retry-After itself and must see every PodDisruptionBudget refusal.
    config.default_retry = false;
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| bad(e.to_string()))?;
    Ok(builder
        .with_layer(&tower::util::MapResponseLayer::new(note_retry_after))
        .build())
}

/// The last `Retry-After` (seconds) the API server sent with a 429; API Priority and Fairness
/// answers `text/plain`, so the Status kube builds from it carries no `retryAfterSeconds`.
/// The agent talks to one API server, so one process-wide value is enough.
static LAST_RETRY_AFTER: AtomicU64 = AtomicU64::new(0);

fn note_retry_after<B>(response: http::Response<B>) -> http::Response<B> {
    if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
        let seconds = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        LAST_RETRY_AFTER.store(seconds, Ordering::Relaxed);
    }
    response
}

/// Runs `future` but gives up at `deadline` (an API call must never outlive the drain budget).
async fn bounded<T>(
    deadline: Instant,
    future: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, future).await {
        Ok(result) => result.map_err(|e| classify(&e)),
        Err(_) => Err(ApiError::Unreachable(
            "no answer before the drain deadline".into(),
        )),
    }
}

/// How long a 429 asks the client to wait: the Status' `retryAfterSeconds`, else the
/// `Retry-After` header just seen, else 1 s.
fn retry_after(status: &kube::core::Status) -> Duration {
    let header = LAST_RETRY_AFTER.swap(0, Ordering::Relaxed);
    match status.details.as_ref().map(|d| d.retry_after_seconds) {
        Some(s) if s > 0 => Duration::from_secs(u64::from(s)),
        _ if header > 0 => Duration::from_secs(header),
        _ => Duration::from_secs(1),
    }
}

/// Whether a 429 is a PodDisruptionBudget refusal (cause `DisruptionBudget`, as the eviction
/// REST handler sets it) rather than API Priority and Fairness throttling.
fn is_pdb_refusal(status: &kube::core::Status) -> bool {
    status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "DisruptionBudget"))
        || status.message.contains("disruption budget")
}

/// Runs an API call until `deadline`, waiting out 429s for their Retry-After (counted in
/// `throttled`). Other errors return at once.
pub async fn polite<T, Fut>(
    deadline: Instant,
    throttled: &Counter,
    mut call: impl FnMut() -> Fut,
) -> Result<T, ApiError>
where
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, call()).await {
            Err(_) => {
                return Err(ApiError::Unreachable(
                    "no answer before the deadline".into(),
                ));
            }
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 429 => {
                throttled.inc();
                let wait = retry_after(&status);
                if Instant::now() + wait >= deadline {
                    return Err(ApiError::Throttled(status.message.clone()));
                }
                tracing::debug!(
                    retry_after_seconds = wait.as_secs(),
                    "API throttled the agent; waiting"
                );
                tokio::time::sleep(wait).await;
            }
            Ok(Err(e)) => return Err(classify(&e)),
        }
    }
}

/// What cordoning found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cordon {
    /// The agent cordoned the node and marked it.
    ByAgent,
    /// The node was already cordoned by the agent (an earlier kill).
    AlreadyByAgent,
    /// An operator had cordoned it; the agent leaves the marker off.
    AlreadyByOperator,
}

/// Cordons `node` (strategic merge patch of `spec.unschedulable`, like `kubectl cordon`) and
/// marks it with [`CORDON_ANNOTATION`] unless an operator had cordoned it already.
pub async fn cordon(
    client: &Client,
    node: &str,
    deadline: Instant,
    throttled: &Counter,
) -> Result<Cordon, ApiError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = polite(deadline, throttled, || nodes.get(node)).await?;
    let unschedulable = current
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let marked = current
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CORDON_ANNOTATION));
    let outcome = match (unschedulable, marked) {
        (true, true) => return Ok(Cordon::AlreadyByAgent),
        (true, false) => return Ok(Cordon::AlreadyByOperator),
        _ => Cordon::ByAgent,
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({
        "metadata": {"annotations": {CORDON_ANNOTATION: now}},
        "spec": {"unschedulable": true}
    });
    let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
    polite(deadline, throttled, || nodes.patch(node, &params, &patch)).await?;
    Ok(outcome)
}

/// What happened when the task came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncordon {
    /// The agent's own cordon was removed.
    Removed,
    /// An operator's cordon was left in place.
    OperatorCordonKept,
    /// The node was schedulable already.
    NotCordoned,
}

/// Uncordons `node` only if the agent's annotation says the agent cordoned it.
pub async fn uncordon_if_ours(client: &Client, node: &Node) -> Result<Uncordon, ApiError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let marked = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CORDON_ANNOTATION));
    if !marked {
        return Ok(if unschedulable {
            Uncordon::OperatorCordonKept
        } else {
            Uncordon::NotCordoned
        });
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({
        "metadata": {"annotations": {CORDON_ANNOTATION: null}},
        "spec": {"unschedulable": false}
    });
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(&e))?;
    Ok(Uncordon::Removed)
}

/// Which pods a drain skips, like `kubectl drain --ignore-daemonsets` plus the agent's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOptions {
    /// Leave pods with emptyDir volumes (kubectl without `--delete-emptydir-data`).
    pub skip_emptydir: bool,
    /// Leave pods no controller manages (kubectl without `--force`).
    pub skip_unmanaged: bool,
}

/// How politely a drain talks to the API server.
#[derive(Debug, Clone)]
pub struct Politeness {
    /// Most eviction requests in flight at once.
    pub max_in_flight: usize,
    /// Counts every 429 received.
    pub throttled: Counter,
}

/// The drain's decision for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Evict it.
    Evict,
    /// Already terminating: just wait for it.
    Wait,
    /// Leave it, for this reason.
    Skip(&'static str),
}

/// Decides what to do with a pod, following `kubectl drain`'s filters (research §8).
pub fn classify_pod(pod: &Pod, opts: DrainOptions) -> PodAction {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return PodAction::Wait;
    }
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return PodAction::Skip("mirror pod (static, managed by kubelet)");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return PodAction::Evict;
    }
    let controller = meta
        .owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)));
    if controller.is_some_and(|c| c.kind == "DaemonSet") {
        return PodAction::Skip("DaemonSet pod (ignored like --ignore-daemonsets)");
    }
    let emptydir = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
    if emptydir && opts.skip_emptydir {
        return PodAction::Skip("pod with emptyDir data (--drain-skip-emptydir)");
    }
    if controller.is_none() && opts.skip_unmanaged {
        return PodAction::Skip("pod without a controller (--drain-skip-unmanaged)");
    }
    PodAction::Evict
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// The outcome of a drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Whether the agent put the cordon (and its marker) on.
    pub cordoned_by_agent: bool,
    /// Pods evicted and gone.
    pub evicted: Vec<String>,
    /// Pods a PodDisruptionBudget still protected at the end.
    pub blocked: Vec<String>,
    /// Pods still on the node at the end, with why.
    pub left: Vec<String>,
    /// Eviction requests refused with 429 along the way.
    pub pdb_refusals: u64,
}

/// Shared view of which pods (by uid) are still on the node, kept current by a watch.
#[derive(Default)]
struct Presence {
    uids: Mutex<Option<HashSet<String>>>,
    changed: Notify,
}

impl Presence {
    fn contains(&self, uid: &str) -> Option<bool> {
        let guard = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|set| set.contains(uid))
    }
    fn replace(&self, set: HashSet<String>) {
        *self.uids.lock().unwrap_or_else(|p| p.into_inner()) = Some(set);
        self.changed.notify_waiters();
    }
    fn edit(&self, f: impl FnOnce(&mut HashSet<String>)) {
        if let Some(set) = self.uids.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(set);
        }
        self.changed.notify_waiters();
    }
}

/// Keeps `presence` in step with the pods bound to `node` (a watch, re-listing as needed).
async fn watch_presence(api: Api<Pod>, node: String, presence: Arc<Presence>) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = watcher(api, config);
    tokio::pin!(stream);
    let mut fresh: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        match event {
            Ok(watcher::Event::Init) => fresh.clear(),
            Ok(watcher::Event::InitApply(p)) => {
                fresh.insert(uid(&p));
            }
            Ok(watcher::Event::InitDone) => presence.replace(std::mem::take(&mut fresh)),
            Ok(watcher::Event::Apply(p)) => presence.edit(|s| {
                s.insert(uid(&p));
            }),
            Ok(watcher::Event::Delete(p)) => presence.edit(|s| {
                s.remove(&uid(&p));
            }),
            Err(e) => {
                // Re-list politely: wait out a 429's Retry-After, else a short pause.
                let wait = match LAST_RETRY_AFTER.swap(0, Ordering::Relaxed) {
                    0 => Duration::from_millis(200),
                    secs => Duration::from_secs(secs),
                };
                tracing::debug!(error = %e, retry_in_seconds = wait.as_secs_f64(), "pod watch interrupted; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Why an eviction request did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    /// The HTTP status, if the API answered.
    code: Option<u16>,
    /// The Status (or transport) message.
    message: String,
    /// `Retry-After` (header, else the Status' `retryAfterSeconds`).
    retry_after: Option<Duration>,
    /// A 429 that names a PodDisruptionBudget.
    pdb: bool,
    /// A 404 without a pod name: the server lacks this eviction version.
    subresource_missing: bool,
}

impl Refusal {
    fn transport(e: impl std::fmt::Display) -> Refusal {
        Refusal {
            code: None,
            message: e.to_string(),
            retry_after: None,
            pdb: false,
            subresource_missing: false,
        }
    }
}

/// Posts one Eviction of `version` through kube's client without its retry layer, reading the
/// `Retry-After` header itself.
async fn post_eviction_as(
    client: &Client,
    version: &str,
    namespace: &str,
    name: &str,
    grace_seconds: i64,
    dry_run: bool,
) -> Result<(), Refusal> {
    use http_body_util::BodyExt;
    let mut body = json!({
        "apiVersion": version,
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
        "deleteOptions": {"gracePeriodSeconds": grace_seconds}
    });
    if dry_run {
        body["deleteOptions"]["dryRun"] = json!(["All"]);
    }
    let data = serde_json::to_vec(&body).map_err(Refusal::transport)?;
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/pods/{name}/eviction{}",
        if dry_run { "?dryRun=All" } else { "" }
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(kube::client::Body::from(data))
    .map_err(Refusal::transport)?;
    let response = client.send(request).await.map_err(Refusal::transport)?;
    let code = response.status().as_u16();
    if response.status().is_success() {
        return Ok(());
    }
    let header_wait = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status: Option<kube::core::Status> = serde_json::from_slice(&bytes).ok();
    let details_wait = status
        .as_ref()
        .and_then(|s| s.details.as_ref())
        .map(|d| d.retry_after_seconds)
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(u64::from(s)));
    Err(Refusal {
        code: Some(code),
        message: status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string()),
        retry_after: header_wait.or(details_wait),
        pdb: code == 429 && status.as_ref().is_some_and(is_pdb_refusal),
        // A missing *pod* is a 404 naming it; a server without this eviction version answers
        // 404 without naming the pod.
        subresource_missing: code == 404
            && status
                .as_ref()
                .and_then(|s| s.details.as_ref())
                .is_none_or(|d| d.name.is_empty()),
    })
}

/// Posts one policy/v1 Eviction (falling back to policy/v1beta1 on 404 of the subresource).
async fn post_eviction(
    client: &Client,
    namespace: &str,
    name: &str,
    grace_seconds: i64,
    dry_run: bool,
) -> Result<(), Refusal> {
    let post = |version| post_eviction_as(client, version, namespace, name, grace_seconds, dry_run);
    match post("policy/v1").await {
        Err(r) if r.subresource_missing => post("policy/v1beta1").await,
        other => other,
    }
}

enum Evicted {
    Accepted,
    Gone,
    BlockedUntilDeadline,
    Failed(String),
}

/// The grace period to ask for: the pod's own, capped to what is left before `deadline` less a
/// second, and never 0 (a grace of 0 force-deletes the object while its containers still run).
pub fn eviction_grace(pod_grace: Option<i64>, remaining: Duration) -> i64 {
    let left = i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX) - 1;
    pod_grace.unwrap_or(30).min(left).max(1)
}

/// Shared by the evictions of one drain.
struct EvictionCtx<'a> {
    client: &'a Client,
    deadline: Instant,
    presence: &'a Presence,
    refusals: &'a Mutex<u64>,
    in_flight: &'a Semaphore,
    throttled: &'a Counter,
}

/// Evicts one pod. PodDisruptionBudget refusals (429 naming the budget) are retried with a
/// short backoff cut short whenever a pod leaves the node (which is when a budget frees up);
/// API Priority and Fairness 429s wait out their Retry-After.
async fn evict_one(ctx: &EvictionCtx<'_>, pod: &Pod) -> Evicted {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0;
    loop {
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Evicted::BlockedUntilDeadline;
        }
        let grace = eviction_grace(
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds),
            remaining,
        );
        let attempt = tokio::time::timeout(remaining, async {
            let _permit = ctx.in_flight.acquire().await;
            post_eviction(ctx.client, &namespace, &name, grace, false).await
        })
        .await;
        let refusal = match attempt {
            Err(_) => return Evicted::BlockedUntilDeadline,
            Ok(Ok(())) => return Evicted::Accepted,
            Ok(Err(r)) => r,
        };
        let wait = match refusal.code {
            Some(404) => return Evicted::Gone,
            Some(429) if refusal.pdb => {
                ctx.throttled.inc();
                *ctx.refusals.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                tracing::debug!(pod = %format!("{namespace}/{name}"), "eviction refused by a PodDisruptionBudget; retrying");
                let changed = ctx.presence.changed.notified();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = changed => {}
                }
                // Capped at 800 ms: a budget freed by something other than a pod leaving (a
                // PodDisruptionBudget edited, a pod elsewhere turning Ready) is used within 1 s.
                backoff = (backoff * 2).min(Duration::from_millis(800));
                continue;
            }
            Some(429) => {
                ctx.throttled.inc();
                refusal.retry_after.unwrap_or(Duration::from_secs(1))
            }
            _ => {
                failures += 1;
                if failures >= 5 {
                    return Evicted::Failed(match refusal.code {
                        Some(code) => format!("HTTP {code}: {}", refusal.message),
                        None => refusal.message,
                    });
                }
                Duration::from_millis(200)
            }
        };
        tokio::time::sleep(wait.min(remaining)).await;
    }
}

fn node_selector(node: &str) -> ListParams {
    ListParams::default().fields(&format!("spec.nodeName={node}"))
}

/// Lists the pods bound to `node` (waiting out 429s until `deadline`).
pub async fn pods_on_node(
    client: &Client,
    node: &str,
    deadline: Instant,
    throttled: &Counter,
) -> Result<Vec<Pod>, ApiError> {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let params = node_selector(node);
    Ok(polite(deadline, throttled, || pods_api.list(&params))
        .await?
        .items)
}

/// The keys of the active pods on `node` that a PodDisruptionBudget keeps from being evicted
/// now, found by a dry-run eviction of each pod the drain would evict (`dryRun=All`: the budget
/// check runs, nothing changes; the agent may create evictions, not list budgets). `None` when
/// the API does not answer for every pod before `deadline`.
pub async fn pdb_guarded(
    client: &Client,
    node: &str,
    opts: DrainOptions,
    deadline: Instant,
    throttled: &Counter,
) -> Option<Vec<String>> {
    let pods = pods_on_node(client, node, deadline, throttled).await.ok()?;
    let targets = pods
        .iter()
        .filter(|p| is_active(p) && classify_pod(p, opts) == PodAction::Evict);
    let checks = join_all(targets.map(|pod| async move {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, post_eviction(client, namespace, name, 1, true)).await
        {
            Ok(Ok(())) => Some(None),
            Ok(Err(r)) if r.pdb => Some(Some(pod_key(pod))),
            Ok(Err(r)) if r.code.is_some_and(|c| c != 429 && c < 500) => Some(None),
            _ => None,
        }
    }))
    .await;
    checks
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().flatten().collect())
}

/// Takes the `Retry-After` the API server last sent with a 429, if any.
pub fn take_retry_after() -> Option<Duration> {
    match LAST_RETRY_AFTER.swap(0, Ordering::Relaxed) {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    }
}

/// Whether a pod still runs or may still run (its phase is not Succeeded or Failed).
pub fn is_active(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Cordons the node and evicts its pods in parallel; returns when every evictable pod is gone
/// or at `deadline`. An unreachable or forbidden API fails fast so the caller can fall back.
pub async fn drain(
    client: &Client,
    node: &str,
    opts: DrainOptions,
    politeness: &Politeness,
    deadline: Instant,
) -> Result<DrainReport, ApiError> {
    let throttled = &politeness.throttled;
    let cordoned = cordon(client, node, deadline, throttled).await?;
    tracing::info!(node, cordon = ?cordoned, "node cordoned");
    let pods_api: Api<Pod> = Api::all(client.clone());
    let list = pods_on_node(client, node, deadline, throttled).await?;
    let presence = Arc::new(Presence::default());
    presence.replace(list.iter().filter_map(|p| p.metadata.uid.clone()).collect());
    let watch = tokio::spawn(watch_presence(
        pods_api.clone(),
        node.to_string(),
        presence.clone(),
    ));

    let mut report = DrainReport {
        cordoned_by_agent: cordoned != Cordon::AlreadyByOperator,
        ..DrainReport::default()
    };
    let mut skipped: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
    let mut targets: Vec<&Pod> = Vec::new();
    for pod in &list {
        match classify_pod(pod, opts) {
            PodAction::Evict | PodAction::Wait => targets.push(pod),
            PodAction::Skip(why) => {
                skipped.insert(
                    pod_key(pod),
                    (pod.metadata.uid.clone().unwrap_or_default(), why),
                );
            }
        }
    }
    let refusals = Mutex::new(0u64);
    let in_flight = Semaphore::new(politeness.max_in_flight.max(1));
    let ctx = EvictionCtx {
        client,
        deadline,
        presence: &presence,
        refusals: &refusals,
        in_flight: &in_flight,
        throttled,
    };
    let outcomes = join_all(targets.iter().map(|pod| {
        let ctx = &ctx;
        async move {
            let result = if pod.metadata.deletion_timestamp.is_some() {
                Evicted::Accepted
            } else {
                evict_one(ctx, pod).await
            };
            // Wait until the pod object is gone (kubelet terminated it and deleted it).
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if matches!(result, Evicted::Accepted) {
                loop {
                    let changed = ctx.presence.changed.notified();
                    if ctx.presence.contains(&uid) == Some(false) || Instant::now() >= deadline {
                        break;
                    }
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                        // Backstop for a broken watch.
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
            (pod_key(pod), uid, result)
        }
    }))
    .await;
    watch.abort();
    report.pdb_refusals = *refusals.lock().unwrap_or_else(|p| p.into_inner());
    // Final truth from the API when it answers; else from the watch.
    let still: Option<HashSet<String>> =
        match pods_on_node(client, node, deadline + Duration::from_secs(1), throttled).await {
            Ok(l) => Some(
                l.iter()
                    .filter(|p| is_active(p))
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect(),
            ),
            Err(_) => None,
        };
    let present = |uid: &str| match &still {
        Some(set) => set.contains(uid),
        None => presence.contains(uid).unwrap_or(true),
    };
    for (key, uid, result) in outcomes {
        match result {
            Evicted::Gone => report.evicted.push(key),
            _ if !present(&uid) => report.evicted.push(key),
            Evicted::BlockedUntilDeadline => {
                report.blocked.push(key.clone());
                report.left.push(format!("{key} (PodDisruptionBudget)"));
            }
            Evicted::Accepted => report.left.push(format!("{key} (still terminating)")),
            Evicted::Failed(why) => report.left.push(format!("{key} (eviction failed: {why})")),
        }
    }
    for (key, (uid, why)) in skipped {
        if present(&uid) {
            report.left.push(format!("{key} ({why})"));
        }
    }
    Ok(report)
}

/// What the API says about the node, for health and the lease check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// `Ok` for Ready=True, else the status and reason. Never judged by `lastHeartbeatTime`:
    /// kubelet posts status only on change or every `nodeStatusReportFrequency` (5 min).
    pub ready: Result<(), String>,
    /// The node's reported allocatable CPU/memory, if present.
    pub allocatable: Option<Resources>,
}

/// Reads the Ready condition and allocatable from a Node object.
pub fn node_view(node: &Node) -> NodeView {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let ready = match ready {
        None => Err("no Ready condition yet".to_string()),
        Some(c) if c.status != "True" => Err(format!(
            "Ready={} ({})",
            c.status,
            c.reason.as_deref().unwrap_or("no reason")
        )),
        Some(_) => Ok(()),
    };
    let allocatable = status.and_then(|s| s.allocatable.as_ref()).and_then(|a| {
        let cpu = quantity::parse_cpu_millicores(&a.get("cpu")?.0).ok()?;
        let memory = quantity::parse_bytes(&a.get("memory")?.0).ok()?;
        Some(Resources {
            cpu_millicores: cpu,
            memory_bytes: memory,
        })
    });
    NodeView { ready, allocatable }
}

/// Reads the node (bounded by `timeout`).
pub async fn get_node(client: &Client, name: &str, timeout: Duration) -> Result<Node, ApiError> {
    let nodes: Api<Node> = Api::all(client.clone());
    bounded(Instant::now() + timeout, nodes.get(name)).await
}

/// Groups pod keys by namespace (for compact logs).
pub fn by_namespace(keys: &[String]) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for key in keys {
        let ns = key.split('/').next().unwrap_or("").to_string();
        *map.entry(ns).or_insert(0) += 1;
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod json")
    }

    #[test]
    fn pods_are_classified_like_kubectl_drain() {
        let opts = DrainOptions {
            skip_emptydir: false,
            skip_unmanaged: false,
        };
        let rs = json!([{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"r","uid":"1","controller":true}]);
        let ds = json!([{"apiVersion":"apps/v1","kind":"DaemonSet","name":"d","uid":"2","controller":true}]);
        let cases = [
            (
                json!({"metadata":{"name":"a","ownerReferences":rs}}),
                PodAction::Evict,
            ),
            (
                json!({"metadata":{"name":"b","ownerReferences":ds}}),
                PodAction::Skip("DaemonSet pod (ignored like --ignore-daemonsets)"),
            ),
            (
                json!({"metadata":{"name":"c","annotations":{MIRROR_ANNOTATION:"x"}}}),
                PodAction::Skip("mirror pod (static, managed by kubelet)"),
            ),
            (
                json!({"metadata":{"name":"d","deletionTimestamp":"2026-01-01T00:00:00Z"}}),
                PodAction::Wait,
            ),
            (
                json!({"metadata":{"name":"e"},"status":{"phase":"Succeeded"}}),
                PodAction::Evict,
            ),
            (json!({"metadata":{"name":"f"}}), PodAction::Evict),
            (
                json!({"metadata":{"name":"g","ownerReferences":rs},"spec":{"containers":[],"volumes":[{"name":"v","emptyDir":{}}]}}),
                PodAction::Evict,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(classify_pod(&pod(p.clone()), opts), want, "{p}");
        }
        let strict = DrainOptions {
            skip_emptydir: true,
            skip_unmanaged: true,
        };
        assert!(matches!(
            classify_pod(&pod(json!({"metadata":{"name":"f"}})), strict),
            PodAction::Skip(_)
        ));
        assert!(matches!(
            classify_pod(
                &pod(
                    json!({"metadata":{"name":"g","ownerReferences":rs},"spec":{"containers":[],"volumes":[{"name":"v","emptyDir":{}}]}})
                ),
                strict
            ),
            PodAction::Skip(_)
        ));
        // A finished pod goes even when strict, like kubectl.
        assert_eq!(
            classify_pod(
                &pod(json!({"metadata":{"name":"e"},"status":{"phase":"Failed"}})),
                strict
            ),
            PodAction::Evict
        );
    }

    #[test]
    fn node_view_reads_ready_and_allocatable_never_the_heartbeat() {
        // A heartbeat from hours ago: kubelet posts status only every 5 min or on change, so
        // its age says nothing about liveness.
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {
                "allocatable": {"cpu": "1500m", "memory": "4294967296"},
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2020-01-01T00:00:50Z"}]
            }
        }))
        .expect("node");
        let view = node_view(&node);
        assert_eq!(view.ready, Ok(()));
        assert_eq!(
            view.allocatable,
            Some(Resources {
                cpu_millicores: 1500,
                memory_bytes: 4 << 30
            })
        );
        let not_ready: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}
        }))
        .expect("node");
        assert_eq!(
            node_view(&not_ready).ready,
            Err("Ready=False (KubeletNotReady)".into())
        );
    }

    #[test]
    fn grace_is_capped_and_never_zero() {
        assert_eq!(eviction_grace(Some(30), Duration::from_secs(100)), 30);
        assert_eq!(eviction_grace(None, Duration::from_secs(100)), 30);
        assert_eq!(eviction_grace(Some(30), Duration::from_secs(10)), 9);
        assert_eq!(eviction_grace(Some(30), Duration::from_millis(1500)), 1);
        assert_eq!(eviction_grace(Some(30), Duration::ZERO), 1);
        assert_eq!(eviction_grace(Some(0), Duration::from_secs(100)), 1);
    }

    #[test]
    fn pdb_refusals_are_told_from_throttling_and_retry_after_is_read() {
        let pdb: kube::core::Status = serde_json::from_value(json!({
            "kind": "Status", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget db needs 1 healthy pods and has 1 currently"}]}
        }))
        .expect("status");
        assert!(is_pdb_refusal(&pdb));
        // API Priority and Fairness answers text/plain; kube builds a Status without details.
        let apf = kube::core::Status::failure("Too many requests, please try again later.", "")
            .with_code(429);
        assert!(!is_pdb_refusal(&apf));
        LAST_RETRY_AFTER.store(0, Ordering::Relaxed);
        assert_eq!(retry_after(&apf), Duration::from_secs(1));
        let _ = note_retry_after(
            http::Response::builder()
                .status(429)
                .header(http::header::RETRY_AFTER, "4")
                .body(())
                .expect("response"),
        );
        assert_eq!(retry_after(&apf), Duration::from_secs(4));
        let with_details: kube::core::Status = serde_json::from_value(json!({
            "code": 429, "message": "slow down", "details": {"retryAfterSeconds": 7}
        }))
        .expect("status");
        assert_eq!(retry_after(&with_details), Duration::from_secs(7));
    }
}
