//! HTTP routing and the REST verbs.

use crate::apf::{self, Apf, RequestInfo};
use crate::auth::{self, Attrs, User};
use crate::controllers::{Controllers, Settings as ControllerSettings};
use crate::patch;
use crate::resources::{self, LEASES, NAMESPACES, NODES, PDBS, PODS, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType, State, is_terminating, pod_is_ready};
use crate::table;
use crate::util::{
    ApiError, details, meta_str, metadata_mut, now_rfc3339, parse_query, random_suffix, rfc3339,
    unix_now,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Server settings from the command line.
pub struct Config {
    pub tokens: Option<HashMap<String, User>>,
    pub latency: Duration,
    /// API Priority and Fairness: seats per limited priority level (0 = unlimited), the
    /// queue wait before a 429, and whether system:masters is exempt.
    pub max_inflight: usize,
    pub apf_queue_wait: Duration,
    pub apf_exempt_masters: bool,
    pub controllers: ControllerSettings,
    pub fault_file: Option<PathBuf>,
    pub fail_mode: Option<String>,
    pub server_version: String,
    pub log_requests: bool,
}

/// The server: state, settings, API Priority and Fairness and the controllers.
pub struct App {
    pub state: Mutex<State>,
    pub cfg: Config,
    pub addr: Mutex<String>,
    pub apf: Apf,
    /// The in-process controllers (`--controllers`); their loop runs in `main`.
    pub controllers: Mutex<Controllers>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Down,
    Forbidden,
    Unavailable,
}

impl App {
    pub fn new(cfg: Config) -> Self {
        let mut st = State::new();
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            create(
                &mut st,
                resources::storage_def(NAMESPACES),
                "",
                &User::admin(),
                obj,
                false,
            )
            .expect("default namespace");
        }
        let apf = Apf::new(cfg.max_inflight, cfg.apf_queue_wait, cfg.apf_exempt_masters);
        let controllers = Mutex::new(Controllers::new(cfg.controllers.clone()));
        App {
            state: Mutex::new(st),
            cfg,
            addr: Mutex::new(String::new()),
            apf,
            controllers,
        }
    }

    pub fn fault(&self) -> Option<Fault> {
        let mode = match &self.cfg.fault_file {
            Some(p) => std::fs::read_to_string(p).ok(),
            None => None,
        }
        .or_else(|| self.cfg.fail_mode.clone())?;
        match mode.trim().to_ascii_lowercase().as_str() {
            "down" => Some(Fault::Down),
            "forbidden" => Some(Fault::Forbidden),
            "unavailable" | "503" => Some(Fault::Unavailable),
            _ => None,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One pass of the enabled controllers (controllers first, then state: the lock order).
    pub fn run_controllers(&self) {
        let mut c = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.lock();
        c.tick(&mut st, crate::util::unix_now_ms());
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(full(body))
        .expect("response")
}

fn err_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// Body streaming watch lines from a channel; an `Err` item aborts the connection.
struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

enum Reply {
    Json(u16, Value),
    Text(&'static str),
    Watch(Box<WatchSetup>),
}

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let (parts, body) = req.into_parts();
    if let Some(r) = debug_endpoint(&app, &parts) {
        return Ok(r);
    }
    match app.fault() {
        Some(Fault::Down) => return Err("fault injected: down".into()),
        Some(Fault::Forbidden) => {
            return Ok(err_response(&ApiError::new(
                403,
                "Forbidden",
                "forbidden: fault injected by fake-apiserver",
            )));
        }
        Some(Fault::Unavailable) => {
            return Ok(err_response(&ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            )));
        }
        None => {}
    }
    let body = body.collect().await?.to_bytes();
    let started = Instant::now();
    // Filter order of DefaultBuildHandlerChain: authentication, then priority and
    // fairness, then authorization and the handler.
    let user = match authenticate(&app, &parts.headers) {
        Ok(u) => u,
        Err(e) => {
            let resp = err_response(&e);
            log_request(&app, &parts, None, &resp, started);
            return Ok(resp);
        }
    };
    let info = RequestInfo::parse(parts.method.as_str(), parts.uri.path());
    let seat = match app.apf.admit(&user, &info).await {
        Ok(seat) => seat,
        Err(rejected) => {
            let resp = too_many_requests(&rejected);
            log_request(&app, &parts, Some(&user.name), &resp, started);
            return Ok(resp);
        }
    };
    // The slow mode holds the seat, as a loaded server's slow requests do.
    if !app.cfg.latency.is_zero() {
        tokio::time::sleep(app.cfg.latency).await;
    }
    let result = route(&app, &user, &parts, &body);
    let mut resp = match result {
        Ok(Reply::Json(code, v)) => json_response(code, &v),
        Ok(Reply::Text(t)) => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full(t))
            .expect("response"),
        Ok(Reply::Watch(w)) => start_watch(app.clone(), *w),
        Err(e) => err_response(&e),
    };
    for (k, v) in &seat.headers {
        if let Ok(v) = header::HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
    // A watch holds its seat only until it is set up (APF's watch initialization).
    drop(seat);
    log_request(&app, &parts, Some(&user.name), &resp, started);
    Ok(resp)
}

fn log_request(
    app: &App,
    parts: &hyper::http::request::Parts,
    user: Option<&str>,
    resp: &Response<Body>,
    started: Instant,
) {
    if app.cfg.log_requests {
        eprintln!(
            "{} {} user={} -> {} ({:?})",
            parts.method,
            parts.uri,
            user.unwrap_or("-"),
            resp.status().as_u16(),
            started.elapsed()
        );
    }
}

/// The filter's 429: `Retry-After` and `http.Error`'s plain-text body (not a Status).
fn too_many_requests(r: &apf::Rejected) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .header(header::RETRY_AFTER, r.retry_after.to_string());
    for (k, v) in &r.headers {
        b = b.header(*k, v.as_str());
    }
    b.body(full(apf::TOO_MANY)).expect("response")
}

/// Test-only endpoints outside the API, served before faults and authentication and
/// never rate-limited: `GET /debug/fake-apiserver/apf[?reset=true]` and
/// `GET /debug/fake-apiserver/controllers`.
fn debug_endpoint(app: &App, parts: &hyper::http::request::Parts) -> Option<Response<Body>> {
    let rest = parts.uri.path().strip_prefix("/debug/fake-apiserver/")?;
    let query = parse_query(parts.uri.query());
    let reset = matches!(q(&query, "reset"), Some("true" | "1"));
    Some(match (rest.trim_end_matches('/'), &parts.method) {
        ("apf", &Method::GET) => json_response(200, &app.apf.stats(reset)),
        ("controllers", &Method::GET) => {
            let c = app.controllers.lock().unwrap_or_else(|e| e.into_inner());
            json_response(200, &c.stats_json())
        }
        _ => err_response(&ApiError::not_found_path()),
    })
}

fn authenticate(app: &App, headers: &hyper::HeaderMap) -> Result<User, ApiError> {
    let Some(tokens) = &app.cfg.tokens else {
        return Ok(User::admin());
    };
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = match h.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => return Err(ApiError::unauthorized()),
    };
    tokens
        .get(token)
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

fn q<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(kk, _)| kk == k)
        .map(|(_, v)| v.as_str())
}

fn route(
    app: &App,
    user: &User,
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let path = parts.uri.path();
    let query = parse_query(parts.uri.query());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => {
            let verb = parts.method.as_str().to_ascii_lowercase();
            let st = app.lock();
            auth::authorize(&st, user, &Attrs::non_resource(&verb, path))?;
            drop(st);
            return non_resource(app, &parts.method, path);
        }
    };
    let (watch_prefix, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some_and(|d| d.namespaced);
    let (ns, plural, name, sub) = if namespaced_path {
        if rest.len() > 5 {
            return Err(ApiError::not_found_path());
        }
        (rest[1], rest[2], rest.get(3).copied(), rest.get(4).copied())
    } else {
        if rest.len() > 3 {
            return Err(ApiError::not_found_path());
        }
        ("", rest[0], rest.get(1).copied(), rest.get(2).copied())
    };
    let def = resources::find(group, version, plural).ok_or_else(ApiError::not_found_path)?;
    let name = name.unwrap_or("");
    let sub = sub.unwrap_or("");
    if (!def.namespaced && namespaced_path)
        || (def.namespaced && !name.is_empty() && ns.is_empty())
        || (!sub.is_empty() && !def.subresources.contains(&sub))
    {
        return Err(ApiError::not_found_path());
    }
    let is_watch = watch_prefix || matches!(q(&query, "watch"), Some("true" | "1"));
    let verb = match (&parts.method, name.is_empty(), sub) {
        (&Method::GET, true, _) if is_watch => "watch",
        (&Method::GET, false, "") if watch_prefix => "watch",
        (&Method::GET, true, _) => "list",
        (&Method::GET, false, _) => "get",
        (&Method::POST, true, _) => "create",
        (&Method::POST, false, "eviction" | "binding") => "create",
        (&Method::PUT, false, _) => "update",
        (&Method::PATCH, false, _) => "patch",
        (&Method::DELETE, false, "") => "delete",
        (&Method::DELETE, true, _) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    if matches!(sub, "eviction" | "binding") && verb != "create" {
        return Err(ApiError::method_not_allowed());
    }
    let attrs = Attrs::resource(verb, def, ns, name, sub)
        .with_field_selector(q(&query, "fieldSelector").unwrap_or(""));
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let want_table = accept.contains("as=Table");
    let include_object = q(&query, "includeObject").unwrap_or("Metadata");

    let mut guard = app.lock();
    auth::authorize(&guard, user, &attrs)?;
    // dryRun=All: run the request against a throwaway copy (admission and conflicts
    // still apply, nothing is persisted or broadcast).
    let mut dry;
    let st =
        if q(&query, "dryRun") == Some("All") && verb != "get" && verb != "list" && verb != "watch"
        {
            dry = guard.dry_copy();
            drop(guard);
            &mut dry
        } else {
            &mut *guard
        };
    let ns_opt = (!ns.is_empty()).then_some(ns);
    match verb {
        "get" => {
            let obj = st
                .get(def.storage, ns, name)
                .ok_or_else(|| not_found(def, name))?;
            if want_table {
                let meta = json!({"resourceVersion": meta_str(obj, "resourceVersion")});
                return Ok(Reply::Json(
                    200,
                    table::to_table(def, &[out(def, obj)], meta, include_object),
                ));
            }
            Ok(Reply::Json(200, out(def, obj)))
        }
        "list" => list(st, def, ns_opt, &query, want_table, include_object),
        "watch" => {
            let mut filter = WatchFilter::new(def, ns_opt, &query)?;
            if !name.is_empty() {
                filter.name = Some(name.to_string());
            }
            if want_table {
                filter.table = Some(include_object.to_string());
            }
            watch_setup(st, def, filter, &query).map(|w| Reply::Watch(Box::new(w)))
        }
        "create" if sub == "binding" => Ok(Reply::Json(201, bind(st, def, ns, name, body)?)),
        "create" if sub == "eviction" => {
            let (code, v) = evict(st, def, ns, name, user, body)?;
            Ok(Reply::Json(code, v))
        }
        "create" => {
            let obj = parse_body(body)?;
            Ok(Reply::Json(201, create(st, def, ns, user, obj, false)?))
        }
        "update" => {
            let new = parse_body(body)?;
            let bn = meta_str(&new, "name");
            if !bn.is_empty() && bn != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({bn}) does not match the name on the URL ({name})"
                )));
            }
            Ok(Reply::Json(
                200,
                mutate(st, def, ns, name, sub, user, |_| Ok(new))?,
            ))
        }
        "patch" => {
            let p = parse_body(body)?;
            let ct = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let v = mutate(st, def, ns, name, sub, user, |old| {
                let mut t = out(def, old);
                match ct.as_str() {
                    "application/merge-patch+json" => patch::merge_patch(&mut t, &p),
                    "application/strategic-merge-patch+json" => patch::strategic_merge(&mut t, &p)?,
                    "application/json-patch+json" => patch::json_patch(&mut t, &p)?,
                    _ => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!(
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
                            ),
                        ));
                    }
                }
                Ok(t)
            })?;
            Ok(Reply::Json(200, v))
        }
        "delete" => {
            let opts = DeleteOpts::parse(body, &query)?;
            let (code, v) = delete(st, def, ns, name, user, &opts)?;
            Ok(Reply::Json(code, v))
        }
        "deletecollection" => {
            let opts = DeleteOpts::parse(body, &query)?;
            let ls = LabelSelector::parse(q(&query, "labelSelector").unwrap_or(""))?;
            let fs = FieldSelector::parse_for(def, q(&query, "fieldSelector").unwrap_or(""))?;
            let names: Vec<(String, String)> = st
                .list(def.storage, ns_opt)
                .into_iter()
                .filter(|o| ls.matches(o) && fs.matches(o))
                .map(|o| {
                    (
                        meta_str(o, "namespace").to_string(),
                        meta_str(o, "name").to_string(),
                    )
                })
                .collect();
            let mut items = Vec::new();
            for (n_ns, n) in names {
                let (_, v) = delete(st, def, &n_ns, &n, user, &opts)?;
                if v["kind"] == "Status" {
                    let before = st.history.back().map(|e| out(def, &e.obj));
                    items.push(strip_type(before.unwrap_or(v)));
                } else {
                    items.push(strip_type(v));
                }
            }
            Ok(Reply::Json(
                200,
                json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn non_resource(app: &App, method: &Method, path: &str) -> Result<Reply, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let p = path.trim_end_matches('/');
    let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    let v = match segs.as_slice() {
        ["version"] => resources::version_doc(&app.cfg.server_version),
        ["api"] => {
            let addr = app.addr.lock().map(|a| a.clone()).unwrap_or_default();
            resources::api_versions(&addr)
        }
        ["apis"] => resources::api_group_list(),
        ["api", "v1"] => resources::resource_list("", "v1").expect("core"),
        ["apis", g] => resources::api_group(g).ok_or_else(ApiError::not_found_path)?,
        ["apis", g, v] => resources::resource_list(g, v).ok_or_else(ApiError::not_found_path)?,
        ["openapi", "v3"] => resources::openapi_v3_root(&app.cfg.server_version),
        ["openapi", "v3", "api", v] => resources::openapi_v3_gv("", v, &app.cfg.server_version)
            .ok_or_else(ApiError::not_found_path)?,
        ["openapi", "v3", "apis", g, v] => resources::openapi_v3_gv(g, v, &app.cfg.server_version)
            .ok_or_else(ApiError::not_found_path)?,
        ["healthz" | "livez" | "readyz", ..] => return Ok(Reply::Text("ok")),
        _ => return Err(ApiError::not_found_path()),
    };
    Ok(Reply::Json(200, v))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be JSON): {e}"
        ))
    })?;
    Ok(v)
}

/// 404 `<resource> "<name>" not found`.
pub fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{}\" not found", def.qualified(), name),
    )
    .with_details(details(name, def.group, def.plural))
}

fn conflict(def: &ResourceDef, name: &str, why: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{}\": {}",
            def.qualified(),
            name,
            why
        ),
    )
    .with_details(details(name, def.group, def.plural))
}

/// 422 as `apierrors.NewInvalid`: the qualified kind (`Lease.coordination.k8s.io`).
fn invalid(def: &ResourceDef, name: &str, field: &str, msg: &str) -> ApiError {
    let kind = if def.group.is_empty() {
        def.kind.to_string()
    } else {
        format!("{}.{}", def.kind, def.group)
    };
    ApiError::new(
        422,
        "Invalid",
        format!("{kind} \"{name}\" is invalid: {field}: {msg}"),
    )
    .with_details(json!({"name": name, "group": def.group, "kind": def.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}]}))
}

/// An object as served through `def` (version conversion is a relabel here).
fn out(def: &ResourceDef, obj: &Value) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(def.api_version());
    o["kind"] = json!(def.kind);
    o
}

fn strip_type(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}

/// storage/etcd3 and the cacher, for a continue token older than the compaction.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn list(
    st: &State,
    def: &ResourceDef,
    ns: Option<&str>,
    query: &[(String, String)],
    want_table: bool,
    include_object: &str,
) -> Result<Reply, ApiError> {
    let ls = LabelSelector::parse(q(query, "labelSelector").unwrap_or(""))?;
    let fs = FieldSelector::parse_for(def, q(query, "fieldSelector").unwrap_or(""))?;
    let cont = match q(query, "continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let (rv, key) = c
                .split_once(':')
                .and_then(|(rv, k)| Some((rv.parse::<u64>().ok()?, k)))
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            if rv < st.compacted_rv() {
                return Err(ApiError::new(410, "Expired", CONTINUE_EXPIRED));
            }
            Some(key)
        }
    };
    let mut items: Vec<&Value> = st
        .list(def.storage, ns)
        .into_iter()
        .filter(|o| ls.matches(o) && fs.matches(o))
        .filter(|o| match cont {
            Some(c) => {
                let key = format!("{}/{}", meta_str(o, "namespace"), meta_str(o, "name"));
                key.as_str() > c
            }
            None => true,
        })
        .collect();
    let mut meta = json!({"resourceVersion": st.rv.to_string()});
    let limit: usize = q(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    if limit > 0 && items.len() > limit {
        let remaining = items.len() - limit;
        items.truncate(limit);
        let last = items[limit - 1];
        meta["continue"] = json!(format!(
            "{}:{}/{}",
            st.rv,
            meta_str(last, "namespace"),
            meta_str(last, "name")
        ));
        meta["remainingItemCount"] = json!(remaining);
    }
    let objs: Vec<Value> = items.iter().map(|o| out(def, o)).collect();
    if want_table {
        return Ok(Reply::Json(
            200,
            table::to_table(def, &objs, meta, include_object),
        ));
    }
    Ok(Reply::Json(
        200,
        json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": meta,
            "items": objs.into_iter().map(strip_type).collect::<Vec<_>>(),
        }),
    ))
}

fn valid_name(def: &ResourceDef, name: &str) -> bool {
    if name.is_empty()
        || name.len() > 253
        || name.contains(['/', '%'])
        || name == "."
        || name == ".."
    {
        return false;
    }
    if def.group == "rbac.authorization.k8s.io" {
        return true;
    }
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn pod_qos(pod: &Value) -> &'static str {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = c.pointer("/resources/requests");
        let lim = c.pointer("/resources/limits");
        let has = |v: Option<&Value>| v.and_then(Value::as_object).is_some_and(|m| !m.is_empty());
        if has(req) || has(lim) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The DefaultTolerationSeconds admission plugin
/// (plugin/pkg/admission/defaulttolerationseconds/admission.go): unless the pod already
/// tolerates them, tolerate not-ready and unreachable NoExecute for 300 s.
fn add_default_tolerations(pod: &mut Value) {
    let tols = pod["spec"]
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tolerates = |key: &str| {
        tols.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
        })
    };
    let mut add = Vec::new();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerates(key) {
            add.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300}),
            );
        }
    }
    if !add.is_empty() {
        let mut all = tols;
        all.extend(add);
        pod["spec"]["tolerations"] = Value::Array(all);
    }
}

/// Create an object. `seed` keeps caller-provided uid/timestamps/status.
pub fn create(
    st: &mut State,
    def: &'static ResourceDef,
    ns: &str,
    user: &User,
    mut obj: Value,
    seed: bool,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is not a JSON object",
        ));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            def.kind
        )));
    }
    let storage = resources::storage_def(def.storage);
    obj["apiVersion"] = json!(storage.api_version());
    obj["kind"] = json!(def.kind);
    let md = metadata_mut(&mut obj);
    let mut name = md
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        match md.get("generateName").and_then(Value::as_str) {
            Some(g) if !g.is_empty() => name = format!("{g}{}", random_suffix()),
            _ => {
                return Err(invalid(
                    def,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        }
        md.insert("name".into(), json!(name));
    }
    if !valid_name(def, &name) {
        return Err(invalid(
            def,
            &name,
            "metadata.name",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    if def.namespaced {
        let body_ns = md.get("namespace").and_then(Value::as_str).unwrap_or("");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        md.insert("namespace".into(), json!(ns));
    } else {
        md.remove("namespace");
    }
    let keep = |md: &serde_json::Map<String, Value>, k: &str| {
        seed && md
            .get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if !keep(md, "uid") {
        md.insert("uid".into(), json!(crate::util::new_uid()));
    }
    if !keep(md, "creationTimestamp") {
        md.insert("creationTimestamp".into(), json!(now_rfc3339()));
    }
    md.insert("generation".into(), json!(1));
    md.remove("resourceVersion");
    md.remove("selfLink");
    md.remove("managedFields");
    if !seed {
        md.remove("deletionTimestamp");
        md.remove("deletionGracePeriodSeconds");
    }
    if def.namespaced && st.get(NAMESPACES, "", ns).is_none() {
        return Err(
            ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
                .with_details(details(ns, "", "namespaces")),
        );
    }
    if st.get(def.storage, ns, &name).is_some() {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", def.qualified(), name),
        )
        .with_details(details(&name, def.group, def.plural)));
    }
    if let Some(node) = user.node_name() {
        if def.is(NODES) {
            auth::admit_node_write(def, node, None, &obj)?;
        }
        if def.is(PODS) {
            auth::admit_pod_create(st, def, node, &obj)?;
        }
        if def.is(LEASES) {
            auth::admit_lease(def, node, ns, &name)?;
        }
    }
    if def.is(PODS) {
        let spec = obj
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid(def, &name, "spec", "Required value"))?;
        for (k, v) in [
            ("terminationGracePeriodSeconds", json!(30)),
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("securityContext", json!({})),
        ] {
            spec.entry(k).or_insert(v);
        }
        if !seed {
            add_default_tolerations(&mut obj);
        }
        if !seed || obj.get("status").is_none() {
            let qos = pod_qos(&obj);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
    }
    if def.is(NAMESPACES) {
        metadata_mut(&mut obj)
            .entry("labels")
            .or_insert(json!({}))
            .as_object_mut()
            .map(|l| l.insert("kubernetes.io/metadata.name".into(), json!(name)));
        obj["status"] = json!({"phase": "Active"});
    }
    if def.is(PDBS) {
        obj["status"] = st.pdb_status(&obj);
    }
    if def.is(LEASES) {
        validate_lease(def, &name, &obj)?;
    }
    let stored = st.insert(def.storage, obj);
    Ok(out(def, &stored))
}

/// Shared update/patch path: `f` produces the desired object from the current one.
fn mutate(
    st: &mut State,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    sub: &str,
    user: &User,
    f: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let old = st
        .get(def.storage, ns, name)
        .cloned()
        .ok_or_else(|| not_found(def, name))?;
    let mut new = f(&old)?;
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is not a JSON object",
        ));
    }
    let nn = meta_str(&new, "name");
    if !nn.is_empty() && nn != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({nn}) does not match the name on the URL ({name})"
        )));
    }
    let rv = meta_str(&new, "resourceVersion");
    if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
        return Err(conflict(
            def,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let uid = meta_str(&new, "uid");
    if !uid.is_empty() && uid != meta_str(&old, "uid") {
        return Err(conflict(
            def,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid")
            ),
        ));
    }
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = json!(def.kind);
    {
        let om = old["metadata"].as_object().cloned().unwrap_or_default();
        let md = metadata_mut(&mut new);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match om.get(k) {
                Some(v) => md.insert(k.into(), v.clone()),
                None => md.remove(k),
            };
        }
        md.remove("selfLink");
        md.remove("managedFields");
    }
    if def.has_status() {
        if sub == "status" {
            match old.get("spec") {
                Some(s) => new["spec"] = s.clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("spec"));
                }
            }
            if def.is(PODS) {
                let owners = old.pointer("/metadata/ownerReferences").cloned();
                let md = metadata_mut(&mut new);
                match owners {
                    Some(o) => md.insert("ownerReferences".into(), o),
                    None => md.remove("ownerReferences"),
                };
            }
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            }
        }
    }
    if def.is(PODS) && sub.is_empty() {
        check_pod_update(def, name, &old, &new)?;
    }
    if def.is(LEASES) {
        validate_lease(def, name, &new)?;
    }
    if old.get("spec") != new.get("spec") {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        metadata_mut(&mut new).insert("generation".into(), json!(g + 1));
    }
    if let Some(node) = user.node_name() {
        if def.is(NODES) {
            auth::admit_node_write(def, node, Some(&old), &new)?;
        }
        if def.is(PODS) && sub == "status" {
            auth::admit_pod_status(def, node, &old, &new)?;
        }
        if def.is(LEASES) {
            auth::admit_lease(def, node, ns, name)?;
        }
    }
    let no_finalizers = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let grace = new
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if is_terminating(&new) && no_finalizers && (!def.is(PODS) || grace == 0) {
        st.replace(def.storage, new);
        let gone = st
            .remove(def.storage, ns, name)
            .ok_or_else(|| not_found(def, name))?;
        return Ok(out(def, &gone));
    }
    let stored = st.replace(def.storage, new);
    Ok(out(def, &stored))
}

/// ValidateLeaseSpec (pkg/apis/coordination/validation/validation.go).
fn validate_lease(def: &ResourceDef, name: &str, lease: &Value) -> Result<(), ApiError> {
    let int = |k: &str| lease.pointer(&format!("/spec/{k}")).and_then(Value::as_i64);
    if let Some(d) = int("leaseDurationSeconds")
        && d <= 0
    {
        return Err(invalid(
            def,
            name,
            "spec.leaseDurationSeconds",
            &format!("Invalid value: {d}: must be greater than 0"),
        ));
    }
    if let Some(t) = int("leaseTransitions")
        && t < 0
    {
        return Err(invalid(
            def,
            name,
            "spec.leaseTransitions",
            &format!("Invalid value: {t}: must be greater than or equal to 0"),
        ));
    }
    Ok(())
}

/// ValidatePodUpdate (pkg/apis/core/validation/validation.go): besides metadata, an
/// update may only change container images, activeDeadlineSeconds, tolerations
/// (additions), terminationGracePeriodSeconds and schedulingGates; nodeName is set
/// through binding, never by update.
fn check_pod_update(
    def: &ResourceDef,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let (Some(os), Some(ns)) = (old.get("spec"), new.get("spec")) else {
        return Ok(());
    };
    let mut mutated = os.clone();
    for k in [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
        "schedulingGates",
    ] {
        match ns.get(k) {
            Some(v) => mutated[k] = v.clone(),
            None => {
                mutated.as_object_mut().map(|m| m.remove(k));
            }
        }
    }
    for list in ["containers", "initContainers"] {
        if let (Some(cs), Some(ncs)) = (
            mutated.get_mut(list).and_then(Value::as_array_mut),
            ns.get(list).and_then(Value::as_array),
        ) && cs.len() == ncs.len()
        {
            for (c, nc) in cs.iter_mut().zip(ncs) {
                if let Some(img) = nc.get("image") {
                    c["image"] = img.clone();
                }
            }
        }
    }
    if mutated == *ns {
        return Ok(());
    }
    Err(invalid(
        def,
        name,
        "spec",
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
    ))
}

#[derive(Debug, Default)]
struct DeleteOpts {
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
}

impl DeleteOpts {
    fn from_value(v: &Value) -> Self {
        DeleteOpts {
            grace: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            uid: v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(String::from),
            rv: v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from),
        }
    }

    fn parse(body: &Bytes, query: &[(String, String)]) -> Result<Self, ApiError> {
        let mut o = if body.iter().all(u8::is_ascii_whitespace) {
            DeleteOpts::default()
        } else {
            DeleteOpts::from_value(&parse_body(body)?)
        };
        if o.grace.is_none()
            && let Some(g) = q(query, "gracePeriodSeconds")
        {
            o.grace =
                Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?);
        }
        Ok(o)
    }

    fn check(&self, def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
        let name = meta_str(obj, "name");
        if let Some(u) = &self.uid
            && u != meta_str(obj, "uid")
        {
            return Err(conflict(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    meta_str(obj, "uid")
                ),
            ));
        }
        if let Some(rv) = &self.rv
            && rv != meta_str(obj, "resourceVersion")
        {
            return Err(conflict(
                def,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(obj, "resourceVersion")
                ),
            ));
        }
        Ok(())
    }
}

fn delete(
    st: &mut State,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    user: &User,
    opts: &DeleteOpts,
) -> Result<(u16, Value), ApiError> {
    let obj = st
        .get(def.storage, ns, name)
        .cloned()
        .ok_or_else(|| not_found(def, name))?;
    if let Some(node) = user.node_name() {
        if def.is(PODS) {
            auth::admit_pod_delete(def, node, &obj)?;
        }
        if def.is(LEASES) {
            auth::admit_lease(def, node, ns, name)?;
        }
    }
    opts.check(def, &obj)?;
    if def.is(PODS) {
        return Ok((200, delete_pod(st, def, obj, opts.grace)));
    }
    let has_finalizers = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if is_terminating(&obj) {
            return Ok((200, out(def, &obj)));
        }
        let mut o = obj;
        let md = metadata_mut(&mut o);
        md.insert("deletionTimestamp".into(), json!(now_rfc3339()));
        md.insert("deletionGracePeriodSeconds".into(), json!(0));
        return Ok((200, out(def, &st.replace(def.storage, o))));
    }
    if def.is(NAMESPACES) {
        st.purge_namespace(name);
    }
    let gone = st
        .remove(def.storage, ns, name)
        .ok_or_else(|| not_found(def, name))?;
    // Registries with ReturnDeletedObject (pods, namespaces, services) answer with the
    // object; the generic store answers with a Success Status.
    if def.is(NAMESPACES) || def.is("services") {
        return Ok((200, out(def, &gone)));
    }
    let mut d = details(name, def.group, def.plural);
    d["uid"] = json!(meta_str(&gone, "uid"));
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}),
    ))
}

/// Graceful pod deletion: bound, non-terminal pods get deletionTimestamp and stay until
/// deleted again with gracePeriodSeconds=0 (the kubelet's final delete).
pub fn delete_pod(st: &mut State, def: &ResourceDef, obj: Value, grace: Option<i64>) -> Value {
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut grace = grace
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0);
    if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
        grace = 0;
    }
    if is_terminating(&obj) {
        let current = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if grace >= current {
            return out(def, &obj);
        }
    }
    let no_finalizers = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let (ns, name) = (
        meta_str(&obj, "namespace").to_string(),
        meta_str(&obj, "name").to_string(),
    );
    if grace == 0 && no_finalizers {
        return st
            .remove(PODS, &ns, &name)
            .map(|o| out(def, &o))
            .unwrap_or(obj);
    }
    let mut o = obj;
    let md = metadata_mut(&mut o);
    md.insert(
        "deletionTimestamp".into(),
        json!(rfc3339(unix_now() + grace)),
    );
    md.insert("deletionGracePeriodSeconds".into(), json!(grace));
    out(def, &st.replace(PODS, o))
}

/// pods/binding (pkg/registry/core/pod/storage/storage.go `assignPod`): sets
/// spec.nodeName once, with PodScheduled=True; 409 when already assigned or terminating.
fn bind(
    st: &mut State,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let b = parse_body(body)?;
    let target = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if target.is_empty() {
        return Err(invalid(def, name, "target.name", "Required value"));
    }
    let mut pod = st
        .get(PODS, ns, name)
        .cloned()
        .ok_or_else(|| not_found(def, name))?;
    let pb = |why: String| {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}"),
        )
        .with_details(details(name, "", "pods/binding"))
    };
    if is_terminating(&pod) {
        return Err(pb(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        )));
    }
    let current = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !current.is_empty() {
        return Err(pb(format!(
            "pod {name} is already assigned to node \"{current}\""
        )));
    }
    pod["spec"]["nodeName"] = json!(target);
    crate::controllers::set_condition(
        &mut pod,
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null}),
        &now_rfc3339(),
    );
    st.replace(PODS, pod);
    Ok(success(201))
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

fn evict(
    st: &mut State,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    user: &User,
    body: &Bytes,
) -> Result<(u16, Value), ApiError> {
    let ev = parse_body(body)?;
    if let Some(k) = ev.get("kind").and_then(Value::as_str)
        && k != "Eviction"
    {
        return Err(ApiError::bad_request(format!(
            "expected kind Eviction, got {k}"
        )));
    }
    let en = meta_str(&ev, "name");
    if !en.is_empty() && en != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let pod = st
        .get(PODS, ns, name)
        .cloned()
        .ok_or_else(|| not_found(def, name))?;
    if let Some(node) = user.node_name() {
        auth::admit_pod_eviction(def, node, &pod)?;
    }
    let opts = ev
        .get("deleteOptions")
        .map(DeleteOpts::from_value)
        .unwrap_or_default();
    opts.check(def, &pod)?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    // canIgnorePDB: terminal, Pending and terminating pods are deleted without a PDB check.
    if !matches!(phase, "Succeeded" | "Failed" | "Pending") && !is_terminating(&pod) {
        let pdbs: Vec<&Value> = st
            .list(PDBS, Some(ns))
            .into_iter()
            .filter(|p| LabelSelector::from_object(p.pointer("/spec/selector")).matches(&pod))
            .collect();
        if pdbs.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = pdbs.first() {
            // The eviction API reads the status the disruption controller wrote (kept
            // current on every pod and PDB write), failSafe included.
            let status = |f: &str| {
                pdb.pointer(&format!("/status/{f}"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            let (current_healthy, desired_healthy) =
                (status("currentHealthy"), status("desiredHealthy"));
            let unhealthy_ok = !pod_is_ready(&pod)
                && (pdb
                    .pointer("/spec/unhealthyPodEvictionPolicy")
                    .and_then(Value::as_str)
                    == Some("AlwaysAllow")
                    || (current_healthy >= desired_healthy && desired_healthy > 0));
            if !unhealthy_ok && status("disruptionsAllowed") <= 0 {
                return Err(ApiError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                )
                .with_details(json!({"causes": [{
                    "reason": "DisruptionBudget",
                    "message": format!(
                        "The disruption budget {} needs {} healthy pods and has {} currently",
                        meta_str(pdb, "name"), desired_healthy, current_healthy),
                }]})));
            }
        }
    }
    // addConditionAndDeletePod: DisruptionTarget first (PodDisruptionConditions, GA 1.31).
    let mut pod = pod;
    let changed = crate::controllers::set_condition(
        &mut pod,
        json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
            "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}),
        &now_rfc3339(),
    );
    if changed {
        pod = st.replace(PODS, pod);
    }
    delete_pod(st, def, pod, opts.grace);
    Ok((201, success(201)))
}

// ------------------------------------------------------------------------- watch

/// What a watch selects and how it renders events.
pub struct WatchFilter {
    storage: &'static str,
    ns: Option<String>,
    name: Option<String>,
    ls: LabelSelector,
    fs: FieldSelector,
    /// `Some(includeObject)` when the client asked for Table watch events (kubectl get -w).
    table: Option<String>,
}

impl WatchFilter {
    fn new(
        def: &ResourceDef,
        ns: Option<&str>,
        query: &[(String, String)],
    ) -> Result<Self, ApiError> {
        Ok(WatchFilter {
            storage: def.storage,
            ns: ns.map(String::from),
            name: None,
            ls: LabelSelector::parse(q(query, "labelSelector").unwrap_or(""))?,
            fs: FieldSelector::parse_for(def, q(query, "fieldSelector").unwrap_or(""))?,
            table: None,
        })
    }

    fn event_line(&self, def: &ResourceDef, ty: &str, obj: &Value) -> Bytes {
        match &self.table {
            Some(inc) => {
                let meta = json!({"resourceVersion": meta_str(obj, "resourceVersion")});
                let t = table::to_table(def, &[out(def, obj)], meta, inc);
                let mut v =
                    serde_json::to_vec(&json!({"type": ty, "object": t})).unwrap_or_default();
                v.push(b'\n');
                Bytes::from(v)
            }
            None => line(def, ty, obj),
        }
    }

    fn matches(&self, o: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|n| n == meta_str(o, "namespace"))
            && self
                .name
                .as_deref()
                .is_none_or(|n| n == meta_str(o, "name"))
            && self.ls.matches(o)
            && self.fs.matches(o)
    }

    /// Event type as seen through the filter (objects entering/leaving the selection).
    fn translate(&self, ev: &Event) -> Option<&'static str> {
        if ev.storage != self.storage {
            return None;
        }
        let now = self.matches(&ev.obj);
        let before = ev.old.as_ref().is_some_and(|o| self.matches(o));
        match ev.kind {
            EventType::Added | EventType::Deleted => now.then_some(ev.kind.as_str()),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

/// A watch ready to stream: initial events and the live subscription.
pub struct WatchSetup {
    def: &'static ResourceDef,
    initial: Vec<Bytes>,
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    filter: WatchFilter,
    timeout: Duration,
    bookmarks: bool,
    rv: u64,
}

fn line(def: &ResourceDef, ty: &str, obj: &Value) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": ty, "object": out(def, obj)})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(def, "BOOKMARK", &json!({"metadata": md}))
}

fn watch_setup(
    st: &State,
    def: &'static ResourceDef,
    filter: WatchFilter,
    query: &[(String, String)],
) -> Result<WatchSetup, ApiError> {
    // Without timeoutSeconds: minRequestTimeout (1800 s) × [1, 2), as the watch handler
    // picks it (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/get.go).
    let timeout = q(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or_else(|| 1800 + crate::util::random_u64() % 1800);
    let bookmarks = matches!(q(query, "allowWatchBookmarks"), Some("true" | "1"));
    let send_initial = matches!(q(query, "sendInitialEvents"), Some("true" | "1"));
    let rv_param = q(query, "resourceVersion").unwrap_or("");
    let mut initial = Vec::new();
    let rx = Some(st.tx.subscribe());
    let snapshot = |initial: &mut Vec<Bytes>| {
        for o in st.list(def.storage, filter.ns.as_deref()) {
            if filter.matches(o) {
                initial.push(filter.event_line(def, "ADDED", o));
            }
        }
    };
    if send_initial {
        snapshot(&mut initial);
        initial.push(bookmark(def, st.rv, true));
    } else if rv_param.is_empty() || rv_param == "0" {
        snapshot(&mut initial);
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param}")))?;
        if rv < st.oldest_watchable() {
            let e = ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", st.oldest_watchable()),
            );
            let mut v = serde_json::to_vec(&json!({"type": "ERROR", "object": e.status()}))
                .unwrap_or_default();
            v.push(b'\n');
            return Ok(WatchSetup {
                def,
                initial: vec![Bytes::from(v)],
                rx: None,
                filter,
                timeout: Duration::from_secs(timeout),
                bookmarks,
                rv: st.rv,
            });
        }
        for ev in st.history.iter().filter(|e| e.rv > rv) {
            if let Some(ty) = filter.translate(ev) {
                initial.push(filter.event_line(def, ty, &ev.obj));
            }
        }
    }
    Ok(WatchSetup {
        def,
        initial,
        rx,
        filter,
        timeout: Duration::from_secs(timeout),
        bookmarks,
        rv: st.rv,
    })
}

fn start_watch(app: Arc<App>, w: WatchSetup) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(256);
    tokio::spawn(async move {
        let WatchSetup {
            def,
            initial,
            rx: events,
            filter,
            timeout,
            bookmarks,
            mut rv,
        } = w;
        for b in initial {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        let Some(mut events) = events else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let ends_at = Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_bookmark = Instant::now();
        let mut final_bookmark = false;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                r = events.recv() => match r {
                    Ok(ev) => {
                        rv = ev.rv;
                        if let Some(ty) = filter.translate(&ev)
                            && tx.send(Ok(filter.event_line(def, ty, &ev.obj))).await.is_err() {
                                return;
                            }
                    }
                    // A watcher that cannot keep up is closed by the cacher
                    // ("Forcing watcher close due to unresponsiveness"): the stream ends.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if app.fault() == Some(Fault::Down) {
                        let _ = tx.send(Err("fault injected: down".into())).await;
                        return;
                    }
                    // The cacher's bookmarks: about every minute
                    // (defaultBookmarkFrequency) and one ~2 s before the deadline.
                    let near_end = ends_at.saturating_duration_since(Instant::now()) <= Duration::from_secs(2);
                    if bookmarks
                        && (last_bookmark.elapsed() >= Duration::from_secs(60) || (near_end && !final_bookmark))
                    {
                        last_bookmark = Instant::now();
                        final_bookmark |= near_end;
                        if tx.send(Ok(bookmark(def, rv, false))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(ChannelBody(rx).boxed())
        .expect("response")
}

/// Load a seed file: a JSON list of objects (or a `List` with `items`), created as admin.
pub fn load_seed(st: &mut State, text: &str) -> Result<usize, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("seed: invalid JSON: {e}"))?;
    let items = match v {
        Value::Array(a) => a,
        Value::Object(ref o) if o.contains_key("items") => o["items"]
            .as_array()
            .cloned()
            .ok_or("seed: items must be a list")?,
        o @ Value::Object(_) => vec![o],
        _ => return Err("seed: expected a JSON list of objects".into()),
    };
    let admin = User::admin();
    let n = items.len();
    for (i, obj) in items.into_iter().enumerate() {
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let def = resources::find_by_type(av, kind)
            .ok_or_else(|| format!("seed item {i}: unsupported apiVersion/kind {av:?}/{kind:?}"))?;
        let ns = if def.namespaced {
            let n = meta_str(&obj, "namespace");
            if n.is_empty() { "default" } else { n }.to_string()
        } else {
            String::new()
        };
        if def.namespaced && st.get(NAMESPACES, "", &ns).is_none() {
            let nsobj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            create(
                st,
                resources::storage_def(NAMESPACES),
                "",
                &admin,
                nsobj,
                true,
            )
            .map_err(|e| format!("seed item {i}: {}", e.message))?;
        }
        create(st, def, &ns, &admin, obj, true)
            .map_err(|e| format!("seed item {i}: {}", e.message))?;
    }
    Ok(n)
}
