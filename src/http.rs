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

const TEXT: &str = "text/plain; charset=utf-8";

/// 404 for any path but `path`, 405 for any method but GET/HEAD; `None` when the route matches.
fn refuse(method: &Method, path: &str, served: &str) -> Option<(StatusCode, String, &'static str)> {
    if path != served {
        return Some((StatusCode::NOT_FOUND, "not found\n".into(), TEXT));
    }
    if method != Method::GET && method != Method::HEAD {
        return Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
            TEXT,
        ));
    }
    None
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
        if let Some(refused) = refuse(method, path, "/healthz") {
            return refused;
        }
        let started = Instant::now();
        let verdict = self.health.verdict();
        let (status, body, result) = match verdict {
            Ok(body) => (StatusCode::OK, format!("{body}\n"), "ok"),
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
        if let Some(refused) = refuse(method, path, "/metrics") {
            return refused;
        }
        (
            StatusCode::OK,
            self.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    struct Ok200;
    impl Routes for Ok200 {
        fn answer(&self, method: &Method, path: &str) -> (StatusCode, String, &'static str) {
            refuse(method, path, "/x").unwrap_or((StatusCode::OK, "ok\n".into(), TEXT))
        }
    }

    async fn start(limits: Limits) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(serve(listener, limits, Arc::new(Ok200)));
        port
    }

    /// Sends raw bytes on a blocking socket (off the runtime) and returns what came back.
    async fn exchange(port: u16, request: Vec<u8>, hold: Duration) -> String {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(&request);
            std::thread::sleep(hold);
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .await
        .expect("join")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_and_methods() {
        let port = start(Limits::default()).await;
        let get = |req: &str| exchange(port, req.as_bytes().to_vec(), Duration::ZERO);
        assert!(
            get("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get("GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        let post =
            get("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );
        let head = get("HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_headers_are_refused() {
        let port = start(Limits::default()).await;
        let big = format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let answer = exchange(port, big.into_bytes(), Duration::ZERO).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_headers_time_out() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let port = start(limits).await;
        let started = std::time::Instant::now();
        // Never finishes the request head; the server must hang up on its own.
        let answer = exchange(
            port,
            b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_are_closed() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let port = start(limits).await;
        // Two idle connections take both permits.
        let idle: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let third = exchange(
            port,
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        assert!(third.is_empty(), "third connection was served: {third}");
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = exchange(
            port,
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    }
}
