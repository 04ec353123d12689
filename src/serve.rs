//! The serve phase: keep kubelet running in one mode, restarting it with backoff after
//! unexpected exits, until a signal ends the agent, standby is asked to yield, or kubelet fails
//! too often. What then happens is in `taskkill` (task kill and every other ending) and
//! `runner` (hand over).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::time::sleep;

use crate::agent::{Agent, Ending, KubeletMode};
use crate::backoff::Decision;
use crate::exit::Failure;
use crate::health::Phase;
use crate::lock;
use crate::spawner::{Child, ExitInfo};

/// Why supervision stopped.
#[derive(Debug)]
pub enum Stopped {
    /// A signal asked the agent to end at `at`; `child` is the kubelet still (possibly) running.
    Signalled {
        /// The current kubelet, if one was running.
        child: Option<Child>,
        /// When the signal arrived (the drain deadline counts from here).
        at: Instant,
        /// What the signal asks for.
        ending: Ending,
    },
    /// Standby must yield the host to `run`.
    Yield(Option<Child>),
    /// Kubelet failed too often; the agent exits 75 with this failure.
    GaveUp(Failure),
}

/// What makes standby yield: SIGUSR1 from `run`, or (as a backstop) the run lock seen held.
#[derive(Debug, Clone)]
pub struct YieldWatch {
    /// `run`'s lock file.
    pub run_lock: PathBuf,
    /// How often the lock is polled.
    pub poll: Duration,
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
    Signalled(Instant, Ending),
    Yield,
}

impl Agent {
    /// Supervises kubelet in `mode` until a signal, a yield request (standby) or too many
    /// failures.
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
                Event::Signalled(at, ending) => {
                    return Ok(Stopped::Signalled {
                        child: Some(child),
                        at,
                        ending,
                    });
                }
                Event::Yield => return Ok(Stopped::Yield(Some(child))),
                Event::Exited(info) => {
                    self.note_exit(&info);
                    match self.tracker.on_exit(child.started, info.at) {
                        Decision::GiveUp { failures } => {
                            return Ok(Stopped::GaveUp(Failure::new(
                                crate::exit::ExitStatus::TempFail,
                                format!(
                                    "kubelet failed {failures} times within {:.0}s (last: {info}); giving up so Marathon reschedules the task",
                                    self.args.restart_window.as_secs_f64()
                                ),
                            )));
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
                                    Event::Signalled(at, ending) => return Ok(Stopped::Signalled { child: None, at, ending }),
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
                sig = self.signals.recv() => match sig.map(|s| (s, Ending::of(s))) {
                    Some((s, Some(ending))) => {
                        tracing::info!(signal = s, ?ending, "termination requested");
                        return Event::Signalled(Instant::now(), ending);
                    }
                    Some((s, None)) if s == libc::SIGUSR1 && yield_signal => return Event::Yield,
                    Some((s, None)) => tracing::debug!(signal = s, "signal ignored"),
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }
}
