//! The start phase: the agent's process-wide parts (signals, the spawner thread, health state,
//! metrics, the `/healthz` and `/metrics` servers) and starting and stopping one kubelet.
//! Every later phase (serve, kill, hand over) works through this [`Agent`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::backoff::{RestartPolicy, RestartTracker};
use crate::cli::RunArgs;
use crate::exit::{ExitStatus, Failure};
use crate::health::{HealthState, Phase, SharedHealth, VerdictRules};
use crate::http::{self, HealthRoutes, Limits, MetricsRoutes};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::probe::Prober;
use crate::setup::NodeSetup;
use crate::spawner::{Child, ExitInfo, Spawner};

/// A running `/metrics` server; dropping it closes the listening socket.
pub struct MetricsServer(tokio::task::JoinHandle<()>);

impl MetricsServer {
    /// Stops serving and waits until the listening socket is closed.
    pub async fn close(mut self) {
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

/// What each signal means is decided here, with the signal handlers.
/// How a signal ends the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM (Mesos' task kill), SIGINT or SIGHUP: drain and leave nothing running.
    Drain(i32),
    /// SIGQUIT: leave now. Stop kubelet without draining; the summary counts what is left.
    Quit,
}

impl Ending {
    /// The ending a signal number asks for, if it asks for one.
    pub fn of(signal: i32) -> Option<Ending> {
        match signal {
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP => Some(Ending::Drain(signal)),
            libc::SIGQUIT => Some(Ending::Quit),
            _ => None,
        }
    }
}

/// Where the API drain and the node checks go: credentials and node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTarget {
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
    /// The node as kubelet registers it.
    pub node: String,
}

/// The supervised process and what the agent knows: shared by every phase.
pub struct Agent {
    /// Command-line options.
    pub args: RunArgs,
    /// The computed reservation and kubelet command line.
    pub setup: NodeSetup,
    /// Starts kubelet from a dedicated thread.
    pub spawner: Spawner,
    /// The health state `/healthz` reads.
    pub health: Arc<SharedHealth>,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Signals, as numbers, from the signal thread.
    pub signals: mpsc::UnboundedReceiver<i32>,
    /// Kubelet exits, for the restart backoff.
    pub tracker: RestartTracker,
    prober_tasks: Vec<tokio::task::AbortHandle>,
}

impl Agent {
    /// Builds the agent: signal handling, the spawner thread, health state and metrics.
    pub fn new(args: RunArgs, setup: NodeSetup, phase: Phase) -> Result<Agent, Failure> {
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
            // Three missed node readings before the API counts as away.
            api_fresh_for: args.node_check_interval * 3 + Duration::from_secs(5),
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

    /// Serves `/healthz` on `--health-addr`.
    pub async fn serve_health(&self) -> Result<(), Failure> {
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
    pub async fn serve_metrics(&self) -> Result<Option<MetricsServer>, Failure> {
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
    pub async fn wait_for_signal(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                sig = self.signals.recv() => match sig {
                    Some(s) if Ending::of(s).is_some() => return true,
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

    /// The API target for this agent, or why there is none.
    pub fn api_target(&self) -> Result<ApiTarget, String> {
        if self.args.no_drain {
            return Err("--no-drain given".into());
        }
        let kubeconfig = self
            .args
            .kubeconfig
            .clone()
            .or_else(|| self.setup.kubelet_kubeconfig())
            .ok_or("no --kubeconfig and kubelet has none")?;
        let node = self.setup.node_name().map_err(|e| e.message)?;
        Ok(ApiTarget { kubeconfig, node })
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
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
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
