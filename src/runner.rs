//! `run` and `standby` from start to end, and the hand over between them (DESIGN §2, §4).
//! Each phase has its own module, with dependencies pointing one way:
//! `runner` (hand over) → `taskkill` (kill) → `serve` (serve) → `agent` (start).

use std::future::Future;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::sleep;

use crate::agent::{Agent, KubeletMode};
use crate::cli::RunArgs;
use crate::exit::{ExitStatus, Failure};
use crate::health::Phase;
use crate::lock::{self, HostLock, LockError, Role};
use crate::node_watch;
use crate::serve::{Stopped, YieldWatch};
use crate::setup::{self, LeaseMode};
use crate::taskkill;

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
        if let Some(warning) = taskkill::budget_warning(&agent.args) {
            tracing::warn!("{warning}");
        }
        let node_task = match agent.api_target() {
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
            Stopped::Signalled { child, at, ending } => {
                taskkill::terminate(&mut agent, child, at, ending).await;
                Ok(())
            }
            Stopped::GaveUp(failure) => Err(taskkill::give_up(&mut agent, failure).await),
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
                Stopped::GaveUp(failure) => {
                    return Err(taskkill::give_up(&mut agent, failure).await);
                }
                Stopped::Signalled { child, .. } => {
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
    Failure::new(ExitStatus::CantCreate, e.to_string())
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
                    if let Some(pid) = holder.pid {
                        tracing::info!(standby_pid = pid, "asking standby to yield the host");
                        let _ = kill(Pid::from_raw(pid), Signal::SIGUSR1);
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
