//! `fake-marathon`: a test double of Marathon's REST API (apps, tasks, deployments, queue), with
//! JSON-schema validation of app bodies, Basic / DC/OS token auth, timed deployments, 409 locking and
//! `hostname UNIQUE` placement on a fixed host list. Test-only; never shipped.
//!
//! ```text
//! fake-marathon --listen 127.0.0.1:0 --schema AppDefinition.json --hosts h1,h2,h3
//!               [--credentials user:pass] [--token T] [--deploy-seconds 0.5] [--port-file PATH]
//! ```
//!
//! Live mode (`--agents agents.json --emulator mesos-task-emulator`): the fake really deploys —
//! every task is a `mesos-task-emulator` process on one of the agents, health comes from the
//! emulator's MESOS_HTTP results, and deployments follow Marathon's actors (see `live.rs`).
//! ```text
//!               [--agents agents.json --emulator PATH] [--time-scale 1] [--offer-interval 1]
//!               [--event-log PATH]
//! ```
//! Prints exactly one line `listening on http://127.0.0.1:PORT` on stdout once it accepts connections;
//! request log lines go to stderr.

mod live;
mod model;
mod util;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use model::{Embeds, Reply, State, normalize_id};
use util::{Query, base64};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(name = "fake-marathon", about = "Fake Marathon REST API (test double)")]
struct Cli {
    /// Address to listen on (use port 0 for an ephemeral port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Marathon's AppDefinition JSON schema (draft 4) used to validate app bodies.
    #[arg(long)]
    schema: PathBuf,
    /// Comma-separated agent hostnames that offer resources.
    #[arg(long, value_delimiter = ',', default_value = "h1,h2,h3")]
    hosts: Vec<String>,
    /// Require HTTP Basic credentials `user:pass`.
    #[arg(long)]
    credentials: Option<String>,
    /// Require (or also accept) `Authorization: token=<T>` (DC/OS ACS token).
    #[arg(long)]
    token: Option<String>,
    /// How long a deployment takes once all its instances are placed.
    #[arg(long, default_value_t = 0.5)]
    deploy_seconds: f64,
    /// Also write the bound port number to this file.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Live mode: a JSON list of agents (hostname, sandbox_root, extra_env, health_port, cpus,
    /// mem); every task becomes a mesos-task-emulator process on one of them.
    #[arg(long, requires = "emulator")]
    agents: Option<PathBuf>,
    /// The mesos-task-emulator binary (live mode).
    #[arg(long)]
    emulator: Option<PathBuf>,
    /// Live mode: multiply every pace taken from an app (health checks, backoff); the kill grace
    /// stays as the app says.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Live mode: Mesos' allocation interval, how often queued instances get offers (seconds).
    #[arg(long, default_value_t = 1.0)]
    offer_interval: f64,
    /// Live mode: append one JSON line per task and deployment event to this file.
    #[arg(long)]
    event_log: Option<PathBuf>,
}

/// How often the live world is stepped (status updates, deployments, offers).
const LIVE_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot read schema {path}: {source}")]
    SchemaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema {path} is not JSON: {source}")]
    SchemaJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("schema {path} does not compile: {message}")]
    SchemaCompile { path: PathBuf, message: String },
    #[error("--deploy-seconds must be a finite number >= 0, got {0}")]
    DeploySeconds(f64),
    #[error("--hosts must name at least one host")]
    NoHosts,
    #[error("cannot read agents file {path}: {message}")]
    Agents { path: PathBuf, message: String },
    #[error("--time-scale and --offer-interval must be finite numbers > 0")]
    Timing,
    #[error("cannot open event log: {0}")]
    EventLog(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write port file {path}: {source}")]
    PortFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

struct Ctx {
    state: Mutex<State>,
    validator: jsonschema::Validator,
    basic: Option<String>,
    token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-marathon: cannot start runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-marathon: {e}");
            ExitCode::from(64)
        }
    }
}

fn load_live(
    cli: &Cli,
    path: &PathBuf,
    emulator: &std::path::Path,
) -> Result<live::Live, StartError> {
    let bad = |message: String| StartError::Agents {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let agents: Vec<live::Agent> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if agents.is_empty() {
        return Err(StartError::NoHosts);
    }
    let ok = |v: f64| v.is_finite() && v > 0.0;
    if !ok(cli.time_scale) || !ok(cli.offer_interval) {
        return Err(StartError::Timing);
    }
    live::Live::new(live::LiveConfig {
        agents,
        emulator: emulator.to_path_buf(),
        time_scale: cli.time_scale,
        offer_interval: Duration::from_secs_f64(cli.offer_interval),
        event_log: cli.event_log.clone(),
    })
    .map_err(StartError::EventLog)
}

fn load_validator(path: &PathBuf) -> Result<jsonschema::Validator, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::SchemaRead {
        path: path.clone(),
        source,
    })?;
    let mut schema: Value =
        serde_json::from_str(&text).map_err(|source| StartError::SchemaJson {
            path: path.clone(),
            source,
        })?;
    // Marathon's schema names a generic meta-schema URL; validate it as draft 4, as Marathon did.
    if let Value::Object(o) = &mut schema {
        o.remove("$schema");
    }
    jsonschema::draft4::new(&schema).map_err(|e| StartError::SchemaCompile {
        path: path.clone(),
        message: e.to_string(),
    })
}

async fn serve(cli: Cli) -> Result<(), StartError> {
    if !cli.deploy_seconds.is_finite() || cli.deploy_seconds < 0.0 {
        return Err(StartError::DeploySeconds(cli.deploy_seconds));
    }
    let hosts: Vec<String> = cli
        .hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(StartError::NoHosts);
    }
    let validator = load_validator(&cli.schema)?;
    let state = match (&cli.agents, &cli.emulator) {
        (Some(path), Some(emulator)) => State::new_live(load_live(&cli, path, emulator)?),
        _ => State::new(hosts, Duration::from_secs_f64(cli.deploy_seconds)),
    };
    let listener = TcpListener::bind(cli.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: cli.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cli.listen,
        source,
    })?;
    if let Some(path) = &cli.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", addr.port()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| StartError::PortFile {
                path: path.clone(),
                source,
            })?;
    }
    let ctx = Arc::new(Ctx {
        state: Mutex::new(state),
        validator,
        basic: cli
            .credentials
            .as_ref()
            .map(|c| format!("Basic {}", base64(c.as_bytes()))),
        token: cli.token.as_ref().map(|t| format!("token={t}")),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}").map_err(StartError::Stdout)?;
        out.flush().map_err(StartError::Stdout)?;
    }
    if cli.agents.is_some() {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LIVE_TICK);
            loop {
                every.tick().await;
                ctx.state.lock().unwrap_or_else(|p| p.into_inner()).tick();
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                // Hygiene, not Marathon: real tasks outlive Marathon, but the fake's own must not.
                let pids = ctx.state.lock().unwrap_or_else(|p| p.into_inner()).executor_pids();
                live::Live::kill_all(&pids);
                return Ok(());
            }
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("fake-marathon: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("fake-marathon: connection error: {e}");
            }
        });
    }
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let authorized = is_authorized(ctx, req.headers().get(AUTHORIZATION));
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(reply) => return respond(&method, &path, reply),
    };
    let reply = if authorized {
        route(ctx, &method, &path, &query, &body)
    } else {
        let mut r = Reply::message(401, "Invalid username or password.");
        if ctx.basic.is_some() {
            r.headers
                .push(("WWW-Authenticate", "Basic realm=\"Mesosphere\"".to_string()));
        } else {
            r.headers.push(("WWW-Authenticate", "acsjwt".to_string()));
        }
        r
    };
    respond(&method, &path, reply)
}

fn is_authorized(ctx: &Ctx, header: Option<&HeaderValue>) -> bool {
    if ctx.basic.is_none() && ctx.token.is_none() {
        return true;
    }
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    ctx.basic.as_deref() == Some(value) || ctx.token.as_deref() == Some(value)
}

async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(Reply::message(
            400,
            format!("cannot read request body: {e}"),
        )),
    }
}

fn respond(method: &Method, path: &str, reply: Reply) -> Response<Full<Bytes>> {
    eprintln!("fake-marathon: {method} {path} -> {}", reply.status);
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match &reply.body {
        Some(v) => Bytes::from(v.to_string()),
        None => Bytes::new(),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if reply.body.is_some() {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// Parses and schema-validates an app body. `path_id` is inserted as `id` when the body has none (PUT).
fn parse_app(ctx: &Ctx, body: &[u8], path_id: Option<&str>) -> Result<Map<String, Value>, Reply> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Reply::json(
            400,
            json!({"message": "Invalid JSON", "details": [{"path": "/", "errors": [e.to_string()]}]}),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(invalid(vec![(
            "/".to_string(),
            "error.expected.jsobject".to_string(),
        )]));
    };
    if let Some(id) = path_id
        && !obj.contains_key("id")
    {
        obj.insert("id".into(), Value::String(id.to_string()));
    }
    let instance = Value::Object(obj);
    let errors: Vec<(String, String)> = ctx
        .validator
        .iter_errors(&instance)
        .map(|e| {
            let p = e.instance_path().to_string();
            (
                if p.is_empty() { "/".to_string() } else { p },
                e.to_string(),
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    match instance {
        Value::Object(o) => Ok(o),
        _ => Err(Reply::message(500, "unreachable")),
    }
}

fn invalid(errors: Vec<(String, String)>) -> Reply {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (path, err) in errors {
        match grouped.iter_mut().find(|(p, _)| *p == path) {
            Some((_, errs)) => errs.push(err),
            None => grouped.push((path, vec![err])),
        }
    }
    let details: Vec<Value> = grouped
        .into_iter()
        .map(|(path, errors)| json!({"path": path, "errors": errors}))
        .collect();
    Reply::json(
        422,
        json!({"message": "Object is not valid", "details": details}),
    )
}

fn method_not_allowed() -> Reply {
    Reply::message(405, "HTTP 405 Method Not Allowed")
}

fn route(ctx: &Ctx, method: &Method, path: &str, query: &Query, body: &[u8]) -> Reply {
    let force = query.flag("force").unwrap_or(false);
    let lock = || ctx.state.lock().unwrap_or_else(|p| p.into_inner());
    if path == "/v2/apps" || path == "/v2/apps/" {
        return match *method {
            Method::GET => lock().list_apps(&Embeds::from_values(query.all("embed"))),
            Method::POST => match parse_app(ctx, body, None) {
                Ok(def) => lock().create_app(def),
                Err(r) => r,
            },
            _ => method_not_allowed(),
        };
    }
    if let Some(rest) = path.strip_prefix("/v2/apps/") {
        if let Some(app) = rest.strip_suffix("/tasks") {
            return match *method {
                Method::GET => lock().app_tasks(app),
                _ => method_not_allowed(),
            };
        }
        if let Some((app, task)) = rest.rsplit_once("/tasks/") {
            return match *method {
                Method::DELETE => {
                    let scale = query.flag("scale").unwrap_or(false);
                    lock().kill_task(app, task, scale, force)
                }
                _ => method_not_allowed(),
            };
        }
        let id = normalize_id(rest);
        return match *method {
            Method::GET => lock().get_app(&id, &Embeds::from_values(query.all("embed"))),
            Method::PUT | Method::PATCH => {
                let partial =
                    *method == Method::PATCH || query.flag("partialUpdate") != Some(false);
                match parse_app(ctx, body, Some(&id)) {
                    Ok(def) => lock().put_app(&id, def, partial, force),
                    Err(r) => r,
                }
            }
            Method::DELETE => lock().delete_app(&id, force),
            _ => method_not_allowed(),
        };
    }
    if path == "/v2/deployments" || path == "/v2/deployments/" {
        return match *method {
            Method::GET => lock().list_deployments(),
            _ => method_not_allowed(),
        };
    }
    if let Some(id) = path.strip_prefix("/v2/deployments/") {
        return match *method {
            Method::GET => lock().get_deployment(id),
            Method::DELETE => lock().delete_deployment(id, force),
            _ => method_not_allowed(),
        };
    }
    if path == "/v2/queue" || path == "/v2/queue/" {
        return match *method {
            Method::GET => lock().queue(query.all("embed").any(|e| e == "lastUnusedOffers")),
            _ => method_not_allowed(),
        };
    }
    if path == "/v2/info" {
        return Reply::json(
            200,
            json!({"name": "marathon", "version": "1.10.0-fake", "frameworkId": "fake"}),
        );
    }
    Reply::message(404, format!("No route for {path}"))
}
