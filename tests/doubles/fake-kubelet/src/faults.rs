//! Test-only fault injection, from env `FAKE_KUBELET_FAULT` (comma-separated).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub crash_at_start: bool,
    pub crash_after: Option<Duration>,
    pub hang: bool,
    pub unhealthy: bool,
    pub unhealthy_while: Option<PathBuf>,
    pub slow_start: Option<Duration>,
    pub ignore_sigterm: bool,
    /// While this path exists the node Lease is not renewed (a kubelet whose heartbeat is stuck).
    pub no_lease_while: Option<PathBuf>,
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("FAKE_KUBELET_FAULT: {name}={v}: expected seconds"))?;
    if !f.is_finite() || f < 0.0 {
        return Err(format!(
            "FAKE_KUBELET_FAULT: {name}={v}: expected seconds >= 0"
        ));
    }
    Ok(Duration::from_secs_f64(f))
}

impl Faults {
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, val) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v)),
                None => (item, None),
            };
            match (name, val) {
                ("crash-at-start", None) => f.crash_at_start = true,
                ("crash-after", Some(v)) => f.crash_after = Some(secs(name, v)?),
                ("hang", None) => f.hang = true,
                ("unhealthy", None) => f.unhealthy = true,
                ("unhealthy-while", Some(v)) if !v.is_empty() => {
                    f.unhealthy_while = Some(PathBuf::from(v))
                }
                ("no-lease-while", Some(v)) if !v.is_empty() => {
                    f.no_lease_while = Some(PathBuf::from(v))
                }
                ("slow-start", Some(v)) => f.slow_start = Some(secs(name, v)?),
                ("ignore-sigterm", None) => f.ignore_sigterm = true,
                _ => return Err(format!("FAKE_KUBELET_FAULT: unknown fault {item:?}")),
            }
        }
        Ok(f)
    }

    pub fn from_env() -> Result<Faults, String> {
        match std::env::var("FAKE_KUBELET_FAULT") {
            Ok(s) => Faults::parse(&s),
            Err(_) => Ok(Faults::default()),
        }
    }

    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy || self.unhealthy_while.as_ref().is_some_and(|p| p.exists())
    }
}
