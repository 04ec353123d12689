//! A hostile host against the agent's control path (issue 8, findings 1 and 2): local
//! connections held open idle, half-sent or trickled byte by byte must not starve Marathon's
//! check, and a stderr that nobody reads must not freeze `/healthz` or the task kill.
//! Speed figures belong to `cargo bench --bench agent`; these deadlines are generous.

mod common;
mod running_agent;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::http;
use running_agent::{Hostile, RunningAgent, Stderr, get_raw, raise_fd_limit};

const HELD: usize = 1000;
const CHECKS: usize = 100;
fn metric(port: u16, series: &str) -> Option<f64> {
    let raw = get_raw(port, "/metrics", "");
    raw.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Holds [`HELD`] connections against the agent, makes [`CHECKS`] checks meanwhile and asserts
/// every one was answered 200, the sheds were counted and logged once per interval at most.
fn checks_survive_held_connections(agent: &RunningAgent) {
    agent.wait_healthy();
    let hostile = Hostile::hold(agent.health_port, HELD);
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..CHECKS {
        // Mesos' curl: a fresh connection, the whole request at once.
        let answer = get_raw(agent.health_port, "/healthz", "User-Agent: curl/8\r\n");
        if !answer.starts_with("HTTP/1.1 200") {
            failures.push((i, answer));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    drop(hostile);
    assert!(
        failures.is_empty(),
        "{} of {CHECKS} checks not answered 200 under {HELD} held connections, e.g. {:?}\nlog:\n{}",
        failures.len(),
        failures.first(),
        agent.log()
    );
    let shed = metric(
        agent.metrics_port,
        "krw_http_connections_shed_total{server=\"healthz\",reason=\"capacity\"}",
    );
    assert!(shed.is_some_and(|n| n > 0.0), "shed count {shed:?}");
    // Logged once per 10 s interval at most, however many were shed.
    let log = agent.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("connections closed unanswered"))
        .count();
    let allowed = 2 + elapsed.as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&lines),
        "{lines} shed log lines in {elapsed:?} (allowed 1..={allowed}):\n{log}"
    );
}

#[test]
fn checks_are_answered_while_a_thousand_connections_are_held() {
    let limit = raise_fd_limit();
    assert!(
        limit > (HELD as u64) * 2 + 200,
        "open-file limit {limit} too low for this test"
    );
    checks_survive_held_connections(&RunningAgent::start(&[], Stderr::File));
}

#[test]
fn checks_are_answered_with_few_descriptors_while_connections_are_held() {
    raise_fd_limit();
    // 128 descriptors: the agent keeps each server to a quarter of them and sheds the rest.
    checks_survive_held_connections(&RunningAgent::start_with(
        &[],
        Stderr::File,
        Some((128, 128)),
    ));
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let agent = RunningAgent::start_with(&[], Stderr::File, Some((256, 4096)));
    agent.wait_healthy();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.guard.pid()))
        .expect("agent limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect())
        .unwrap_or_default();
    assert_eq!(open_files, ["4096", "4096"], "{limits}");
    assert!(
        agent.log().contains("raised the open-file limit"),
        "{}",
        agent.log()
    );
}

/// A pipe whose buffer is already full and that nobody will read: the write end (blocking, as
/// a task's stderr is) and the read end, kept open so writes block instead of failing.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let w = write.as_raw_fd();
    // SAFETY: fcntl on a descriptor owned here.
    unsafe {
        let flags = libc::fcntl(w, libc::F_GETFL);
        libc::fcntl(w, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let chunk = [b'x'; 4096];
        while libc::write(w, chunk.as_ptr().cast(), chunk.len()) > 0 {}
        libc::fcntl(w, libc::F_SETFL, flags);
    }
    (read, write)
}

#[test]
fn a_stderr_nobody_reads_blocks_neither_health_nor_the_task_kill() {
    let (_unread, write_end) = full_pipe();
    let drain_timeout = 3u64;
    let mut agent = RunningAgent::start(
        &[
            ("KRW_LOG_LEVEL", "debug"),
            ("KRW_DRAIN_TIMEOUT", "3"),
            ("KRW_STOP_TIMEOUT", "1"),
        ],
        Stderr::Fd(write_end),
    );
    agent.wait_healthy();
    // Keep the agent logging (debug) for a while: still answering every time.
    for _ in 0..20 {
        let answer = http("GET", agent.health_port, "/healthz");
        assert_eq!(answer.map(|a| a.0), Some(200));
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped = metric(agent.metrics_port, "krw_log_lines_dropped_total");
    assert!(dropped.is_some(), "no dropped-lines metric");
    let started = Instant::now();
    agent.guard.signal(libc::SIGTERM);
    let code = agent
        .guard
        .wait_exit(Duration::from_secs(drain_timeout + 10));
    let took = started.elapsed();
    assert_eq!(code, Some(Some(0)), "exit after SIGTERM ({took:?})");
    assert!(
        took <= Duration::from_secs(drain_timeout + 3),
        "SIGTERM took {took:?} with --drain-timeout {drain_timeout}s"
    );
}
