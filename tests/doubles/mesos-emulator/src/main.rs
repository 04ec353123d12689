//! `mesos-task-emulator`: a test double that runs one Marathon app the way Mesos' command executor
//! runs a task (environment, sandbox, MESOS_HTTP health checks, killtree kill, terminal state,
//! container destroy) and reports what happens as JSON lines on stdout. See README.md.

mod app;
mod health;
mod javafmt;
mod procfs;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use crate::app::{App, ExecutorContext};
use crate::health::{CheckConfig, Probe, ProbeResult};

#[derive(Parser, Debug)]
#[command(
    name = "mesos-task-emulator",
    about = "Runs a Marathon app like Mesos' command executor runs a task (test double)"
)]
struct Cli {
    /// Marathon app definition (JSON).
    #[arg(long, value_name = "APP.json")]
    app: PathBuf,
    /// Sandbox directory (MESOS_DIRECTORY/MESOS_SANDBOX, the task's cwd). Default: a new temp dir.
    #[arg(long, value_name = "DIR")]
    sandbox: Option<PathBuf>,
    /// Pass the task's stdout/stderr through instead of writing <sandbox>/stdout and /stderr.
    #[arg(long)]
    inherit_stdio: bool,
    /// HOST value (the agent hostname Mesos reports). Default: this machine's hostname.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Agent --executor_environment_variables entry (repeatable).
    #[arg(long = "extra-env", value_name = "K=V")]
    extra_env: Vec<String>,
    /// Task id. Default: <safePath>.instance-<uuid>._app.1
    #[arg(long)]
    task_id: Option<String>,
    #[arg(long, default_value = "5b0d7a4e-6b8c-4f51-9d1e-0c7c2f7c9a11-0000")]
    framework_id: String,
    #[arg(long, default_value = "3f1c2b9e-8d77-4a0e-a3f5-6e2d1c0b9a88-S0")]
    agent_id: String,
    #[arg(long, default_value = "127.0.0.1:5051")]
    agent_endpoint: String,
    /// MESOS_ALLOCATION_ROLE.
    #[arg(long, default_value = "*")]
    role: String,
    /// Override delaySeconds of the health check.
    #[arg(long, value_name = "S")]
    health_delay: Option<f64>,
    /// Override intervalSeconds.
    #[arg(long, value_name = "S")]
    health_interval: Option<f64>,
    /// Override timeoutSeconds.
    #[arg(long, value_name = "S")]
    health_timeout: Option<f64>,
    /// Override gracePeriodSeconds.
    #[arg(long, value_name = "S")]
    health_grace: Option<f64>,
    /// Override maxConsecutiveFailures.
    #[arg(long, value_name = "N")]
    health_max_failures: Option<u32>,
    /// Override the health check port.
    #[arg(long, value_name = "PORT")]
    health_port: Option<u16>,
    /// Kill the task this many seconds after launch (as if Marathon asked).
    #[arg(long, value_name = "S")]
    kill_after: Option<f64>,
    /// Kill grace period (default: taskKillGracePeriodSeconds, else 3).
    #[arg(long, value_name = "S")]
    kill_grace: Option<f64>,
    /// Wait this long between the terminal state and the container destroy: the command
    /// executor exits 1 s after forwarding the terminal update (executor.cpp `reaped`,
    /// `delay(Seconds(1), ..., &Self::selfTerminate)`), and only then does the agent
    /// destroy the container.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    destroy_delay: f64,
    /// Exit with the task's exit code (128+signal if signalled) instead of 0.
    #[arg(long)]
    exit_with_task: bool,
}

pub enum Msg {
    Signal(i32),
    Health(ProbeResult),
    RootExited(ExitStatus),
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn fail(msg: &str) -> ! {
    eprintln!("mesos-task-emulator: {msg}");
    emit(json!({"event": "error", "message": msg}));
    std::process::exit(2);
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Killing {
    started: Instant,
    deadline: Instant,
    escalated: bool,
}

fn main() {
    let cli = Cli::parse();
    let text = fs::read_to_string(&cli.app)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", cli.app.display())));
    let app = App::parse(&text).unwrap_or_else(|e| fail(&e));

    let mut extra_env = Vec::new();
    for kv in &cli.extra_env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => extra_env.push((k.to_string(), v.to_string())),
            _ => fail(&format!("--extra-env wants K=V, got {kv:?}")),
        }
    }

    let task_id = cli
        .task_id
        .clone()
        .unwrap_or_else(|| format!("{}.instance-{}._app.1", app.safe_path(), app::uuid4()));
    let sandbox = match &cli.sandbox {
        Some(d) => {
            fs::create_dir_all(d)
                .unwrap_or_else(|e| fail(&format!("cannot create sandbox {}: {e}", d.display())));
            fs::canonicalize(d).unwrap_or_else(|_| d.clone())
        }
        None => {
            let d = std::env::temp_dir().join(format!("mesos-sandbox-{}", app::uuid4()));
            fs::create_dir_all(&d).unwrap_or_else(|e| fail(&format!("cannot create sandbox: {e}")));
            d
        }
    };
    let sandbox_s = sandbox.to_string_lossy().into_owned();
    let ports = app.assign_ports();
    let grace = cli.kill_grace.or(app.kill_grace).unwrap_or(3.0).max(0.0);
    let cx = ExecutorContext {
        task_id: task_id.clone(),
        framework_id: cli.framework_id.clone(),
        agent_id: cli.agent_id.clone(),
        agent_endpoint: cli.agent_endpoint.clone(),
        sandbox: sandbox_s.clone(),
        host: cli.host.clone().unwrap_or_else(hostname),
        role: cli.role.clone(),
        extra_env,
        kill_policy_grace: app.kill_grace,
        version: app.version.clone().unwrap_or_else(app::iso8601_now),
        ports: ports.clone(),
    };
    let env = app::task_environment(&app, &cx);

    // Health check: at most one Mesos (executor-run) check per app.
    let mesos_checks: Vec<_> = app
        .health_checks
        .iter()
        .filter(|h| h.is_mesos_check())
        .collect();
    if mesos_checks.len() > 1 {
        fail("app has more than one Mesos health check (Marathon rejects this)");
    }
    for h in app.health_checks.iter().filter(|h| !h.is_mesos_check()) {
        eprintln!(
            "mesos-task-emulator: ignoring Marathon-level {} health check (not run by Mesos)",
            h.protocol
        );
    }
    let check = mesos_checks.first().map(|h| {
        let port = cli
            .health_port
            .or(h.port)
            .or_else(|| h.port_index.and_then(|i| ports.get(i).copied()))
            .unwrap_or_else(|| {
                if h.protocol == "COMMAND" {
                    0
                } else {
                    fail("health check needs port or a valid portIndex")
                }
            });
        let host = if h.ipv6 { "[::1]" } else { "127.0.0.1" };
        let probe = match h.protocol.as_str() {
            "MESOS_HTTP" => Probe::Http {
                url: format!("http://{host}:{port}{}", h.path),
            },
            "MESOS_HTTPS" => Probe::Http {
                url: format!("https://{host}:{port}{}", h.path),
            },
            "MESOS_TCP" => Probe::Tcp {
                addr: format!("{host}:{port}")
                    .parse()
                    .expect("valid socket address"),
            },
            _ => Probe::Command {
                command: h
                    .command
                    .clone()
                    .unwrap_or_else(|| fail("COMMAND health check without command.value")),
                env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                cwd: sandbox_s.clone(),
            },
        };
        CheckConfig {
            probe,
            delay: cli.health_delay.unwrap_or(h.delay),
            interval: cli.health_interval.unwrap_or(h.interval),
            timeout: cli.health_timeout.unwrap_or(h.timeout),
            grace: cli.health_grace.unwrap_or(h.grace),
            max_failures: cli.health_max_failures.unwrap_or(h.max_failures),
        }
    });

    // Signals first, so a kill request that races the launch is not lost.
    let (tx, rx) = mpsc::channel::<Msg>();
    {
        let tx = tx.clone();
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
            .unwrap_or_else(|e| fail(&format!("signal setup: {e}")));
        std::thread::spawn(move || {
            for s in signals.forever() {
                if tx.send(Msg::Signal(s)).is_err() {
                    return;
                }
            }
        });
    }

    // Launch: `sh -c <cmd>` or exec args[0] directly; own session; env = exactly `env`.
    let mut cmd = match (&app.cmd, &app.args) {
        (Some(c), _) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg0("sh").arg("-c").arg(c);
            cmd
        }
        (None, Some(a)) => {
            let mut cmd = Command::new(&a[0]);
            cmd.args(&a[1..]);
            cmd
        }
        (None, None) => unreachable!("validated by App::parse"),
    };
    cmd.env_clear()
        .envs(env.iter())
        .current_dir(&sandbox)
        .stdin(Stdio::null());
    if !cli.inherit_stdio {
        let out = File::create(sandbox.join("stdout"))
            .unwrap_or_else(|e| fail(&format!("cannot create sandbox stdout: {e}")));
        let err = File::create(sandbox.join("stderr"))
            .unwrap_or_else(|e| fail(&format!("cannot create sandbox stderr: {e}")));
        cmd.stdout(out).stderr(err);
    }
    // SAFETY: setsid and prctl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Hygiene, not Mesos: if the emulator itself is SIGKILLed, the root task dies too
            // (Mesos would destroy the whole container when its executor dies).
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let launched_at = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            // Mesos reports a task whose command cannot be executed as TASK_FAILED.
            emit(
                json!({"event": "terminal", "state": "TASK_FAILED", "exit_code": null,
                "signal": null, "healthy": null, "seconds_after_kill": null,
                "message": format!("failed to launch: {e}")}),
            );
            emit(json!({"event": "destroyed", "killed_pids": []}));
            std::process::exit(if cli.exit_with_task { 127 } else { 0 });
        }
    };
    let root = child.id() as i32;
    emit(json!({
        "event": "launched", "pid": root, "task_id": task_id, "sandbox": sandbox_s,
        "kill_grace_seconds": grace, "destroy_delay_seconds": cli.destroy_delay, "ports": ports,
        "health_check": check.as_ref().map(|c| json!({
            "probe": c.probe.describe(),
            "delay": c.delay, "interval": c.interval, "timeout": c.timeout,
            "grace": c.grace, "max_consecutive_failures": c.max_failures,
        })),
    }));
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Ok(st) = child.wait() {
                let _ = tx.send(Msg::RootExited(st));
            }
        });
    }
    let stop_checks = Arc::new(AtomicBool::new(false));
    if let Some(c) = &check {
        health::spawn_checker(c.clone(), stop_checks.clone(), tx.clone());
    }
    drop(tx);

    // Health state (health_checker.cpp).
    let mut consecutive_failures: u32 = 0;
    let mut initializing = true;
    let mut last_healthy: Option<bool> = None;
    let mut killed_by_health = false;
    let kill_after = cli
        .kill_after
        .map(|s| launched_at + Duration::from_secs_f64(s.max(0.0)));
    let mut killing: Option<Killing> = None;

    let start_kill = |reason: &str, killing: &mut Option<Killing>| {
        if killing.is_some() {
            // A repeated kill with the same grace period is a no-op.
            return;
        }
        stop_checks.store(true, Ordering::SeqCst);
        emit(json!({"event": "killing", "reason": reason, "grace_seconds": grace}));
        let now = Instant::now();
        procfs::killtree(root, libc::SIGTERM, true, true);
        *killing = Some(Killing {
            started: now,
            deadline: now + Duration::from_secs_f64(grace),
            escalated: false,
        });
    };

    let status = loop {
        let now = Instant::now();
        let next = match &killing {
            Some(k) if !k.escalated => Some(k.deadline),
            Some(_) => None,
            None => kill_after,
        };
        let msg = match next {
            Some(t) => match rx.recv_timeout(t.saturating_duration_since(now)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => fail("internal: event channel closed"),
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => fail("internal: event channel closed"),
            },
        };
        match msg {
            None => match &mut killing {
                None => start_kill("kill_after", &mut killing),
                Some(k) => {
                    k.escalated = true;
                    if procfs::is_alive(root) {
                        emit(json!({"event": "escalated"}));
                        procfs::killtree(root, libc::SIGKILL, true, true);
                    }
                }
            },
            Some(Msg::Signal(_)) => start_kill("signal", &mut killing),
            Some(Msg::RootExited(st)) => break st,
            Some(Msg::Health(r)) => {
                if killing.is_some() {
                    continue; // checks are paused once a kill starts
                }
                let cfg = check.as_ref().expect("health result implies a check");
                let mut in_grace = false;
                let mut kill = false;
                if r.healthy {
                    consecutive_failures = 0;
                    initializing = false;
                } else if initializing
                    && cfg.grace > 0.0
                    && launched_at.elapsed().as_secs_f64() <= cfg.grace
                {
                    in_grace = true;
                } else {
                    consecutive_failures += 1;
                    kill = consecutive_failures >= cfg.max_failures;
                }
                if !in_grace {
                    last_healthy = Some(r.healthy);
                }
                emit(
                    json!({"event": "health", "healthy": r.healthy, "status": r.status,
                    "consecutive_failures": consecutive_failures, "in_grace_period": in_grace,
                    "message": r.message}),
                );
                if kill {
                    killed_by_health = true;
                    start_kill("health_check", &mut killing);
                }
            }
        }
    };
    stop_checks.store(true, Ordering::SeqCst);

    let killed = killing.is_some();
    let state = if killed {
        "TASK_KILLED"
    } else if status.code() == Some(0) {
        "TASK_FINISHED"
    } else {
        "TASK_FAILED"
    };
    let healthy = if killed_by_health {
        Some(false)
    } else {
        last_healthy
    };
    emit(json!({
        "event": "terminal", "state": state, "exit_code": status.code(),
        "signal": status.signal(), "healthy": healthy,
        "seconds_after_kill": killing.as_ref().map(|k| round3(k.started.elapsed().as_secs_f64())),
    }));

    if cli.destroy_delay > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(cli.destroy_delay));
    }
    let killed_pids = procfs::destroy_container(root, &task_id);
    emit(json!({"event": "destroyed", "killed_pids": killed_pids}));

    let code = if cli.exit_with_task {
        match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    } else {
        0
    };
    std::process::exit(code);
}
