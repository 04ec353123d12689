//! fake-apiserver: an in-memory Kubernetes API server test double, faithful enough for
//! the real kubectl (get, cordon, drain), kube-rs clients and the fake kubelet.
//! Test-only; never shipped.

mod apf;
mod auth;
mod controllers;
mod nodelifecycle;
mod patch;
mod replicaset;
mod resources;
mod scheduler;
mod selectors;
mod server;
mod store;
mod table;
mod util;

use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use server::{App, Config, Fault};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "fake-apiserver",
    about = "In-memory kube-apiserver test double"
)]
struct Args {
    /// Address to listen on (loopback only); port 0 picks an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the bound port (digits and a newline) to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// kube-apiserver static token file: token,user,uid,"group1,group2".
    /// Without it every request is served as system:admin (system:masters).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// JSON list of objects (or a List with items) created as admin at start.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Added latency per request, in milliseconds, spent holding the request's APF seat
    /// (a loaded server).
    #[arg(long, env = "FAKE_APISERVER_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Fault mode active from the start: down | forbidden | unavailable.
    #[arg(long)]
    fail_mode: Option<String>,
    /// File re-read on every request: `down` drops connections, `forbidden` answers 403,
    /// `unavailable` answers 503; absent or anything else means healthy.
    #[arg(long)]
    fault_file: Option<PathBuf>,
    /// gitVersion reported by /version.
    #[arg(long, default_value = "v1.33.0")]
    server_version: String,
    /// Serve HTTPS with this PEM certificate (chain). kubectl only sends bearer tokens
    /// over TLS, so kubeconfigs with tokens need https (use insecure-skip-tls-verify).
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Watch events kept for resuming from a resourceVersion; older ones get 410 Expired.
    #[arg(long, default_value_t = 20_000)]
    watch_history: usize,
    /// API Priority and Fairness: seats per limited priority level (node-high, system,
    /// workload-high, workload-low, global-default); beyond them requests get 429 with
    /// Retry-After. 0 (the default) = unlimited.
    #[arg(long, env = "FAKE_APISERVER_MAX_INFLIGHT", default_value_t = 0)]
    max_inflight: usize,
    /// How long a request waits in its priority level's queue for a seat before the 429
    /// (upstream queues; 0 rejects at once).
    #[arg(long, env = "FAKE_APISERVER_APF_QUEUE_WAIT_MS", default_value_t = 0)]
    apf_queue_wait_ms: u64,
    /// Put system:masters in global-default instead of the exempt level (upstream always
    /// exempts it; for tests whose clients run as admin).
    #[arg(long, env = "FAKE_APISERVER_APF_LIMIT_MASTERS")]
    apf_limit_masters: bool,
    /// In-process controllers to run: a comma-separated subset of scheduler, replicaset,
    /// nodelifecycle, or `all`. Default: none.
    #[arg(long, env = "FAKE_APISERVER_CONTROLLERS", default_value = "")]
    controllers: String,
    /// Period of the controllers' loop, in milliseconds.
    #[arg(
        long,
        env = "FAKE_APISERVER_CONTROLLER_INTERVAL_MS",
        default_value_t = 200
    )]
    controller_interval_ms: u64,
    /// kube-controller-manager --node-monitor-grace-period, in seconds (default 40 as in
    /// pkg/controller/nodelifecycle/config/v1alpha1/defaults.go).
    #[arg(
        long,
        env = "FAKE_APISERVER_NODE_MONITOR_GRACE_PERIOD_S",
        default_value_t = 40.0
    )]
    node_monitor_grace_period_s: f64,
    /// kube-controller-manager --node-startup-grace-period, in seconds.
    #[arg(
        long,
        env = "FAKE_APISERVER_NODE_STARTUP_GRACE_PERIOD_S",
        default_value_t = 60.0
    )]
    node_startup_grace_period_s: f64,
    /// Turn off the Node authorizer's AuthorizeNodeWithSelectors rules (beta, on by
    /// default since Kubernetes 1.32): nodes may then list/watch all nodes and pods.
    #[arg(long, env = "FAKE_APISERVER_NO_AUTHORIZE_NODE_WITH_SELECTORS")]
    no_authorize_node_with_selectors: bool,
    /// kube-apiserver --etcd-compaction-interval, in seconds: each tick compacts to the
    /// revision seen at the previous one, so watches and continue tokens from before get
    /// 410 Expired. 0 = never.
    #[arg(
        long,
        env = "FAKE_APISERVER_COMPACTION_INTERVAL_S",
        default_value_t = 300.0
    )]
    compaction_interval_s: f64,
    /// Log every request to stderr.
    #[arg(long)]
    log_requests: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("fake-apiserver: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    if !args.listen.ip().is_loopback() {
        return Err(format!("refusing non-loopback --listen {}", args.listen));
    }
    if let Some(m) = &args.fail_mode
        && !matches!(m.as_str(), "down" | "forbidden" | "unavailable")
    {
        return Err(format!(
            "--fail-mode must be down|forbidden|unavailable, got {m:?}"
        ));
    }
    let secs =
        |s: f64, flag: &str| Duration::try_from_secs_f64(s).map_err(|e| format!("{flag}: {e}"));
    let mut controllers = controllers::Settings {
        scheduler: false,
        replicaset: false,
        nodelifecycle: false,
        interval: Duration::from_millis(args.controller_interval_ms.max(1)),
        monitor_grace: secs(
            args.node_monitor_grace_period_s,
            "--node-monitor-grace-period-s",
        )?,
        startup_grace: secs(
            args.node_startup_grace_period_s,
            "--node-startup-grace-period-s",
        )?,
    };
    controllers.parse_list(&args.controllers)?;
    let tokens = match &args.token_auth_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            Some(auth::parse_token_file(&text)?)
        }
        None => None,
    };
    let app = Arc::new(App::new(Config {
        tokens,
        latency: Duration::from_millis(args.latency_ms),
        max_inflight: args.max_inflight,
        apf_queue_wait: Duration::from_millis(args.apf_queue_wait_ms),
        apf_exempt_masters: !args.apf_limit_masters,
        controllers,
        fault_file: args.fault_file.clone(),
        fail_mode: args.fail_mode.clone(),
        server_version: args.server_version.clone(),
        log_requests: args.log_requests,
    }));
    {
        let mut st = app.lock();
        st.history_limit = args.watch_history;
        st.node_selectors = !args.no_authorize_node_with_selectors;
    }
    if let Some(p) = &args.seed {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        server::load_seed(&mut app.lock(), &text)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(app, args))
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading {}: {e}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve(app: Arc<App>, args: Args) -> Result<(), String> {
    let tls = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    *app.addr.lock().map_err(|e| e.to_string())? = addr.to_string();
    if let Some(p) = &args.port_file {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", addr.port()))
            .and_then(|_| std::fs::rename(&tmp, p))
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    tokio::pin!(shutdown);
    if args.compaction_interval_s > 0.0 {
        let every = Duration::try_from_secs_f64(args.compaction_interval_s)
            .map_err(|e| format!("--compaction-interval-s: {e}"))?;
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                app.lock().compact();
            }
        });
    }
    let settings = app.controllers.lock().map(|c| c.settings.clone());
    if let Ok(settings) = settings
        && settings.any()
    {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let app = app.clone();
                // The pass holds the state lock; keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || app.run_controllers()).await;
            }
        });
    }
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fake-apiserver: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if app.fault() == Some(Fault::Down) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| server::handle(app.clone(), req));
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}
