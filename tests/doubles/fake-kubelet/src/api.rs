//! API mode: a minimal HTTP/1.1 client speaking the Kubernetes core/v1 REST API the way
//! kubelet does (node registration, node status heartbeat, pods bound to the node,
//! pod status, and the final DELETE of graceful deletion).

use crate::pods::{ApiSink, PodSpec, Source, pod_from_value};
use crate::quantity::format_cpu_millis;
use crate::util::{self, log};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Client {
    host: String,
    prefix: String,
    token: Option<String>,
}

fn yaml_scalar(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let t = l.trim().trim_start_matches("- ").trim();
        let rest = t.strip_prefix(key)?.trim_start().strip_prefix(':')?.trim();
        Some(rest.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

impl Client {
    /// Read a kubeconfig (JSON, or simple YAML) and pick the current context's cluster/user.
    pub fn from_kubeconfig(path: &Path) -> Result<Client, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("invalid kubeconfig: failed to read {}: {e}", path.display()))?;
        let (server, token) = match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                let ctx_name = v
                    .get("current-context")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ctx = v
                    .get("contexts")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|c| c.get("name").and_then(Value::as_str) == Some(ctx_name))
                            .or_else(|| a.first())
                    })
                    .and_then(|c| c.get("context"));
                let pick = |list: &str, want: Option<&str>| -> Option<Value> {
                    let a = v.get(list)?.as_array()?;
                    want.and_then(|w| {
                        a.iter()
                            .find(|x| x.get("name").and_then(Value::as_str) == Some(w))
                    })
                    .or_else(|| a.first())
                    .cloned()
                };
                let cluster = pick(
                    "clusters",
                    ctx.and_then(|c| c.get("cluster")).and_then(Value::as_str),
                );
                let user = pick(
                    "users",
                    ctx.and_then(|c| c.get("user")).and_then(Value::as_str),
                );
                let server = cluster
                    .as_ref()
                    .and_then(|c| c.pointer("/cluster/server"))
                    .and_then(Value::as_str)
                    .map(String::from);
                let token = user
                    .as_ref()
                    .and_then(|u| u.pointer("/user/token"))
                    .and_then(Value::as_str)
                    .map(String::from);
                (server, token)
            }
            Err(_) => (yaml_scalar(&text, "server"), yaml_scalar(&text, "token")),
        };
        let server = server.ok_or("invalid kubeconfig: no clusters[].cluster.server")?;
        let rest = server.strip_prefix("http://").ok_or_else(|| {
            format!("fake-kubelet supports only http:// API servers, got {server:?}")
        })?;
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Client {
            host,
            prefix: prefix.to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        ctype: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let addr = self
            .host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("cannot resolve API server"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kubelet/v1.31.0 (linux/amd64) fake-kubelet\r\nAccept: application/json\r\nConnection: close\r\n",
            self.prefix, self.host
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(ct) = ctype {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        let body = body.unwrap_or(&[]);
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        s.write_all(&out)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut header_end = None;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        loop {
            if let Some(he) = header_end {
                if let Some(cl) = content_length {
                    if buf.len() >= he + cl {
                        break;
                    }
                } else if chunked && buf[he..].windows(5).any(|w| w == b"0\r\n\r\n") {
                    break;
                }
            }
            let n = match s.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if header_end.is_some() && content_length.is_none() && !chunked => {
                    let _ = e;
                    0
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if header_end.is_none()
                && let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            {
                header_end = Some(i + 4);
                let head = String::from_utf8_lossy(&buf[..i]).to_string();
                for l in head.lines().skip(1) {
                    if let Some((k, v)) = l.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        if k == "content-length" {
                            content_length = v.trim().parse().ok();
                        } else if k == "transfer-encoding"
                            && v.to_ascii_lowercase().contains("chunked")
                        {
                            chunked = true;
                        }
                    }
                }
            }
        }
        let he = header_end.ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
        let status_line = String::from_utf8_lossy(&buf[..he])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("malformed HTTP status line"))?;
        let mut body = buf[he..].to_vec();
        if let Some(cl) = content_length {
            body.truncate(cl);
        } else if chunked {
            body = dechunk(&body);
        }
        Ok((code, body))
    }

    fn json_req(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        v: &Value,
    ) -> Result<(u16, Value), String> {
        let body = v.to_string();
        let (code, b) = self
            .request(method, path, Some(ctype), Some(body.as_bytes()))
            .map_err(|e| e.to_string())?;
        Ok((code, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }

    /// GET /api/v1/pods?fieldSelector=spec.nodeName=NODE
    pub fn list_pods(&self, node: &str) -> Result<Vec<PodSpec>, String> {
        let path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            urlencode(node)
        );
        let (code, b) = self
            .request("GET", &path, None, None)
            .map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!(
                "list pods: HTTP {code}: {}",
                String::from_utf8_lossy(&b)
            ));
        }
        let v: Value = serde_json::from_slice(&b).map_err(|e| format!("list pods: {e}"))?;
        let mut out = Vec::new();
        for item in v
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if item.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
                continue;
            }
            match pod_from_value(item, Source::Api, "", "") {
                Ok(p) => out.push(p),
                Err(e) => log('E', &format!("\"Invalid pod from API\" err=\"{e}\"")),
            }
        }
        Ok(out)
    }
}

impl ApiSink for Client {
    fn patch_pod_status(&mut self, ns: &str, name: &str, patch: &Value) -> bool {
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
        match self.json_req("PATCH", &path, "application/merge-patch+json", patch) {
            Ok((c, _)) if (200..300).contains(&c) => true,
            Ok((404, _)) => true,
            Ok((c, b)) => {
                log(
                    'E',
                    &format!(
                        "\"Failed to update pod status\" pod=\"{ns}/{name}\" code={c} body={b}"
                    ),
                );
                false
            }
            Err(e) => {
                log(
                    'E',
                    &format!("\"Failed to update pod status\" pod=\"{ns}/{name}\" err=\"{e}\""),
                );
                false
            }
        }
    }

    fn delete_pod(&mut self, ns: &str, name: &str, uid: &str) -> bool {
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let body = json!({
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        });
        match self.json_req("DELETE", &path, "application/json", &body) {
            Ok((c, _)) if (200..300).contains(&c) || c == 404 || c == 409 => {
                log(
                    'I',
                    &format!("\"Pod deleted from API\" pod=\"{ns}/{name}\" code={c}"),
                );
                true
            }
            Ok((c, b)) => {
                log(
                    'E',
                    &format!("\"Failed to delete pod\" pod=\"{ns}/{name}\" code={c} body={b}"),
                );
                false
            }
            Err(e) => {
                log(
                    'E',
                    &format!("\"Failed to delete pod\" pod=\"{ns}/{name}\" err=\"{e}\""),
                );
                false
            }
        }
    }
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(nl) = b[i..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let line = String::from_utf8_lossy(&b[i..i + nl]).to_string();
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        i += nl + 2;
        if size == 0 || i + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[i..i + size]);
        i += size + 2;
    }
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

pub struct NodeInfo {
    pub name: String,
    pub cpu_capacity_m: i64,
    pub mem_capacity: i64,
    pub hugepages: Vec<(i64, i64)>,
    pub cpu_alloc_m: i64,
    pub mem_alloc: i64,
    pub max_pods: i64,
}

pub fn hugepage_name(size: i64) -> String {
    if size % (1 << 30) == 0 {
        format!("hugepages-{}Gi", size >> 30)
    } else if size % (1 << 20) == 0 {
        format!("hugepages-{}Mi", size >> 20)
    } else {
        format!("hugepages-{}Ki", size >> 10)
    }
}

impl NodeInfo {
    fn resources(&self) -> (Value, Value) {
        let mut cap = json!({
            "cpu": format_cpu_millis(self.cpu_capacity_m),
            "memory": self.mem_capacity.to_string(),
            "pods": self.max_pods.to_string(),
        });
        let mut alloc = json!({
            "cpu": format_cpu_millis(self.cpu_alloc_m),
            "memory": self.mem_alloc.to_string(),
            "pods": self.max_pods.to_string(),
        });
        for (size, bytes) in &self.hugepages {
            cap[hugepage_name(*size)] = json!(bytes.to_string());
            alloc[hugepage_name(*size)] = json!(bytes.to_string());
        }
        (cap, alloc)
    }

    fn conditions(&self, since: &str, ready_since: Option<&str>) -> Value {
        let now = util::now_rfc3339();
        let c = |t: &str, s: &str, reason: &str, msg: &str| json!({"type": t, "status": s, "lastHeartbeatTime": now, "lastTransitionTime": since, "reason": reason, "message": msg});
        json!([
            c(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available"
            ),
            c(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure"
            ),
            c(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available"
            ),
            match ready_since {
                Some(t) => json!({"type": "Ready", "status": "True", "lastHeartbeatTime": now,
                    "lastTransitionTime": t, "reason": "KubeletReady",
                    "message": "kubelet is posting ready status"}),
                None => c(
                    "Ready",
                    "False",
                    "KubeletNotReady",
                    "container runtime status check may not have completed yet"
                ),
            },
        ])
    }

    fn status(&self, since: &str, ready_since: Option<&str>) -> Value {
        let (cap, alloc) = self.resources();
        json!({
            "capacity": cap,
            "allocatable": alloc,
            "conditions": self.conditions(since, ready_since),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": "fake-kubelet",
                "containerRuntimeVersion": "fake://0.1.0",
                "kubeletVersion": "v1.31.0", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            },
        })
    }

    pub fn node_object(&self, since: &str, ready_since: Option<&str>) -> Value {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch,
                },
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {},
            "status": self.status(since, ready_since),
        })
    }
}

/// How often the node's status is computed and posted (kubelet config v1beta1 defaults:
/// `nodeStatusUpdateFrequency` 10s, `nodeStatusReportFrequency` 5m unless the update frequency
/// was set explicitly, then equal to it).
#[derive(Debug, Clone, Copy)]
pub struct StatusCadence {
    pub update_every: Duration,
    pub report_every: Duration,
}

/// How long after start the double reports Ready=True (kubelet reports Ready=False until its
/// container runtime and network checks first pass: `nodestatus/setters.go` `ReadyCondition`).
const RUNTIME_READY_AFTER: Duration = Duration::from_secs(1);

/// The status without its heartbeat times: what `nodeStatusHasChanged` compares.
fn without_heartbeats(status: &Value) -> Value {
    let mut v = status.clone();
    if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    v
}

/// Register the node (retrying), then post its status as kubelet does since NodeLease: every
/// `update_every` the status is computed, and it is posted only if it changed or
/// `report_every` has passed since the last post (`kubelet_node_status.go`
/// `tryUpdateNodeStatus`). Liveness is the Lease (`lease_loop`). Runs in its own thread.
pub fn node_loop(client: Client, info: NodeInfo, cadence: StatusCadence) {
    let since = util::now_rfc3339();
    loop {
        match client.json_req(
            "POST",
            "/api/v1/nodes",
            "application/json",
            &info.node_object(&since, None),
        ) {
            Ok((200..=202, _)) => {
                log(
                    'I',
                    &format!("\"Successfully registered node\" node=\"{}\"", info.name),
                );
                break;
            }
            Ok((409, _)) => {
                log(
                    'I',
                    &format!("\"Node was previously registered\" node=\"{}\"", info.name),
                );
                break;
            }
            Ok((c, b)) => log(
                'E',
                &format!("\"Unable to register node with API server\" code={c} body={b}"),
            ),
            Err(e) => log(
                'E',
                &format!("\"Unable to register node with API server\" err=\"{e}\""),
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let path = format!("/api/v1/nodes/{}/status", info.name);
    let mut last_posted: Option<(std::time::Instant, Value)> = None;
    // Ready=False (KubeletNotReady) until the first runtime check passes, about a second in;
    // the flip is a change, so it is posted at once.
    let runtime_ready_at = std::time::Instant::now() + RUNTIME_READY_AFTER;
    let mut ready_since: Option<String> = None;
    loop {
        if ready_since.is_none() && std::time::Instant::now() >= runtime_ready_at {
            ready_since = Some(util::now_rfc3339());
        }
        let status = info.status(&since, ready_since.as_deref());
        let stripped = without_heartbeats(&status);
        let due = match &last_posted {
            None => true,
            Some((at, prev)) => *prev != stripped || at.elapsed() >= cadence.report_every,
        };
        if due {
            let patch = json!({"status": status});
            match client.json_req("PATCH", &path, "application/merge-patch+json", &patch) {
                Ok((200..=299, _)) => last_posted = Some((std::time::Instant::now(), stripped)),
                Ok((c, b)) => log(
                    'E',
                    &format!("\"Error updating node status, will retry\" code={c} body={b}"),
                ),
                Err(e) => log(
                    'E',
                    &format!("\"Error updating node status, will retry\" err=\"{e}\""),
                ),
            }
        }
        // Until Ready=True is posted, kubelet checks every 100 ms (`fastStatusUpdateOnce`).
        let ready_posted =
            ready_since.is_some() && last_posted.is_some() && !due_again(&last_posted, &status);
        std::thread::sleep(if ready_posted {
            cadence.update_every
        } else {
            cadence.update_every.min(Duration::from_millis(100))
        });
    }
}

/// Whether the last post differs from `status` (heartbeat times aside).
fn due_again(last: &Option<(std::time::Instant, Value)>, status: &Value) -> bool {
    last.as_ref()
        .is_none_or(|(_, prev)| *prev != without_heartbeats(status))
}

/// The node Lease, as `staging/src/k8s.io/component-helpers/apimachinery/lease/controller.go`
/// keeps it: ensure it exists (GET, then POST on 404, backing off from 200 ms to 7 s), then
/// every `renew_every` (0.25 × the duration, `nodeLeaseRenewIntervalFraction`) PUT it with a
/// new `renewTime`; on 409 re-GET and retry. Runs in its own thread.
pub fn lease_loop(
    client: Client,
    node: String,
    duration_secs: i64,
    faults: std::sync::Arc<crate::faults::Faults>,
) {
    let renew_every = Duration::from_millis((duration_secs.max(1) as u64) * 250);
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}");
    let mut latest: Option<Value> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        if faults.no_lease_while.as_ref().is_some_and(|p| p.exists()) {
            std::thread::sleep(renew_every);
            continue;
        }
        let base = match latest.take() {
            Some(l) => Some(l),
            None => match client.request("GET", &path, None, None) {
                Ok((200, b)) => serde_json::from_slice::<Value>(&b).ok(),
                Ok((404, _)) => None,
                Ok((c, b)) => {
                    log(
                        'E',
                        &format!(
                            "\"Failed to ensure lease exists, will retry\" code={c} body={}",
                            String::from_utf8_lossy(&b)
                        ),
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(7));
                    continue;
                }
                Err(e) => {
                    log(
                        'E',
                        &format!("\"Failed to ensure lease exists, will retry\" err=\"{e}\""),
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(7));
                    continue;
                }
            },
        };
        let renew = util::now_rfc3339_micro();
        let result = match base {
            None => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": node, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": duration_secs, "renewTime": renew},
                });
                client.json_req(
                    "POST",
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    "application/json",
                    &lease,
                )
            }
            Some(mut lease) => {
                lease["spec"]["leaseDurationSeconds"] = json!(duration_secs);
                lease["spec"]["renewTime"] = json!(renew);
                client.json_req("PUT", &path, "application/json", &lease)
            }
        };
        match result {
            Ok((200..=201, v)) => {
                latest = Some(v);
                backoff = Duration::from_millis(200);
                std::thread::sleep(renew_every);
            }
            Ok((409, _)) => {}
            Ok((c, b)) => {
                log(
                    'E',
                    &format!("\"Failed to update lease, will retry\" code={c} body={b}"),
                );
                std::thread::sleep(backoff.min(renew_every));
                backoff = (backoff * 2).min(Duration::from_secs(7));
            }
            Err(e) => {
                log(
                    'E',
                    &format!("\"Failed to update lease, will retry\" err=\"{e}\""),
                );
                std::thread::sleep(backoff.min(renew_every));
                backoff = (backoff * 2).min(Duration::from_secs(7));
            }
        }
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_lowercase()
}
