//! Every process the rehearsal starts, by pid, and the cleanup that ends them all — on success,
//! failure, a signal or the deadline.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Processes started so far (children) and the rehearsal's work directory.
#[derive(Clone, Default)]
pub struct Procs {
    inner: Arc<Mutex<Vec<(String, Child)>>>,
    work: Arc<Mutex<Option<PathBuf>>>,
}

impl Procs {
    /// Remembers the work directory: pods and kubelets under it are swept at cleanup.
    pub fn set_work(&self, dir: &Path) {
        *self.work.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
    }

    /// Spawns `cmd` with stdout/stderr to `log` (stdout piped instead when `pipe_stdout`).
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<u32, String> {
        let file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id();
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), child));
        Ok(pid)
    }

    /// Whether the child `pid` is still running (reaps it if it exited).
    pub fn running(&self, pid: u32) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.iter_mut()
            .find(|(_, c)| c.id() == pid)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Ends everything: SIGTERM to each child (fake Marathon SIGKILLs its executors), SIGKILL
    /// after a short wait, then any kubelet or pod process left under the work directory.
    pub fn cleanup(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c) in g.iter() {
            signal(c.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && g.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, c) in g.iter_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        g.clear();
        drop(g);
        if let Some(work) = self.work.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            sweep(&work);
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) on a pid this rehearsal started or recorded.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Field 22 of /proc/PID/stat (start time in clock ticks).
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The parent of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live process as (pid, cmdline with NULs as spaces).
pub fn processes() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .collect()
}

/// SIGKILLs kubelets whose root dir is under `work` and pod processes the fake kubelets recorded
/// there (pid and start time must both match the record).
fn sweep(work: &Path) {
    let needle = format!("--root-dir={}", work.display());
    for (pid, cmd) in processes() {
        if cmd.contains(&needle) {
            signal(pid, libc::SIGKILL);
        }
    }
    for (pid, start) in crate::fleet::pod_records(work) {
        if start_time(pid) == Some(start) {
            signal(-pid, libc::SIGKILL);
            signal(pid, libc::SIGKILL);
        }
    }
}
