//! Background probe of kubelet's own healthz (moved to a loopback port of the agent's choosing)
//! and of the kubelet process' state. Results land in the shared health state; `/healthz`
//! requests never wait for a probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

use crate::health::{Probe, SharedHealth};
use crate::metrics::{Metrics, ResultLabel};

/// Probes `http://127.0.0.1:<port>/healthz` every `interval` while kubelet runs.
#[derive(Debug)]
pub struct Prober {
    client: reqwest::Client,
    interval: Duration,
    health: Arc<SharedHealth>,
    metrics: Arc<Metrics>,
}

impl Prober {
    /// Builds a prober; the HTTP client ignores proxy variables (an agent's HTTP_PROXY must not
    /// capture loopback probes) and keeps no idle connections (no timers while idle).
    pub fn new(
        interval: Duration,
        timeout: Duration,
        health: Arc<SharedHealth>,
        metrics: Arc<Metrics>,
    ) -> Result<Prober, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Prober {
            client,
            interval,
            health,
            metrics,
        })
    }

    /// Probes kubelet `pid` on `port` until the task is dropped (the supervisor aborts it when
    /// kubelet exits).
    pub async fn run(self, pid: u32, port: u16) {
        // Dial 127.0.0.1, never localhost: localhost may resolve to ::1 while kubelet binds IPv4.
        let url = format!("http://127.0.0.1:{port}/healthz");
        // Process sampling is best effort: without it the verdict still has the probe.
        let mut system = System::new().ok();
        // Until kubelet first answers 200, probe quickly so a fresh kubelet turns healthy
        // promptly; after that, at the configured (idle-friendly) interval.
        let eager = self.interval.min(Duration::from_millis(500));
        let mut answered = false;
        loop {
            let started = Instant::now();
            let result = match self.client.get(&url).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => Ok(()),
                Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
                Err(e) if e.is_timeout() => Err(format!(
                    "no answer within {:.1}s",
                    started.elapsed().as_secs_f64()
                )),
                Err(e) if e.is_connect() => Err(format!("connection to {url} refused")),
                Err(e) => Err(format!("request failed: {e}")),
            };
            let elapsed = started.elapsed().as_secs_f64();
            self.metrics.kubelet_probe_seconds.observe(elapsed);
            let label = if result.is_ok() { "ok" } else { "fail" };
            self.metrics
                .kubelet_probes
                .get_or_create(&ResultLabel { result: label })
                .inc();
            let problem = system
                .as_mut()
                .and_then(|sys| sample_process(sys, pid, &self.metrics));
            if let Err(why) = &result {
                tracing::debug!(pid, %why, "kubelet healthz probe failed");
            }
            answered |= result.is_ok();
            self.health.update(|s| {
                s.last_probe = Some(Probe {
                    at: Instant::now(),
                    result,
                });
                s.process_problem = problem;
            });
            let pause = if answered { self.interval } else { eager };
            tokio::time::sleep(pause.saturating_sub(started.elapsed())).await;
        }
    }
}

/// Samples kubelet's process state and resident memory; returns a problem if it is stopped or
/// a zombie.
fn sample_process(system: &mut System, pid: u32, metrics: &Metrics) -> Option<String> {
    let pid = Pid::from_u32(pid);
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    let process = system.process(pid)?;
    metrics
        .kubelet_resident_bytes
        .set(i64::try_from(process.memory()).unwrap_or(i64::MAX));
    match process.status() {
        ProcessStatus::Stop | ProcessStatus::Tracing => Some("stopped (SIGSTOP)".into()),
        ProcessStatus::Zombie | ProcessStatus::Dead => Some("a zombie".into()),
        _ => None,
    }
}
