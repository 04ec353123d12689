//! Structured logs through `tracing`: one line per event, text or JSON, to stderr (the task's
//! sandbox log under Mesos). Logging never blocks the agent: lines go through a bounded queue to
//! a writer thread, and when the queue is full (a stuck log reader, a stderr pipe nobody reads)
//! lines are dropped and counted ([`dropped_lines`], exported as `krw_log_lines_dropped_total`).

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Lines held in memory while stderr is not being read; more are dropped.
pub const QUEUE_LINES: usize = 1024;

enum Msg {
    Line(Vec<u8>),
    Flushed(SyncSender<()>),
}

static QUEUE: OnceLock<Option<SyncSender<Msg>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue to the writer thread, started on first use; `None` if the thread could not start.
fn queue() -> Option<&'static SyncSender<Msg>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_lines(rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

fn write_lines(rx: Receiver<Msg>) {
    let stderr = std::io::stderr();
    for msg in rx {
        match msg {
            Msg::Line(bytes) => {
                let _ = stderr.lock().write_all(&bytes);
            }
            Msg::Flushed(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Queues `bytes` (one or more whole lines) for stderr without waiting; drops and counts them
/// when the queue is full. Without a writer thread, writes directly.
fn send(bytes: Vec<u8>) {
    match queue() {
        Some(tx) => match tx.try_send(Msg::Line(bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        },
        None => {
            let _ = std::io::stderr().write_all(&bytes);
        }
    }
}

/// Lines dropped so far because stderr was not read fast enough.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes one plain line (a newline is added) to stderr through the same queue as the logs.
pub fn line(text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    send(bytes);
}

/// Waits up to `timeout` for the queued lines to reach stderr (call before exiting); gives up
/// when stderr does not take them in time.
pub fn flush(timeout: Duration) {
    let Some(tx) = queue() else {
        return;
    };
    let end = Instant::now() + timeout;
    let (ack_tx, ack_rx) = mpsc::sync_channel(1);
    let mut msg = Msg::Flushed(ack_tx);
    loop {
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < end => {
                msg = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = ack_rx.recv_timeout(end.saturating_duration_since(Instant::now()));
}

/// The writer given to `tracing`: each formatted event arrives in one `write` call.
struct QueueWriter;

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber. An unparsable filter falls back to `info` with a warning.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(|| QueueWriter)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    if let Some(e) = bad_filter {
        tracing::warn!(filter, error = %e, "log filter not understood; using info");
    }
}
