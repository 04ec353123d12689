//! A deliberately small HTTP/1.1 server for the health and metrics endpoints: fixed routes, one
//! request per connection, bounded request head, a short head timeout and a connection budget
//! that sheds the oldest idle or half-sent connection to make room for a new one, so nothing a
//! local user can hold open starves Marathon's check. It forwards nothing anywhere, so it cannot
//! be used as a proxy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::health::SharedHealth;
use crate::metrics::{Metrics, ResultLabel, ShedLabel};

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections tracked at once; a new one beyond it sheds the oldest idle one.
    pub max_connections: usize,
    /// Time allowed to send the whole request head.
    pub header_read_timeout: Duration,
    /// Total lifetime of a connection.
    pub connection_deadline: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Shed connections are logged in one line at most this often.
    pub shed_log_interval: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(2),
            connection_deadline: Duration::from_secs(5),
            max_header_bytes: 8192,
            shed_log_interval: Duration::from_secs(10),
        }
    }
}

/// Why a connection was closed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The oldest idle connection, closed to make room for a new one.
    Capacity,
    /// The request head did not arrive within the head timeout.
    HeadTimeout,
    /// `accept` ran out of file descriptors; the oldest connection was closed.
    Descriptors,
}

impl Shed {
    /// Every reason, for metric labels that exist from the start.
    pub const ALL: [Shed; 3] = [Shed::Capacity, Shed::HeadTimeout, Shed::Descriptors];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Shed::Capacity => "capacity",
            Shed::HeadTimeout => "head_timeout",
            Shed::Descriptors => "descriptors",
        }
    }
}

/// The parts of a request the routes look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// `GET`, `HEAD`, …
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The `Accept` header, if sent.
    pub accept: Option<&'a str>,
}

/// What a route answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (not sent for HEAD).
    pub body: String,
    /// `Content-Type`.
    pub content_type: &'static str,
}

/// A route table: request head in, answer out.
pub trait Routes: Send + Sync + 'static {
    /// Answers one request.
    fn answer(&self, request: &RequestHead<'_>) -> Answer;
    /// Counts one connection closed without an answer.
    fn shed(&self, reason: Shed);
}

/// Serves `routes` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, limits: Limits, routes: Arc<dyn Routes>) {
    let budget = limits.max_connections.min(fd_budget()).max(1);
    let server = Arc::new(Server {
        limits,
        routes,
        tracked: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
        log: ShedLog::new(limits.shed_log_interval),
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                server.admit(stream, budget);
                // Let the new connection's task read its head before the next accept: a
                // well-formed check is answered at once instead of aging among a flood.
                tokio::task::yield_now().await;
            }
            Err(e) if out_of_descriptors(&e) => {
                // Free a descriptor by closing the oldest connection (its task drops the socket
                // once this loop yields), then accept again.
                if server.shed_oldest(Shed::Descriptors) {
                    tokio::task::yield_now().await;
                } else {
                    server.log.note_error(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(e) => {
                server.log.note_error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One connection task, known to the accept loop so it can be shed.
struct Tracked {
    abort: AbortHandle,
    /// True while the request is answered (not idle, not half-sent).
    answering: Arc<AtomicBool>,
}

struct Server {
    limits: Limits,
    routes: Arc<dyn Routes>,
    /// By accept order: the first entry is the oldest connection.
    tracked: Mutex<BTreeMap<u64, Tracked>>,
    next_id: AtomicU64,
    log: ShedLog,
}

/// Removes a connection from the table when its task ends, however it ends.
struct Untrack {
    server: Arc<Server>,
    id: u64,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        if let Ok(mut tracked) = self.server.tracked.lock() {
            tracked.remove(&self.id);
        }
    }
}

impl Server {
    fn admit(self: &Arc<Self>, stream: TcpStream, budget: usize) {
        let full = self.tracked.lock().map_or(true, |t| t.len() >= budget);
        if full && !self.shed_oldest(Shed::Capacity) {
            // Nothing could be shed (the table is unusable): refuse the new connection.
            self.shed(Shed::Capacity);
            drop(stream);
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let answering = Arc::new(AtomicBool::new(false));
        let Ok(mut tracked) = self.tracked.lock() else {
            return;
        };
        // Spawned under the lock, so the task cannot untrack itself before it is tracked.
        let untrack = Untrack {
            server: self.clone(),
            id,
        };
        let flag = answering.clone();
        let task = tokio::spawn(async move {
            let server = untrack.server.clone();
            let limits = server.limits;
            let _ = tokio::time::timeout(limits.connection_deadline, server.handle(stream, &flag))
                .await;
            drop(untrack);
        });
        tracked.insert(
            id,
            Tracked {
                abort: task.abort_handle(),
                answering,
            },
        );
    }

    /// Closes the oldest connection that is not being answered (else the oldest of all).
    /// False if there was none.
    fn shed_oldest(&self, reason: Shed) -> bool {
        let victim = {
            let Ok(mut tracked) = self.tracked.lock() else {
                return false;
            };
            let id = tracked
                .iter()
                .find(|(_, t)| !t.answering.load(Ordering::Relaxed))
                .or_else(|| tracked.iter().next())
                .map(|(id, _)| *id);
            id.and_then(|id| tracked.remove(&id))
        };
        match victim {
            Some(t) => {
                t.abort.abort();
                self.shed(reason);
                true
            }
            None => false,
        }
    }

    fn shed(&self, reason: Shed) {
        self.routes.shed(reason);
        self.log.note(reason);
    }

    async fn handle(&self, mut stream: TcpStream, answering: &AtomicBool) {
        let head = tokio::time::timeout(
            self.limits.header_read_timeout,
            read_head(&mut stream, self.limits.max_header_bytes),
        )
        .await;
        let buf = match head {
            Err(_) => {
                self.shed(Shed::HeadTimeout);
                return;
            }
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::TooLarge)) => {
                let answer = plain(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "head too large",
                );
                if respond(&mut stream, answer, false).await {
                    linger(&mut stream).await;
                }
                return;
            }
            Ok(Ok(buf)) => buf,
        };
        answering.store(true, Ordering::Relaxed);
        let (answer, is_head) = match parse(&buf) {
            Some(request) => (self.routes.answer(&request), request.method == "HEAD"),
            None => (plain(StatusCode::BAD_REQUEST, "bad request"), false),
        };
        let written = respond(&mut stream, answer, is_head).await;
        answering.store(false, Ordering::Relaxed);
        if written {
            linger(&mut stream).await;
        }
    }
}

enum HeadError {
    /// The peer closed (or reset) before a full head.
    Closed,
    /// The head exceeds the limit.
    TooLarge,
}

/// Reads until the blank line that ends the request head; returns the bytes read.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(512);
    loop {
        let searched_to = buf.len().saturating_sub(3);
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
        if buf[searched_to..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The request line and the `Accept` header; `None` for anything that is not an HTTP/1.x head.
fn parse(buf: &[u8]) -> Option<RequestHead<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let method = request.method?;
    let target = request.path?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let accept = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("accept"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    Some(RequestHead {
        method,
        path,
        accept,
    })
}

/// Writes the answer and half-closes; false if the client is gone.
async fn respond(stream: &mut TcpStream, answer: Answer, is_head: bool) -> bool {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status.as_u16(),
        answer.status.canonical_reason().unwrap_or(""),
        answer.content_type,
        answer.body.len()
    );
    if answer.status == StatusCode::METHOD_NOT_ALLOWED {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !is_head {
        out.push_str(&answer.body);
    }
    stream.write_all(out.as_bytes()).await.is_ok() && stream.shutdown().await.is_ok()
}

/// Discards what the client still sends, briefly, before closing: closing with unread data
/// would reset the connection and could destroy the answer before a client that sent a body
/// has read it.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Counts shed connections and logs them in one line per interval at most, however many.
struct ShedLog {
    interval: Duration,
    pending: [AtomicU64; 3],
    errors: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl ShedLog {
    fn new(interval: Duration) -> ShedLog {
        ShedLog {
            interval,
            pending: Default::default(),
            errors: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    fn note(&self, reason: Shed) {
        let slot = Shed::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.pending[slot].fetch_add(1, Ordering::Relaxed);
        self.flush(None);
    }

    fn note_error(&self, e: &std::io::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.flush(Some(e));
    }

    /// Logs what accumulated if the interval since the last line has passed.
    fn flush(&self, error: Option<&std::io::Error>) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.interval) {
            return;
        }
        *last = Some(now);
        let [capacity, head_timeout, descriptors] =
            [0, 1, 2].map(|i| self.pending[i].swap(0, Ordering::Relaxed));
        let accept_errors = self.errors.swap(0, Ordering::Relaxed);
        let interval_s = self.interval.as_secs();
        let error = error.map(ToString::to_string);
        tracing::warn!(
            capacity,
            head_timeout,
            descriptors,
            accept_errors,
            last_accept_error = error.as_deref().unwrap_or(""),
            interval_s,
            "connections closed unanswered or accept failed, summed since the last such line (capacity: oldest idle shed for room; head_timeout: head too slow; descriptors: out of file descriptors)"
        );
    }
}

/// Connections one server may hold, given the descriptor limit: the soft `RLIMIT_NOFILE` is
/// raised to the hard limit once, and a server takes at most a quarter of it.
fn fd_budget() -> usize {
    static RAISE: Once = Once::new();
    RAISE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                let before = lim.rlim_cur;
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    tracing::info!(
                        from = before,
                        to = lim.rlim_max,
                        "raised the open-file limit"
                    );
                }
            }
        }
    });
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 4).unwrap_or(usize::MAX)
}

const TEXT: &str = "text/plain; charset=utf-8";

fn plain(status: StatusCode, text: &str) -> Answer {
    Answer {
        status,
        body: format!("{text}\n"),
        content_type: TEXT,
    }
}

/// 404 for any path but `served`, 405 for any method but GET/HEAD; `None` when the route matches.
fn refuse(request: &RequestHead<'_>, served: &str) -> Option<Answer> {
    if request.path != served {
        return Some(plain(StatusCode::NOT_FOUND, "not found"));
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Some(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    None
}

fn count_shed(metrics: &Metrics, server: &'static str, reason: Shed) {
    metrics
        .http_connections_shed
        .get_or_create(&ShedLabel {
            server,
            reason: reason.label(),
        })
        .inc();
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
    fn answer(&self, request: &RequestHead<'_>) -> Answer {
        if let Some(refused) = refuse(request, "/healthz") {
            return refused;
        }
        let started = Instant::now();
        let (answer, result) = match self.health.verdict() {
            Ok(body) => (plain(StatusCode::OK, &body.to_string()), "ok"),
            Err(reason) => (
                plain(StatusCode::SERVICE_UNAVAILABLE, &reason.to_string()),
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
        answer
    }

    fn shed(&self, reason: Shed) {
        count_shed(&self.metrics, "healthz", reason);
    }
}

/// `/metrics`: the classic Prometheus text format (0.0.4), or OpenMetrics 1.0 when the
/// client's `Accept` prefers it.
#[derive(Debug)]
pub struct MetricsRoutes {
    /// The metrics to encode.
    pub metrics: Arc<Metrics>,
}

impl Routes for MetricsRoutes {
    fn answer(&self, request: &RequestHead<'_>) -> Answer {
        if let Some(refused) = refuse(request, "/metrics") {
            return refused;
        }
        let openmetrics = request.accept.is_some_and(prefers_openmetrics);
        let (body, content_type) = if openmetrics {
            (
                self.metrics.encode_openmetrics(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (
                self.metrics.encode_text(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        };
        Answer {
            status: StatusCode::OK,
            body,
            content_type,
        }
    }

    fn shed(&self, reason: Shed) {
        count_shed(&self.metrics, "metrics", reason);
    }
}

/// True when `accept` ranks `application/openmetrics-text` above every other type it accepts
/// (ties go to OpenMetrics, as the client named it explicitly).
pub fn prefers_openmetrics(accept: &str) -> bool {
    let mut best_openmetrics = 0.0f64;
    let mut best_other = 0.0f64;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        if media == "application/openmetrics-text" {
            best_openmetrics = best_openmetrics.max(q);
        } else if !media.is_empty() {
            best_other = best_other.max(q);
        }
    }
    best_openmetrics > 0.0 && best_openmetrics >= best_other
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Ok200 {
        shed: AtomicUsize,
    }
    impl Routes for Ok200 {
        fn answer(&self, request: &RequestHead<'_>) -> Answer {
            refuse(request, "/x").unwrap_or_else(|| plain(StatusCode::OK, "ok"))
        }
        fn shed(&self, _: Shed) {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn start(limits: Limits) -> (u16, Arc<Ok200>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let routes = Arc::new(Ok200::default());
        tokio::spawn(serve(listener, limits, routes.clone()));
        (port, routes)
    }

    /// Sends raw bytes on a blocking socket (off the runtime) and returns what came back.
    async fn exchange(port: u16, request: Vec<u8>) -> String {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(&request);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .await
        .expect("join")
    }

    const GET_X: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_and_methods() {
        let (port, _) = start(Limits::default()).await;
        let get = |req: &str| exchange(port, req.as_bytes().to_vec());
        let ok = get("GET /x?probe=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nok\n"), "{ok:?}");
        assert!(ok.contains("Content-Length: 3\r\n"), "{ok}");
        let http10 = get("GET /x HTTP/1.0\r\n\r\n").await;
        assert!(http10.starts_with("HTTP/1.1 200"), "{http10}");
        assert!(
            get("GET /y HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        // A body the server never reads must not turn the answer into a reset.
        let post = get(&format!(
            "POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{}",
            "a".repeat(5000)
        ))
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let head = get("HEAD /x HTTP/1.1\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head:?}"
        );
        assert!(head.contains("Content-Length: 3\r\n"), "{head}");
        let bad = get("\x16\x03\x01 not http\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_heads_are_refused() {
        let (port, _) = start(Limits::default()).await;
        let big = format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let answer = exchange(port, big.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_heads_time_out_and_are_counted() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (port, routes) = start(limits).await;
        let started = Instant::now();
        // Never finishes the request head; the server must hang up on its own.
        let answer = exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n".to_vec()).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(answer.is_empty(), "{answer}");
        assert_eq!(routes.shed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_connection_sheds_the_oldest_idle_one() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (port, routes) = start(limits).await;
        let mut idle: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The third connection is answered; the oldest idle one is closed for it.
        let third = exchange(port, GET_X.to_vec()).await;
        assert!(third.starts_with("HTTP/1.1 200"), "{third}");
        assert_eq!(routes.shed.load(Ordering::Relaxed), 1);
        let oldest = idle.remove(0);
        oldest
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert_eq!((&oldest).read(&mut buf).ok(), Some(0), "oldest not closed");
    }

    #[test]
    fn accept_negotiation() {
        // Prometheus 2.x scrape Accept header.
        assert!(prefers_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics("text/plain;version=0.0.4"));
        assert!(!prefers_openmetrics(
            "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"
        ));
        assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
        assert!(prefers_openmetrics("application/openmetrics-text"));
    }
}
