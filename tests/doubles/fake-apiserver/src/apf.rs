//! API Priority and Fairness, reduced to what a client can observe: requests are
//! classified into priority levels by the suggested FlowSchemas, each limited level has
//! `--max-inflight` seats, and a request finding no seat (after an optional queue wait)
//! is rejected with 429, a `Retry-After` from the dropped-requests tracker and the plain
//! text body of `http.Error`.
//!
//! Upstream: staging/src/k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go,
//! .../server/filters/maxinflight.go (`tooManyRequests`),
//! .../util/flowcontrol/dropped_requests_tracker.go,
//! .../apis/flowcontrol/bootstrap/default.go (mandatory and suggested FlowSchemas).

use crate::auth::User;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limited priority levels of the suggested configuration that the fake classifies
/// into (leader-election and catch-all are never reached by the fake's clients).
pub const LEVELS: &[&str] = &[
    "node-high",
    "system",
    "workload-high",
    "workload-low",
    "global-default",
];

/// What the filter needs to know about a request.
pub struct RequestInfo<'a> {
    pub resource_request: bool,
    pub group: &'a str,
    pub resource: &'a str,
    pub path: &'a str,
    pub verb: &'a str,
}

impl<'a> RequestInfo<'a> {
    /// Parse the request path the way the RequestInfoFactory does, as far as
    /// classification needs it (group and resource; subresources do not matter here).
    pub fn parse(method: &'a str, path: &'a str) -> Self {
        let segs: Vec<&'a str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest): (&str, &[&str]) = match segs.as_slice() {
            ["api", _v, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", g, _v, rest @ ..] if !rest.is_empty() => (g, rest),
            _ => {
                return RequestInfo {
                    resource_request: false,
                    group: "",
                    resource: "",
                    path,
                    verb: method,
                };
            }
        };
        let rest = match rest {
            ["watch", r @ ..] => r,
            r => r,
        };
        let resource = match rest {
            ["namespaces", _ns, r, ..] => r,
            [r, ..] => r,
            [] => "",
        };
        RequestInfo {
            resource_request: true,
            group,
            resource,
            path,
            verb: method,
        }
    }
}

/// The FlowSchema a request matches, by matching precedence, and its priority level
/// (`None` = the exempt level).
fn classify(user: &User, r: &RequestInfo) -> (&'static str, Option<usize>) {
    let in_group = |g: &str| user.groups.iter().any(|x| x == g);
    let level = |name: &str| LEVELS.iter().position(|l| *l == name);
    if in_group("system:masters") {
        return ("exempt", None);
    }
    if !r.resource_request
        && r.verb.eq_ignore_ascii_case("GET")
        && matches!(r.path, "/healthz" | "/readyz" | "/livez")
    {
        return ("probes", None);
    }
    if in_group("system:nodes") {
        let node_high = r.resource_request
            && ((r.group.is_empty() && r.resource == "nodes")
                || (r.group == "coordination.k8s.io" && r.resource == "leases"));
        if node_high {
            return ("system-node-high", level("node-high"));
        }
        return ("system-nodes", level("system"));
    }
    if matches!(
        user.name.as_str(),
        "system:kube-controller-manager" | "system:kube-scheduler"
    ) {
        return ("kube-controller-manager", level("workload-high"));
    }
    if user.name.starts_with("system:serviceaccount:kube-system:") {
        return ("kube-system-service-accounts", level("workload-high"));
    }
    if in_group("system:serviceaccounts") {
        return ("service-accounts", level("workload-low"));
    }
    ("global-default", level("global-default"))
}

/// Retry-After of one priority level (dropped_requests_tracker.go, same arithmetic).
#[derive(Debug)]
pub struct DroppedStats {
    history: Vec<(i64, i64)>,
    current_unix: i64,
    current_count: i64,
    retry_after: i64,
    retry_after_update_unix: i64,
}

const MAX_RETRY_AFTER: i64 = 32;

impl Default for DroppedStats {
    fn default() -> Self {
        DroppedStats {
            history: Vec::new(),
            current_unix: 0,
            current_count: 0,
            retry_after: 1,
            retry_after_update_unix: 0,
        }
    }
}

impl DroppedStats {
    /// Record one dropped request at `unix` seconds.
    pub fn record(&mut self, unix: i64) {
        if self.current_unix == unix {
            self.current_count += 1;
            return;
        }
        self.history.push((self.current_unix, self.current_count));
        let last = self.current_unix;
        self.history.retain(|(t, _)| last - t <= MAX_RETRY_AFTER);
        self.current_unix = unix;
        self.current_count = 1;
        self.update(unix);
    }

    fn update(&mut self, unix: i64) {
        let ra = self.retry_after;
        let dropped: i64 = self
            .history
            .iter()
            .rev()
            .take_while(|(t, _)| unix - t <= ra)
            .filter(|(t, _)| *t < unix)
            .map(|(_, n)| n)
            .sum();
        if unix - self.retry_after_update_unix >= ra && dropped >= 3 * ra {
            self.retry_after = (ra * 2).min(MAX_RETRY_AFTER);
            self.retry_after_update_unix = unix;
        } else if dropped < ra && ra > 1 {
            self.retry_after = ra - 1;
        }
    }

    /// The current Retry-After, in seconds.
    pub fn retry_after(&self) -> i64 {
        self.retry_after
    }
}

struct Level {
    seats: Arc<Semaphore>,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicU64,
    rejected: AtomicU64,
    dropped: Mutex<DroppedStats>,
}

/// The filter's configuration and live counters.
pub struct Apf {
    /// Seats per limited priority level; 0 = no limit (the filter only counts).
    limit: usize,
    queue_wait: Duration,
    exempt_masters: bool,
    levels: Vec<Level>,
    inflight: AtomicUsize,
    peak: AtomicUsize,
}

/// A request admitted by the filter; dropping it frees the seat.
pub struct Seat<'a> {
    apf: &'a Apf,
    level: Option<usize>,
    _permit: Option<OwnedSemaphorePermit>,
    /// `X-Kubernetes-PF-FlowSchema-UID` / `X-Kubernetes-PF-PriorityLevel-UID` values.
    pub headers: [(&'static str, String); 2],
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.apf.inflight.fetch_sub(1, Ordering::SeqCst);
        if let Some(i) = self.level {
            self.apf.levels[i].inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A rejected request: what the 429 carries.
pub struct Rejected {
    pub retry_after: i64,
    pub headers: [(&'static str, String); 2],
}

/// The body `http.Error` writes for a 429 from the filter.
pub const TOO_MANY: &str = "Too many requests, please try again later.\n";

fn pf_headers(fs: &str, pl: &str) -> [(&'static str, String); 2] {
    [
        ("X-Kubernetes-PF-FlowSchema-UID", format!("fake-fs-{fs}")),
        ("X-Kubernetes-PF-PriorityLevel-UID", format!("fake-pl-{pl}")),
    ]
}

fn bump_peak(peak: &AtomicUsize, now: usize) {
    peak.fetch_max(now, Ordering::SeqCst);
}

impl Apf {
    /// `limit` seats per limited level (0 = unlimited), an optional queue wait before
    /// rejecting, and whether system:masters is exempt (upstream: always).
    pub fn new(limit: usize, queue_wait: Duration, exempt_masters: bool) -> Self {
        let levels = LEVELS
            .iter()
            .map(|_| Level {
                seats: Arc::new(Semaphore::new(if limit == 0 {
                    Semaphore::MAX_PERMITS
                } else {
                    limit
                })),
                inflight: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                served: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                dropped: Mutex::new(DroppedStats::default()),
            })
            .collect();
        Apf {
            limit,
            queue_wait,
            exempt_masters,
            levels,
            inflight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Classify and admit a request, waiting up to the queue wait for a seat.
    pub async fn admit(&self, user: &User, r: &RequestInfo<'_>) -> Result<Seat<'_>, Rejected> {
        let (fs, mut level) = classify(user, r);
        if fs == "exempt" && !self.exempt_masters {
            level = LEVELS.iter().position(|l| *l == "global-default");
        }
        let pl = level.map(|i| LEVELS[i]).unwrap_or("exempt");
        let headers = pf_headers(fs, pl);
        let permit = match level {
            None => None,
            Some(i) => {
                let sem = self.levels[i].seats.clone();
                let got = match sem.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) if !self.queue_wait.is_zero() => {
                        tokio::time::timeout(self.queue_wait, sem.acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                    Err(_) => None,
                };
                match got {
                    Some(p) => Some(p),
                    None => {
                        let l = &self.levels[i];
                        l.rejected.fetch_add(1, Ordering::SeqCst);
                        let mut d = l.dropped.lock().unwrap_or_else(|e| e.into_inner());
                        d.record(crate::util::unix_now());
                        return Err(Rejected {
                            retry_after: d.retry_after(),
                            headers,
                        });
                    }
                }
            }
        };
        bump_peak(&self.peak, self.inflight.fetch_add(1, Ordering::SeqCst) + 1);
        if let Some(i) = level {
            let l = &self.levels[i];
            l.served.fetch_add(1, Ordering::SeqCst);
            bump_peak(&l.peak, l.inflight.fetch_add(1, Ordering::SeqCst) + 1);
        }
        Ok(Seat {
            apf: self,
            level,
            _permit: permit,
            headers,
        })
    }

    /// The debug document (`GET /debug/fake-apiserver/apf`); `reset` zeroes the peaks
    /// and counters after reading them.
    pub fn stats(&self, reset: bool) -> Value {
        let mut levels = serde_json::Map::new();
        let mut rejected = 0;
        for (name, l) in LEVELS.iter().zip(&self.levels) {
            let r = l.rejected.load(Ordering::SeqCst);
            rejected += r;
            let retry_after = l
                .dropped
                .lock()
                .map(|d| d.retry_after())
                .unwrap_or_else(|e| e.into_inner().retry_after());
            levels.insert(
                name.to_string(),
                json!({
                    "inflight": l.inflight.load(Ordering::SeqCst),
                    "peakInflight": l.peak.load(Ordering::SeqCst),
                    "served": l.served.load(Ordering::SeqCst),
                    "rejected": r,
                    "retryAfterSeconds": retry_after,
                }),
            );
            if reset {
                l.peak
                    .store(l.inflight.load(Ordering::SeqCst), Ordering::SeqCst);
                l.served.store(0, Ordering::SeqCst);
                l.rejected.store(0, Ordering::SeqCst);
            }
        }
        let v = json!({
            "maxInflight": self.limit,
            "queueWaitMs": self.queue_wait.as_millis() as u64,
            "exemptMasters": self.exempt_masters,
            "inflight": self.inflight.load(Ordering::SeqCst),
            "peakInflight": self.peak.load(Ordering::SeqCst),
            "rejected": rejected,
            "priorityLevels": levels,
        });
        if reset {
            self.peak
                .store(self.inflight.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn classification_follows_the_suggested_flow_schemas() {
        let node = user("system:node:n1", &["system:nodes", "system:authenticated"]);
        let c = |u: &User, m: &str, p: &str| {
            let (fs, l) = classify(u, &RequestInfo::parse(m, p));
            (fs, l.map(|i| LEVELS[i]))
        };
        assert_eq!(c(&User::admin(), "GET", "/api/v1/pods"), ("exempt", None));
        assert_eq!(c(&node, "GET", "/healthz"), ("probes", None));
        assert_eq!(
            c(
                &node,
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
            ),
            ("system-node-high", Some("node-high"))
        );
        assert_eq!(
            c(&node, "PATCH", "/api/v1/nodes/n1/status"),
            ("system-node-high", Some("node-high"))
        );
        assert_eq!(
            c(&node, "GET", "/api/v1/watch/namespaces/default/pods"),
            ("system-nodes", Some("system"))
        );
        let sa = user(
            "system:serviceaccount:krw:agent",
            &["system:serviceaccounts", "system:authenticated"],
        );
        assert_eq!(
            c(&sa, "POST", "/api/v1/namespaces/default/pods/p/eviction"),
            ("service-accounts", Some("workload-low"))
        );
        let bob = user("bob", &["system:authenticated"]);
        assert_eq!(
            c(&bob, "GET", "/api/v1/nodes"),
            ("global-default", Some("global-default"))
        );
    }

    #[test]
    fn retry_after_doubles_under_sustained_drops_and_decays() {
        let mut d = DroppedStats::default();
        assert_eq!(d.retry_after(), 1);
        // 3 drops in second 100: the bump is considered when second 101 starts.
        for _ in 0..3 {
            d.record(100);
        }
        assert_eq!(d.retry_after(), 1);
        d.record(101);
        assert_eq!(d.retry_after(), 2);
        // Not re-bumped within retryAfter seconds of the last bump.
        for _ in 0..10 {
            d.record(101);
        }
        d.record(102);
        assert_eq!(d.retry_after(), 2);
        for _ in 0..10 {
            d.record(102);
        }
        d.record(103);
        assert_eq!(d.retry_after(), 4);
        // Quiet seconds: linear decrease, one step per new second with a drop.
        d.record(200);
        assert_eq!(d.retry_after(), 3);
        d.record(300);
        assert_eq!(d.retry_after(), 2);
        d.record(400);
        d.record(500);
        assert_eq!(d.retry_after(), 1);
        // Capped at 32.
        let mut d = DroppedStats::default();
        for s in 0..200 {
            for _ in 0..200 {
                d.record(s);
            }
        }
        assert_eq!(d.retry_after(), MAX_RETRY_AFTER);
    }
}
