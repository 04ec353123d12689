//! Benchmarks of the agent (issue 2): figures printed against their targets, never asserted.
//!
//! ```text
//! cargo bench --bench agent
//! ```
//!
//! Without `--bench` (e.g. under `cargo test --all-targets`) it only prints a note and exits.
//! Everything runs on 127.0.0.1 with ephemeral ports, against the fake kubelet (the test double
//! in `tests/doubles/fake-kubelet`). The double must be built in the same profile as this bench
//! (`target/release` for `cargo bench`); the bench runs `cargo build --release -p fake-kubelet`
//! itself before measuring (a no-op when it is up to date). Set `KRW_BENCH_NO_BUILD=1` to skip
//! that step and use the binary already there. Method and recorded results: BENCHMARKS.md.
//!
//! 1. Agent RSS: VmRSS and VmHWM of the agent process alone, after it has served the healthy
//!    `/healthz` series and idled.
//! 2. `/healthz` latency through the agent vs a direct call to the fake kubelet's own healthz in
//!    the same run (alternating requests), and through the agent while kubelet hangs.
//! 3. Idle wakeups: voluntary + involuntary context switches of all the agent's threads over an
//!    idle window, per second, at the default probe interval (5 s); and, to separate the probe's
//!    share, an agent whose probe interval is one hour.
//! 4. `run` → kubelet exec latency, and `run` → first 200 on `/healthz`.
//! 5. `plan` wall time.
//! 6. `/healthz` latency from fresh connections while 1000 local connections are held (idle,
//!    half-sent heads, and heads trickled a byte at a time that reconnect when closed).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/running_agent/mod.rs"]
mod running_agent;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{AGENT, Guard, Scratch, free_port, http, kill_pid, repo, spawn_agent, wait_until};
use running_agent::{Hostile, raise_fd_limit};

const MIB: f64 = 1024.0 * 1024.0;
/// Requests per latency series (after warm-up).
const SERIES: usize = 3000;
const WARMUP: usize = 200;
/// Idle window for the wakeup count.
const IDLE: Duration = Duration::from_secs(10);
const START_RUNS: usize = 10;
const PLAN_RUNS: usize = 20;
/// Connections held against the agent for figure 6, and checks made meanwhile.
const HELD: usize = 1000;
const HELD_CHECKS: usize = 1000;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) does not: then
    // only check that the target builds, as criterion does, instead of a minute of measurements.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/agent.rs: not measuring (run `cargo bench --bench agent`)");
        return;
    }
    let wall = Instant::now();
    let kubelet = fake_kubelet();
    header(&kubelet);
    let mut report = Report::default();

    // Two agents side by side: A with the default probe interval (5 s), which serves the latency
    // series; B probing once an hour, to isolate the idle baseline from the probe's cost.
    let a = Running::start(&kubelet, &[], "A");
    let b = Running::start(&kubelet, &[("KRW_HEALTH_PROBE_INTERVAL", "3600")], "B");
    a.wait_healthy();
    b.wait_healthy();

    // 2. Latency, healthy kubelet: agent and direct alternate request by request.
    let kubelet_port = a.kubelet_healthz_port();
    let (agent_ms, direct_ms) = paired_series(a.port, kubelet_port);
    let agent_l = Latency::of(&agent_ms);
    let direct_l = Latency::of(&direct_ms);
    println!(
        "\n[2] GET /healthz latency, {SERIES} requests each after {WARMUP} warm-up, new TCP connection per request, alternating agent/direct, 0.5 ms apart"
    );
    println!("    {:<36} {}", "direct to fake kubelet healthz", direct_l);
    println!("    {:<36} {}", "through the agent (200 ok)", agent_l);
    report.row(
        "2a /healthz p50 via agent / direct p50",
        agent_l.p50 / direct_l.p50,
        "x",
        1.5,
        format!("{:.3} ms vs {:.3} ms", agent_l.p50, direct_l.p50),
    );
    report.row(
        "2b /healthz p99 via agent",
        agent_l.p99,
        "ms",
        2.0,
        String::new(),
    );

    // 3. Idle wakeups (both agents idle at once; nobody queries them).
    std::thread::sleep(Duration::from_secs(1));
    let before_a = switches(a.pid());
    let before_b = switches(b.pid());
    let t = Instant::now();
    std::thread::sleep(IDLE);
    let secs = t.elapsed().as_secs_f64();
    let after_a = switches(a.pid());
    let after_b = switches(b.pid());
    let rate_a = delta(&before_a, &after_a) as f64 / secs;
    let rate_b = delta(&before_b, &after_b) as f64 / secs;
    println!("\n[3] idle context switches (voluntary + involuntary, all threads) over {secs:.1} s");
    print_threads("A, probe every 5 s (default)", &before_a, &after_a, secs);
    println!(
        "      = {:.1} switches per probe ({:.0} probes in the window)",
        delta(&before_a, &after_a) as f64 / (secs / 2.0),
        secs / 2.0
    );
    print_threads("B, probe every 3600 s", &before_b, &after_b, secs);
    report.row(
        "3 idle wakeups/s, default probe interval 5 s",
        rate_a,
        "/s",
        1.0,
        format!("probe every 1 h: {rate_b:.2}/s"),
    );

    // 1. RSS of the agent alone, after serving and idling.
    let mem_a = memory(a.pid());
    let mem_b = memory(b.pid());
    drop(b);
    println!("\n[1] agent memory (agent process only)");
    println!(
        "    A after {} /healthz requests and {secs:.0} s idle: {mem_a}",
        SERIES + WARMUP
    );
    println!("    B (same uptime, served only its readiness polls): {mem_b}");
    println!(
        "    RssFile = clean page-cache pages of the agent binary and libc mapped into the process; {:.1} resident pages per minor fault (fault-around maps neighbours)",
        (mem_a.rss / 4096.0) / mem_a.minflt.max(1) as f64
    );
    report.row(
        "1a agent VmRSS (steady)",
        mem_a.rss / MIB,
        "MiB",
        8.0,
        format!(
            "anon {:.2} MiB + file-backed {:.2} MiB",
            mem_a.anon / MIB,
            mem_a.file / MIB
        ),
    );
    report.row(
        "1b agent VmHWM (peak)",
        mem_a.hwm / MIB,
        "MiB",
        8.0,
        String::new(),
    );
    drop(a);

    // 2c. While kubelet hangs: the agent must answer 503 from its cached state.
    let h = Running::start(&kubelet, &[("FAKE_KUBELET_FAULT", "hang")], "H");
    let ready = wait_until(Duration::from_secs(15), || {
        http("GET", h.port, "/healthz")
            .is_some_and(|(code, body)| code == 503 && body.contains("no answer within"))
    });
    assert!(
        ready,
        "agent never reported the hanging kubelet; log:\n{}",
        h.log()
    );
    let (hang_ms, codes, hang_secs) = series(h.port, Duration::from_millis(1));
    let non_503 = codes.iter().filter(|c| **c != 503).count();
    let hang_l = Latency::of(&hang_ms);
    println!(
        "\n[2c] GET /healthz through the agent while kubelet's healthz hangs (probe timeout 1 s every 5 s), {SERIES} requests 1 ms apart over {hang_secs:.1} s"
    );
    println!("    {:<36} {}", "through the agent (503)", hang_l);
    if non_503 > 0 {
        println!("    WARNING: {non_503} answers were not 503");
    }
    report.row(
        "2c /healthz p99 via agent, kubelet hangs",
        hang_l.p99,
        "ms",
        2.0,
        format!(
            "p50 {:.3} ms = {:.2}x direct p50 of the healthy run",
            hang_l.p50,
            hang_l.p50 / direct_l.p50
        ),
    );
    drop(h);

    // 6. Checks from fresh connections while 1000 local connections are held.
    let fd_limit = raise_fd_limit();
    let s = Running::start(&kubelet, &[], "S");
    s.wait_healthy();
    let hostile = Hostile::hold(s.port, HELD);
    let mut held_ms = Vec::with_capacity(HELD_CHECKS);
    let mut not_200 = 0;
    let mut buf = Vec::with_capacity(512);
    let t = Instant::now();
    for _ in 0..HELD_CHECKS {
        let (ms, code) = timed_get(s.port, &mut buf);
        held_ms.push(ms);
        not_200 += usize::from(code != 200);
        std::thread::sleep(Duration::from_millis(5));
    }
    let held_secs = t.elapsed().as_secs_f64();
    drop(hostile);
    let held_l = Latency::of(&held_ms);
    let over_100 = held_ms.iter().filter(|ms| **ms > 100.0).count();
    println!(
        "\n[6] GET /healthz from fresh connections while {HELD} local connections are held (1/3 idle, 1/3 half-sent head, 1/3 trickling a byte per 100 ms and reconnecting when shed); {HELD_CHECKS} checks 5 ms apart over {held_secs:.1} s; bench open-file limit {fd_limit}"
    );
    println!("    {:<36} {}", "through the agent", held_l);
    println!("    answers not 200: {not_200}; slower than 100 ms: {over_100}");
    report.row(
        "6 /healthz p99, 1000 connections held",
        held_l.p99,
        "ms",
        100.0,
        format!(
            "max {:.3} ms, {over_100} over 100 ms, {not_200} not 200",
            held_l.max
        ),
    );
    drop(s);

    // 4. Start latency.
    let mut exec_ms = Vec::new();
    let mut ok_ms = Vec::new();
    let mut scan_ms = Vec::new();
    for _ in 0..START_RUNS {
        let (exec, first_ok, scan) = start_once(&kubelet);
        exec_ms.push(exec);
        ok_ms.push(first_ok);
        scan_ms.push(scan);
    }
    let exec_l = Latency::of(&exec_ms);
    let ok_l = Latency::of(&ok_ms);
    println!(
        "\n[4] {START_RUNS} starts of `run`: spawn → fake kubelet exec'd (its pid found in /proc with argv[0] = fake-kubelet and the run's --root-dir)"
    );
    println!("    {:<36} {}", "spawn → kubelet exec", exec_l);
    println!(
        "    {:<36} median {:.3} ms (resolution of the exec figure)",
        "one /proc scan",
        median(&mut scan_ms)
    );
    println!("    {:<36} {}", "spawn → first 200 on /healthz", ok_l);
    println!(
        "    (the 200 waits for the verdict's 3 s minimum kubelet uptime, DESIGN §5: a kubelet refusing its reservation answers ok briefly, then exits)"
    );
    report.row(
        "4a run → kubelet exec, median",
        exec_l.p50,
        "ms",
        f64::NAN,
        String::new(),
    );
    report.row(
        "4b run → first 200 /healthz, median",
        ok_l.p50 / 1000.0,
        "s",
        f64::NAN,
        "3 s min uptime rule".into(),
    );

    // 5. plan.
    let mut plan_ms = plan_times();
    let plan_l = Latency::of(&plan_ms);
    println!("\n[5] `plan` wall time, {PLAN_RUNS} runs (process spawn to exit)");
    println!("    {:<36} {}", "plan", plan_l);
    report.row(
        "5 plan wall time, median",
        median(&mut plan_ms),
        "ms",
        f64::NAN,
        String::new(),
    );

    report.print();
    println!(
        "\nbench wall time {:.1} s, load average at the end {}",
        wall.elapsed().as_secs_f64(),
        loadavg()
    );
}

// ---------------------------------------------------------------------------------------------
// The fake kubelet, built in this bench's profile.

/// The fake kubelet next to this bench's profile dir (`target/release` under `cargo bench`),
/// built first with the cargo that runs the bench.
fn fake_kubelet() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/agent-<hash> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("profile dir of the bench executable")
        .to_path_buf();
    let path = profile_dir.join("fake-kubelet");
    if std::env::var_os("KRW_BENCH_NO_BUILD").is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--quiet", "-p", "fake-kubelet", "--manifest-path"])
            .arg(repo().join("Cargo.toml"));
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        eprintln!(
            "building the fake kubelet: {cargo} build -p fake-kubelet ({profile}) — may wait for the shared target dir lock"
        );
        let status = cmd.status().expect("run cargo build -p fake-kubelet");
        assert!(
            status.success(),
            "`cargo build --release -p fake-kubelet` failed ({status}); the bench needs the fake kubelet in {}",
            profile_dir.display()
        );
    }
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release -p fake-kubelet` (or unset KRW_BENCH_NO_BUILD)",
        path.display()
    );
    path
}

fn header(kubelet: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kubelet-resource-wrapper agent benchmarks");
    println!("  agent        {AGENT}");
    println!("  fake kubelet {}", kubelet.display());
    println!(
        "  host         {cpus} CPUs ({cpu}), Linux {}",
        kernel.trim()
    );
    println!(
        "  load average {} (other work on the host skews the tails)",
        loadavg()
    );
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// A running agent with its fake kubelet.

struct Running {
    // Field order: the guard (agent, then kubelet by pid) drops before the scratch dir.
    guard: Guard,
    port: u16,
    scratch: Scratch,
}

fn agent_env(scratch: &Scratch, kubelet: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("KRW_KUBELET", kubelet.display().to_string()),
        ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
        ("KRW_LOCK_FILE", scratch.lock_file().display().to_string()),
        ("KRW_HEALTH_ADDR", format!("127.0.0.1:{port}")),
        ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
        (
            "KRW_LEGACY_FILE",
            scratch.path("services").display().to_string(),
        ),
        ("KRW_CPUS", "1".into()),
        ("KRW_MEM", "512".into()),
        (
            "FAKE_KUBELET_HOST_ROOT",
            scratch.host_root().display().to_string(),
        ),
    ]
}

/// Spawns `run`; the harness sends its log (and kubelet's) to a file, never an unread pipe.
fn spawn_run(scratch: &Scratch, kubelet: &Path, port: u16, extra: &[(&str, &str)]) -> Guard {
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(scratch.kubelet_args());
    let mut env: Vec<(&str, String)> = agent_env(scratch, kubelet, port);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    spawn_agent(&args, &env)
}

impl Running {
    fn start(kubelet: &Path, extra: &[(&str, &str)], name: &str) -> Running {
        let scratch = Scratch::new(4, 8);
        let port = free_port();
        let mut guard = spawn_run(&scratch, kubelet, port, extra);
        let found = wait_until(Duration::from_secs(10), || {
            scratch
                .kubelet_status()
                .and_then(|s| s["pid"].as_i64())
                .is_some()
        });
        let log = guard.stderr_text();
        assert!(
            found,
            "agent {name}: the fake kubelet never started; log:\n{log}"
        );
        let pid = scratch.kubelet_status().expect("status")["pid"]
            .as_i64()
            .expect("pid") as i32;
        guard.extra.push(pid);
        Running {
            guard,
            port,
            scratch,
        }
    }
    fn pid(&self) -> i32 {
        self.guard.pid()
    }
    fn log(&self) -> String {
        self.guard.stderr_text()
    }
    fn kubelet_healthz_port(&self) -> u16 {
        self.scratch.kubelet_status().expect("fake kubelet status")["healthz_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .expect("fake kubelet healthz_port")
    }
    fn wait_healthy(&self) {
        let ok = wait_until(Duration::from_secs(15), || {
            http("GET", self.port, "/healthz").is_some_and(|(code, _)| code == 200)
        });
        assert!(ok, "agent never became healthy; log:\n{}", self.log());
    }
}

// ---------------------------------------------------------------------------------------------
// Latency.

/// One GET /healthz on a new connection; returns (milliseconds from connect to the end of the
/// response, status; 0 if none). Only connect → request → response → EOF is timed.
fn timed_get(port: u16, buf: &mut Vec<u8>) -> (f64, u16) {
    const REQ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    buf.clear();
    let t = Instant::now();
    // A refused, reset or silent connection is status 0, not a panic.
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        if stream.write_all(REQ).is_err() || stream.read_to_end(buf).is_err() {
            buf.clear();
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let status = std::str::from_utf8(&buf[..buf.len().min(12)])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (ms, status)
}

/// Alternating requests to the agent and to kubelet's own healthz; both must answer 200.
fn paired_series(agent: u16, direct: u16) -> (Vec<f64>, Vec<f64>) {
    let mut buf = Vec::with_capacity(512);
    for _ in 0..WARMUP {
        timed_get(agent, &mut buf);
        timed_get(direct, &mut buf);
    }
    let mut a = Vec::with_capacity(SERIES);
    let mut d = Vec::with_capacity(SERIES);
    let mut bad = 0;
    for i in 0..SERIES {
        // Alternate which goes first so neither always follows the other's cache misses.
        let order = if i % 2 == 0 {
            [(agent, true), (direct, false)]
        } else {
            [(direct, false), (agent, true)]
        };
        for (port, is_agent) in order {
            let (ms, code) = timed_get(port, &mut buf);
            bad += usize::from(code != 200);
            if is_agent { a.push(ms) } else { d.push(ms) }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    if bad > 0 {
        println!("    WARNING: {bad} answers in the healthy series were not 200");
    }
    (a, d)
}

/// A series against one port, `gap` apart; returns latencies, statuses and its duration (s).
fn series(port: u16, gap: Duration) -> (Vec<f64>, Vec<u16>, f64) {
    let mut buf = Vec::with_capacity(512);
    for _ in 0..WARMUP {
        timed_get(port, &mut buf);
    }
    let mut ms = Vec::with_capacity(SERIES);
    let mut codes = Vec::with_capacity(SERIES);
    let t = Instant::now();
    for _ in 0..SERIES {
        let (m, c) = timed_get(port, &mut buf);
        ms.push(m);
        codes.push(c);
        std::thread::sleep(gap);
    }
    (ms, codes, t.elapsed().as_secs_f64())
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(samples: &[f64]) -> Latency {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Latency {
            n: v.len(),
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={:<5} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  max {:>8.3} ms",
            self.n, self.p50, self.p90, self.p99, self.max
        )
    }
}

fn median(v: &mut [f64]) -> f64 {
    Latency::of(v).p50
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Memory figures of one process, in bytes, from /proc/PID/status and /proc/PID/stat.
struct Memory {
    rss: f64,
    hwm: f64,
    anon: f64,
    file: f64,
    /// Proportional set size: shared pages divided among the processes mapping them.
    pss: f64,
    threads: u64,
    /// Minor page faults so far: with fault-around, one file fault maps several pages.
    minflt: u64,
}

fn memory(pid: i32) -> Memory {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let kib = |k| status_field(&text, k).unwrap_or(0) as f64 * 1024.0;
    // /proc/PID/stat after "(comm) ": state is the 1st field, minflt the 8th.
    let minflt = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(7)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Memory {
        rss: kib("VmRSS"),
        hwm: kib("VmHWM"),
        anon: kib("RssAnon"),
        file: kib("RssFile") + kib("RssShmem"),
        pss: std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| status_field(&t, "Pss:"))
            .unwrap_or(0) as f64
            * 1024.0,
        threads: status_field(&text, "Threads").unwrap_or(0),
        minflt,
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.2} MiB (RssAnon {:.2} + RssFile {:.2}), VmHWM {:.2} MiB, Pss {:.2} MiB, {} threads, {} minor faults",
            self.rss / MIB,
            self.anon / MIB,
            self.file / MIB,
            self.hwm / MIB,
            self.pss / MIB,
            self.threads,
            self.minflt
        )
    }
}

/// One thread's context switch counters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Switches {
    tid: i32,
    name: String,
    voluntary: u64,
    involuntary: u64,
}

/// Per thread of `pid`: its context switch counters.
fn switches(pid: i32) -> Vec<Switches> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push(Switches {
            tid,
            name,
            voluntary: status_field(&text, "voluntary_ctxt_switches").unwrap_or(0),
            involuntary: status_field(&text, "nonvoluntary_ctxt_switches").unwrap_or(0),
        });
    }
    out.sort();
    out
}

/// Per thread in `after`: (thread, voluntary, involuntary) since `before` (threads born in
/// between count from zero).
fn thread_deltas<'a>(
    before: &'a [Switches],
    after: &'a [Switches],
) -> impl Iterator<Item = (&'a Switches, u64, u64)> {
    after.iter().map(move |a| {
        let b = before.iter().find(|b| b.tid == a.tid);
        (
            a,
            a.voluntary.saturating_sub(b.map_or(0, |b| b.voluntary)),
            a.involuntary.saturating_sub(b.map_or(0, |b| b.involuntary)),
        )
    })
}

fn delta(before: &[Switches], after: &[Switches]) -> u64 {
    thread_deltas(before, after).map(|(_, v, i)| v + i).sum()
}

fn print_threads(label: &str, before: &[Switches], after: &[Switches], secs: f64) {
    let total = delta(before, after);
    println!(
        "    agent {label}: {total} switches = {:.2}/s",
        total as f64 / secs
    );
    for (t, v, i) in thread_deltas(before, after) {
        println!(
            "      thread {:<7} {:<16} voluntary {v:>4}  involuntary {i:>4}  ({:.2}/s)",
            t.tid,
            t.name,
            (v + i) as f64 / secs
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Start latency.

/// The pid of the exec'd fake kubelet of this run: argv[0] is the fake kubelet (a forked child
/// that has not exec'd yet still shows the agent's argv) and the argv holds the unique root dir.
fn find_kubelet(kubelet: &[u8], root_flag: &[u8]) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmd.split(|b| *b == 0);
        if args.next() == Some(kubelet) && args.any(|a| a == root_flag) {
            return Some(pid);
        }
    }
    None
}

/// One `run`: (ms to the kubelet's exec, ms to the first 200, ms per /proc scan).
fn start_once(kubelet: &Path) -> (f64, f64, f64) {
    let scratch = Scratch::new(4, 8);
    let port = free_port();
    let root_flag = format!("--root-dir={}", scratch.path("kubelet").display());
    let kubelet_argv0 = kubelet.display().to_string();
    let t0 = Instant::now();
    let mut guard = spawn_run(&scratch, kubelet, port, &[]);
    let mut scans = 0u32;
    let scan_start = Instant::now();
    let pid = loop {
        scans += 1;
        if let Some(pid) = find_kubelet(kubelet_argv0.as_bytes(), root_flag.as_bytes()) {
            break pid;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            panic!(
                "the fake kubelet never started; log:\n{}",
                guard.stderr_text()
            );
        }
    };
    let exec_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let scan_ms = scan_start.elapsed().as_secs_f64() * 1000.0 / f64::from(scans);
    guard.extra.push(pid);
    let ok = wait_until_fast(Duration::from_secs(15), || {
        http("GET", port, "/healthz").is_some_and(|(code, _)| code == 200)
    });
    assert!(
        ok,
        "agent never became healthy; log:\n{}",
        guard.stderr_text()
    );
    let ok_ms = t0.elapsed().as_secs_f64() * 1000.0;
    drop(guard);
    kill_pid(pid, libc::SIGKILL);
    (exec_ms, ok_ms, scan_ms)
}

/// `wait_until` polling every 5 ms.
fn wait_until_fast(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// plan.

fn plan_times() -> Vec<f64> {
    let scratch = Scratch::new(4, 8);
    let mut out = Vec::with_capacity(PLAN_RUNS);
    for i in 0..=PLAN_RUNS {
        let t = Instant::now();
        let output = Command::new(AGENT)
            .arg("plan")
            .arg("--")
            .args(scratch.kubelet_args())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KRW_HOST_ROOT", scratch.host_root())
            .env("KRW_LEGACY_FILE", scratch.path("services"))
            .env("KRW_CPUS", "1")
            .env("KRW_MEM", "512")
            .stdin(Stdio::null())
            .output()
            .expect("run plan");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(
            output.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The first run warms the page cache; it is not counted.
        if i > 0 {
            out.push(ms);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The summary.

#[derive(Default)]
struct Report {
    rows: Vec<(String, f64, &'static str, f64, String)>,
}

impl Report {
    /// A figure with its target (`NaN`: reported, no target).
    fn row(&mut self, what: &str, value: f64, unit: &'static str, target: f64, note: String) {
        self.rows
            .push((what.to_string(), value, unit, target, note));
    }
    fn print(&self) {
        println!("\nSUMMARY");
        println!(
            "  {:<44} {:>10} {:<4} {:>9}  {:<6} note",
            "figure", "value", "", "target", "result"
        );
        let mut misses = 0;
        for (what, value, unit, target, note) in &self.rows {
            let (target_text, verdict) = if target.is_nan() {
                ("-".to_string(), "info")
            } else if value <= target {
                (format!("≤ {target}"), "PASS")
            } else {
                misses += 1;
                (format!("≤ {target}"), "MISS")
            };
            println!("  {what:<44} {value:>10.3} {unit:<4} {target_text:>9}  {verdict:<6} {note}");
        }
        println!(
            "  {} of {} targets met",
            self.rows.iter().filter(|r| !r.3.is_nan()).count() - misses,
            self.rows.iter().filter(|r| !r.3.is_nan()).count()
        );
    }
}
