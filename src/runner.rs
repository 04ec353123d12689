//! `run` and `standby`: supervise kubelet (DESIGN §4), serve health (§5), and on task kill leave
//! nothing running on resources Mesos is about to re-offer (§6).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::time::sleep;

use crate::backoff::{Decision, RestartPolicy, RestartTracker};
use crate::cli::RunArgs;
use crate::exit::{ExitStatus, Failure};
use crate::health::{HealthState, Phase, SharedHealth, VerdictRules};
use crate::http::{self, HealthRoutes, Limits, MetricsRoutes};
use crate::lock::{self, HostLock, LockError, Role};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::node_watch;
use crate::probe::Prober;
use crate::setup::{self, LeaseMode, NodeSetup};
use crate::spawner::{Child, ExitInfo, Spawner};
use crate::taskkill::{self, KillReport};

/// Runs `future` on a single-threaded runtime (few threads, few wakeups, small RSS).
pub fn block_on<F: Future<Output = Result<(), Failure>>>(future: F) -> Result<(), Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(ExitStatus::Software, format!("cannot start runtime: {e}")))?
        .block_on(future)
}

/// `run`: the Marathon task.
pub fn run(args: RunArgs) -> Result<(), Failure> {
    let setup = setup::prepare(&args.node, LeaseMode::FromSources)?;
    setup::check_kubelet_binary(&setup.kubelet)?;
    setup::check_mount_namespace(&args.node)?;
    block_on(async move {
        let run_lock = lock::try_acquire(&lock::run_lock_path(&args.lock_file), Role::Run)
            .map_err(lock_failure)?;
        let kubelet_lock = take_over_kubelet_lock(&args).await?;
        let mut agent = Agent::new(args, setup, Phase::Starting)?;
        agent.serve_health().await?;
        let _metrics = agent.serve_metrics().await?;
        tracing::info!(
            lease_cpu_millicores = agent.setup.reservation.lease.cpu_millicores,
            lease_memory_bytes = agent.setup.reservation.lease.memory_bytes,
            lease_source = agent.setup.reservation.lease.source.as_str(),
            system_reserved_cpu_millicores = agent.setup.reservation.system_reserved.cpu_millicores,
            system_reserved_memory_bytes = agent.setup.reservation.system_reserved.memory_bytes,
            lock = %kubelet_lock.path().display(),
            "agent started"
        );
        let node_task = match taskkill::api_target(&agent) {
            Ok(target) => {
                tracing::info!(node = %target.node, kubeconfig = %target.kubeconfig.display(), "Kubernetes API access configured");
                let lease = agent.setup.reservation.allocatable;
                Some(tokio::spawn(node_watch::run(
                    target,
                    agent.args.node_check_interval,
                    lease,
                    agent.health.clone(),
                    agent.metrics.clone(),
                )))
            }
            Err(why) => {
                tracing::info!(%why, "no Kubernetes API access: task kill will use the zero-allocatable fallback");
                None
            }
        };
        let stopped = agent.supervise(KubeletMode::Lease, None).await;
        if let Some(task) = node_task {
            task.abort();
        }
        let stopped = stopped?;
        let result = match stopped {
            Stopped::Terminate { child, at } => {
                let report = taskkill::terminate(&mut agent, child, at).await;
                log_kill_report(&report);
                Ok(())
            }
            Stopped::Yield(_) => Err(Failure::new(
                ExitStatus::Software,
                "run was asked to yield the host; only standby yields",
            )),
        };
        drop(kubelet_lock);
        drop(run_lock);
        result
    })
}

/// `standby`: the boot service that keeps kubelet registered with zero allocatable while no
/// `run` holds the host, yields when one arrives and takes the host back when it ends.
pub fn standby(args: RunArgs) -> Result<(), Failure> {
    let setup = setup::prepare(&args.node, LeaseMode::Zero)?;
    setup::check_kubelet_binary(&setup.kubelet)?;
    block_on(async move {
        let run_lock_path = lock::run_lock_path(&args.lock_file);
        let mut agent = Agent::new(args, setup, Phase::Standby)?;
        loop {
            // Keep off the host while a `run` holds it; the kernel drops its lock when it ends.
            while lock::is_held(&run_lock_path).map_err(lock_failure)? {
                if agent.wait_for_signal(Duration::from_secs(1)).await {
                    tracing::info!("standby stopping (no kubelet of ours was running)");
                    return Ok(());
                }
            }
            let kubelet_lock = match lock::try_acquire(&agent.args.lock_file, Role::Standby) {
                Ok(l) => l,
                Err(LockError::Held { holder, .. }) => {
                    tracing::debug!(%holder, "kubelet lock busy; waiting");
                    if agent.wait_for_signal(Duration::from_millis(500)).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(lock_failure(e)),
            };
            if lock::is_held(&run_lock_path).map_err(lock_failure)? {
                continue;
            }
            // The metrics port follows the host: `run` serves it while it holds the host.
            let metrics = agent.serve_metrics().await?;
            tracing::info!("standby holds the host: kubelet runs with zero allocatable");
            agent.metrics.kubelet_zero_allocatable.set(1);
            let watch = YieldWatch {
                run_lock: run_lock_path.clone(),
                poll: Duration::from_secs(2),
            };
            match agent.supervise(KubeletMode::Zero, Some(watch)).await? {
                Stopped::Terminate { child, .. } => {
                    if let Some(mut child) = child {
                        agent.stop_child(&mut child).await;
                    }
                    tracing::info!("standby stopped; kubelet stopped");
                    drop(kubelet_lock);
                    return Ok(());
                }
                Stopped::Yield(child) => {
                    if let Some(mut child) = child {
                        agent.stop_child(&mut child).await;
                    }
                    if let Some(server) = metrics {
                        server.close().await;
                    }
                    drop(kubelet_lock);
                    tracing::info!("yielded the host to run");
                }
            }
        }
    })
}

fn lock_failure(e: LockError) -> Failure {
    Failure::new(e.exit_status(), e.to_string())
}

/// Takes the kubelet lock for `run`; if standby holds it, asks standby to yield (SIGUSR1) and
/// waits for the handover.
async fn take_over_kubelet_lock(args: &RunArgs) -> Result<HostLock, Failure> {
    let deadline = Instant::now() + args.stop_timeout + Duration::from_secs(10);
    let mut asked = false;
    loop {
        match lock::try_acquire(&args.lock_file, Role::Run) {
            Ok(l) => return Ok(l),
            Err(LockError::Held { holder, path }) => {
                if holder.role.as_deref() != Some("standby") {
                    return Err(lock_failure(LockError::Held { holder, path }));
                }
                if !asked {
                    // Signal only a proven standby; otherwise standby still yields when it sees
                    // the run lock held (YieldWatch).
                    match lock::signal_standby(&holder, Signal::SIGUSR1) {
                        Ok(pid) => {
                            tracing::info!(standby_pid = pid, "asking standby to yield the host")
                        }
                        Err(why) => tracing::warn!(%holder, %why, "not signalling the lock holder"),
                    }
                    asked = true;
                }
                if Instant::now() >= deadline {
                    return Err(Failure::new(
                        ExitStatus::CantCreate,
                        format!(
                            "host lock {} is held by {holder}, which did not yield within {:.0}s",
                            path.display(),
                            (args.stop_timeout + Duration::from_secs(10)).as_secs_f64()
                        ),
                    ));
                }
                sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(lock_failure(e)),
        }
    }
}

/// A running `/metrics` server; dropping it closes the listening socket.
pub struct MetricsServer(tokio::task::JoinHandle<()>);

impl MetricsServer {
    /// Stops serving and waits until the listening socket is closed.
    async fn close(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which reservation kubelet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletMode {
    /// Allocatable = lease.
    Lease,
    /// Allocatable = 0 (standby, task-kill window).
    Zero,
}

/// Why supervision stopped.
#[derive(Debug)]
pub enum Stopped {
    /// SIGTERM/SIGINT arrived at `at`; `child` is the kubelet still (possibly) running.
    Terminate {
        /// The current kubelet, if one was running.
        child: Option<Child>,
        /// When the signal arrived (the drain deadline counts from here).
        at: Instant,
    },
    /// Standby must yield the host to `run`.
    Yield(Option<Child>),
}

/// What makes standby yield: SIGUSR1 from `run`, or (as a backstop) the run lock seen held.
#[derive(Debug, Clone)]
pub struct YieldWatch {
    run_lock: std::path::PathBuf,
    poll: Duration,
}

impl YieldWatch {
    async fn wait(&self) {
        loop {
            sleep(self.poll).await;
            if lock::is_held(&self.run_lock).unwrap_or(false) {
                return;
            }
        }
    }
}

enum Event {
    Exited(ExitInfo),
    Terminate(Instant),
    Yield,
}

/// The running agent: configuration, the spawner thread, signals, health and metrics.
pub struct Agent {
    /// The command-line options.
    pub args: RunArgs,
    /// The computed reservation and kubelet command line.
    pub setup: NodeSetup,
    /// Starts kubelet from a dedicated thread.
    pub spawner: Spawner,
    /// The health state `/healthz` reads.
    pub health: Arc<SharedHealth>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    signals: mpsc::UnboundedReceiver<i32>,
    tracker: RestartTracker,
    prober_tasks: Vec<tokio::task::AbortHandle>,
}

impl Agent {
    fn new(args: RunArgs, setup: NodeSetup, phase: Phase) -> Result<Agent, Failure> {
        let signals = install_signals()?;
        let spawner = Spawner::start().map_err(|e| {
            Failure::new(
                ExitStatus::Software,
                format!("cannot start spawner thread: {e}"),
            )
        })?;
        let rules = VerdictRules {
            probe_fresh_for: args.health_probe_interval
                + args.health_probe_timeout
                + Duration::from_secs(1),
            min_uptime: Duration::from_secs(3),
        };
        let health = Arc::new(SharedHealth::new(HealthState::new(phase), rules));
        let metrics = Arc::new(Metrics::new(&setup.capacity, &setup.reservation));
        let tracker = RestartTracker::new(RestartPolicy {
            initial: args.restart_backoff_initial,
            max: args.restart_backoff_max.max(args.restart_backoff_initial),
            stable_after: args.restart_stable_after,
            max_failures: args.max_failures,
            window: args.restart_window,
        });
        Ok(Agent {
            args,
            setup,
            spawner,
            health,
            metrics,
            signals,
            tracker,
            prober_tasks: Vec::new(),
        })
    }

    async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Failure> {
        TcpListener::bind(addr).await.map_err(|e| {
            Failure::new(
                ExitStatus::Config,
                format!("cannot listen on {addr} for {what}: {e} (is another kubelet or agent using it?)"),
            )
        })
    }

    async fn serve_health(&self) -> Result<(), Failure> {
        let listener = Self::bind(self.args.health_addr, "/healthz").await?;
        tracing::info!(addr = %self.args.health_addr, "serving /healthz");
        let routes = Arc::new(HealthRoutes {
            health: self.health.clone(),
            metrics: self.metrics.clone(),
        });
        tokio::spawn(http::serve(listener, Limits::default(), routes));
        Ok(())
    }

    /// Serves `/metrics` if `--metrics-addr` is set; the port is released when the returned
    /// server is dropped (standby hands it to `run` together with the host).
    async fn serve_metrics(&self) -> Result<Option<MetricsServer>, Failure> {
        let Some(addr) = self.args.metrics_addr else {
            return Ok(None);
        };
        let listener = Self::bind(addr, "/metrics").await?;
        tracing::info!(%addr, "serving /metrics");
        let routes = Arc::new(MetricsRoutes {
            metrics: self.metrics.clone(),
        });
        Ok(Some(MetricsServer(tokio::spawn(http::serve(
            listener,
            Limits::default(),
            routes,
        )))))
    }

    /// Waits up to `timeout` for SIGTERM/SIGINT; true if one arrived.
    async fn wait_for_signal(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                sig = self.signals.recv() => match sig {
                    Some(s) if s == libc::SIGTERM || s == libc::SIGINT => return true,
                    Some(_) => continue,
                    None => return false,
                },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Starts one kubelet in `mode` and begins probing it.
    pub async fn start_kubelet(&mut self, mode: KubeletMode) -> Result<Child, Failure> {
        let port = self.setup.pick_healthz_port()?;
        let argv = match mode {
            KubeletMode::Lease => self.setup.argv(port),
            KubeletMode::Zero => self.setup.zero_argv(port)?,
        };
        let child = self.spawner.spawn(argv.clone()).await.map_err(|e| {
            Failure::new(
                ExitStatus::Unavailable,
                format!(
                    "cannot execute kubelet {}: {e}",
                    self.setup.kubelet.display()
                ),
            )
        })?;
        tracing::info!(
            pid = child.pid,
            healthz_port = port,
            zero_allocatable = mode == KubeletMode::Zero,
            argv = %argv.join(" "),
            "kubelet started"
        );
        let (pid, started) = (child.pid, child.started);
        self.health.update(|s| {
            s.kubelet = Some((pid, started));
            s.process_problem = None;
        });
        self.metrics.kubelet_up.set(1);
        self.metrics
            .kubelet_zero_allocatable
            .set(i64::from(mode == KubeletMode::Zero));
        match Prober::new(
            self.args.health_probe_interval,
            self.args.health_probe_timeout,
            self.health.clone(),
            self.metrics.clone(),
        ) {
            Ok(prober) => {
                let task = tokio::spawn(prober.run(pid, port));
                self.prober_tasks.push(task.abort_handle());
            }
            Err(e) => tracing::warn!(error = %e, "cannot build the healthz prober"),
        }
        Ok(child)
    }

    /// Records that kubelet exited.
    pub fn note_exit(&mut self, info: &ExitInfo) {
        for task in self.prober_tasks.drain(..) {
            task.abort();
        }
        let how = info.to_string();
        self.health.update(|s| {
            s.kubelet = None;
            s.last_exit = Some((info.at, how));
        });
        self.metrics.kubelet_up.set(0);
    }

    /// Supervises kubelet in `mode` until a signal (or, for standby, a yield request).
    pub async fn supervise(
        &mut self,
        mode: KubeletMode,
        yield_watch: Option<YieldWatch>,
    ) -> Result<Stopped, Failure> {
        let serving = match mode {
            KubeletMode::Lease => Phase::Serving,
            KubeletMode::Zero => Phase::Standby,
        };
        loop {
            let mut child = self.start_kubelet(mode).await?;
            self.health.update(|s| s.phase = serving);
            let event = self
                .next_event(Some(&mut child), yield_watch.as_ref())
                .await;
            match event {
                Event::Terminate(at) => {
                    return Ok(Stopped::Terminate {
                        child: Some(child),
                        at,
                    });
                }
                Event::Yield => return Ok(Stopped::Yield(Some(child))),
                Event::Exited(info) => {
                    self.note_exit(&info);
                    match self.tracker.on_exit(child.started, info.at) {
                        Decision::GiveUp { failures } => {
                            return Err(Failure::new(
                                ExitStatus::TempFail,
                                format!(
                                    "kubelet failed {failures} times within {:.0}s (last: {info}); giving up so Marathon reschedules the task",
                                    self.args.restart_window.as_secs_f64()
                                ),
                            ));
                        }
                        Decision::Restart(delay) => {
                            self.metrics.kubelet_restarts.inc();
                            tracing::warn!(
                                pid = child.pid,
                                status = %info,
                                ran_seconds = info.at.saturating_duration_since(child.started).as_secs_f64(),
                                restart_in_seconds = delay.as_secs_f64(),
                                failures_in_window = self.tracker.failures_in_window(),
                                "kubelet exited unexpectedly; restarting"
                            );
                            self.health.update(|s| s.phase = Phase::Starting);
                            let wait = self.next_event(None, yield_watch.as_ref());
                            tokio::select! {
                                event = wait => match event {
                                    Event::Terminate(at) => return Ok(Stopped::Terminate { child: None, at }),
                                    Event::Yield => return Ok(Stopped::Yield(None)),
                                    Event::Exited(_) => {}
                                },
                                _ = sleep(delay) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    async fn next_event(&mut self, child: Option<&mut Child>, watch: Option<&YieldWatch>) -> Event {
        let yield_signal = watch.is_some();
        let exited = async {
            match child {
                Some(c) => match (&mut c.exited).await {
                    Ok(info) => info,
                    Err(_) => ExitInfo {
                        code: None,
                        signal: None,
                        at: Instant::now(),
                    },
                },
                None => std::future::pending().await,
            }
        };
        let watched = async {
            match watch {
                Some(w) => w.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(exited, watched);
        loop {
            tokio::select! {
                info = &mut exited => return Event::Exited(info),
                _ = &mut watched => return Event::Yield,
                sig = self.signals.recv() => match sig {
                    Some(s) if s == libc::SIGTERM || s == libc::SIGINT => {
                        tracing::info!(signal = s, "termination requested");
                        return Event::Terminate(Instant::now());
                    }
                    Some(s) if s == libc::SIGUSR1 && yield_signal => return Event::Yield,
                    Some(s) => tracing::debug!(signal = s, "signal ignored"),
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }

    /// Stops kubelet: waits briefly in case it is already exiting (Mesos signals the whole tree
    /// at once), then SIGTERM, then SIGKILL after `--stop-timeout`. Returns how it ended.
    pub async fn stop_child(&mut self, child: &mut Child) -> ExitInfo {
        let pid = Pid::from_raw(child.pid as i32);
        let grace = self.args.stop_timeout;
        let info = match tokio::time::timeout(Duration::from_millis(200), &mut child.exited).await {
            Ok(Ok(info)) => info,
            _ => {
                let _ = kill(pid, Signal::SIGTERM);
                match tokio::time::timeout(grace, &mut child.exited).await {
                    Ok(Ok(info)) => info,
                    _ => {
                        tracing::warn!(
                            pid = child.pid,
                            grace_seconds = grace.as_secs_f64(),
                            "kubelet ignored SIGTERM; sending SIGKILL"
                        );
                        let _ = kill(pid, Signal::SIGKILL);
                        match (&mut child.exited).await {
                            Ok(info) => info,
                            Err(_) => ExitInfo {
                                code: None,
                                signal: Some(libc::SIGKILL),
                                at: Instant::now(),
                            },
                        }
                    }
                }
            }
        };
        self.note_exit(&info);
        info
    }

    /// Keeps a zero-allocatable kubelet running until `stop` is notified, restarting it if it
    /// exits (after a short pause), then stops it. Returns how many kubelets were started.
    pub async fn keep_zero_kubelet(&mut self, stop: Arc<Notify>) -> u32 {
        let mut starts = 0;
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            let mut child = match self.start_kubelet(KubeletMode::Zero).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start kubelet with zero allocatable");
                    return starts;
                }
            };
            starts += 1;
            tokio::select! {
                res = &mut child.exited => {
                    let info = res.unwrap_or(ExitInfo { code: None, signal: None, at: Instant::now() });
                    self.note_exit(&info);
                    tracing::warn!(status = %info, "zero-allocatable kubelet exited during the drain window; restarting");
                    tokio::select! {
                        _ = sleep(Duration::from_millis(500)) => continue,
                        _ = &mut stopped => return starts,
                    }
                }
                _ = &mut stopped => {
                    self.stop_child(&mut child).await;
                    return starts;
                }
            }
        }
    }

    /// Counts drain outcomes in the metrics.
    pub fn count_outcome(&self, outcome: &'static str, n: u64) {
        self.metrics
            .evictions
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }
}

fn install_signals() -> Result<mpsc::UnboundedReceiver<i32>, Failure> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ])
    .map_err(|e| {
        Failure::new(
            ExitStatus::Software,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| {
            Failure::new(
                ExitStatus::Software,
                format!("cannot start signal thread: {e}"),
            )
        })?;
    Ok(rx)
}

fn log_kill_report(report: &KillReport) {
    tracing::info!(
        mode = report.mode,
        evicted = report.evicted,
        blocked_by_pdb = report.blocked,
        left_behind = report.left.len(),
        left = %report.left.join(","),
        zero_allocatable_kubelets = report.zero_kubelet_starts,
        seconds = report.seconds,
        note = %report.note,
        "task kill finished"
    );
}
