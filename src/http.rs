//! A deliberately small HTTP/1.1 server for the health and metrics endpoints: fixed routes,
//! bounded header size, header read timeout, per-connection deadline and a connection limit.
//! It forwards nothing anywhere, so it cannot be used as a proxy.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::health::SharedHealth;
use crate::metrics::{Metrics, ResultLabel};

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Concurrent connections; more are closed at once.
    pub max_connections: usize,
    /// Time allowed to send the request headers.
    pub header_read_timeout: Duration,
    /// Total lifetime of a connection.
    pub connection_deadline: Duration,
    /// Largest request head accepted (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(15),
            max_header_bytes: 8192,
        }
    }
}

/// A route table: method and path in, status, body and content type out.
pub trait Routes: Send + Sync + 'static {
    /// Answers one request.
    fn answer(&self, method: &Method, path: &str) -> (StatusCode, String, &'static str);
}

fn response(
    method: &Method,
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// Serves `routes` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, limits: Limits, routes: Arc<dyn Routes>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, body, ctype) = routes.answer(req.method(), req.uri().path());
                let resp = response(req.method(), status, body, ctype);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_deadline, conn).await;
            drop(permit);
        });
    }
}

/// `/healthz` for Marathon's MESOS_HTTP check, answered from the agent's state.
#[derive(Debug)]
pub struct HealthRoutes {
    /// The state the verdict comes from.
    pub health: Arc<SharedHealth>,
    /// Where results and latency are counted.
    pub metrics: Arc<Metrics>,
}

impl Routes for HealthRoutes {
    fn answer(&self, method: &Method, path: &str) -> (StatusCode, String, &'static str) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if path != "/healthz" {
            return (StatusCode::NOT_FOUND, "not found\n".into(), TEXT);
        }
        if method != Method::GET && method != Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
                TEXT,
            );
        }
        let started = Instant::now();
        let verdict = self.health.verdict();
        let (status, body, result) = match verdict {
            Ok(()) => (StatusCode::OK, "ok\n".to_string(), "ok"),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}\n"),
                "fail",
            ),
        };
        self.metrics
            .health_checks
            .get_or_create(&ResultLabel { result })
            .inc();
        self.metrics
            .health_check_seconds
            .observe(started.elapsed().as_secs_f64());
        (status, body, TEXT)
    }
}

/// `/metrics` in Prometheus text format.
#[derive(Debug)]
pub struct MetricsRoutes {
    /// The metrics to encode.
    pub metrics: Arc<Metrics>,
}

impl Routes for MetricsRoutes {
    fn answer(&self, method: &Method, path: &str) -> (StatusCode, String, &'static str) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if path != "/metrics" {
            return (StatusCode::NOT_FOUND, "not found\n".into(), TEXT);
        }
        if method != Method::GET && method != Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
                TEXT,
            );
        }
        (
            StatusCode::OK,
            self.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    }
}
