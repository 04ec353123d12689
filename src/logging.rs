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

/// A bounded queue of lines to a thread that writes them to `out`.
struct Queue {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl Queue {
    /// Starts the writer thread; `None` if it cannot start.
    fn start(out: impl Write + Send + 'static, capacity: usize) -> Option<Queue> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(rx, out))
            .ok()
            .map(|_| Queue {
                tx,
                dropped: AtomicU64::new(0),
            })
    }

    /// Queues `bytes` without waiting; drops and counts them when the queue is full.
    fn send(&self, bytes: Vec<u8>) {
        if self.tx.try_send(Msg::Line(bytes)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits up to `timeout` for the lines queued so far to be written.
    fn flush(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Flushed(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < end => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        ack_rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

fn write_lines(rx: Receiver<Msg>, mut out: impl Write) {
    for msg in rx {
        match msg {
            Msg::Line(bytes) => {
                let _ = out.write_all(&bytes);
            }
            Msg::Flushed(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

static QUEUE: OnceLock<Option<Queue>> = OnceLock::new();

/// The queue to stderr, started on first use; `None` if its thread could not start.
fn queue() -> Option<&'static Queue> {
    QUEUE
        .get_or_init(|| Queue::start(std::io::stderr(), QUEUE_LINES))
        .as_ref()
}

/// Queues `bytes` (one or more whole lines) for stderr without waiting. Without a writer
/// thread, writes directly.
fn send(bytes: Vec<u8>) {
    match queue() {
        Some(q) => q.send(bytes),
        None => {
            let _ = std::io::stderr().write_all(&bytes);
        }
    }
}

/// Lines dropped so far because stderr was not read fast enough.
pub fn dropped_lines() -> u64 {
    queue().map_or(0, |q| q.dropped.load(Ordering::Relaxed))
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
    if let Some(q) = queue() {
        q.flush(timeout);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer stuck like a pipe nobody reads, until the test lets it go.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_costs_dropped_lines_never_a_blocked_caller() {
        let (release, stuck) = mpsc::channel();
        let q = Queue::start(Stuck(stuck), 8).expect("writer thread");
        let started = Instant::now();
        for i in 0..100 {
            q.send(format!("line {i}\n").into_bytes());
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // One line is in the stuck write, 8 wait in the queue, the rest are dropped.
        let dropped = q.dropped.load(Ordering::Relaxed);
        assert!((91..=92).contains(&dropped), "{dropped}");
        assert!(!q.flush(Duration::from_millis(100)), "flush cannot finish");
        drop(release);
        assert!(q.flush(Duration::from_secs(5)), "flush after release");
    }
}
