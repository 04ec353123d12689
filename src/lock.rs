//! Host-wide locks (`flock`), so at most one kubelet runs on a host at any instant.
//!
//! Two files:
//! - `<lock-file>`: the *kubelet lock*, held by whichever process (run or standby) runs kubelet.
//! - `<lock-file>.run`: the *run lock*, held by `run` for its whole life; a second `run` finds it
//!   held and exits 73, and `standby` sees it held and keeps its hands off the host.
//!
//! The kernel drops a `flock` when its holder dies, even on SIGKILL, so nothing goes stale.
//! Each file holds the holder's pid and role (`1234 run`) for messages.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Who holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kubelet-resource-wrapper run` (the Marathon task).
    Run,
    /// `kubelet-resource-wrapper standby` (the boot service).
    Standby,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Run => "run",
            Role::Standby => "standby",
        }
    }
}

/// The recorded holder of a lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's pid, if recorded.
    pub pid: Option<i32>,
    /// The holder's role, if recorded.
    pub role: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.role) {
            (Some(pid), Some(role)) => write!(f, "pid {pid} ({role})"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            _ => f.write_str("an unknown process"),
        }
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error("host lock {path} is held by {holder}")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Who holds it.
        holder: Holder,
    },
    /// The file cannot be opened or locked.
    #[error("cannot use lock file {path}: {reason}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct HostLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl HostLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The run lock's path for a given `--lock-file`.
pub fn run_lock_path(lock_file: &Path) -> PathBuf {
    let mut name = lock_file.as_os_str().to_owned();
    name.push(".run");
    PathBuf::from(name)
}

fn open(path: &Path) -> Result<File, LockError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| LockError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| LockError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Reads who holds a lock file (best effort).
pub fn read_holder(path: &Path) -> Holder {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut words = text.split_whitespace();
    Holder {
        pid: words.next().and_then(|w| w.parse().ok()),
        role: words.next().map(str::to_string),
    }
}

/// Tries to take `path` exclusively without waiting, recording this process as `role`.
pub fn try_acquire(path: &Path, role: Role) -> Result<HostLock, LockError> {
    let file = open(path)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            return Err(LockError::Held {
                path: path.to_path_buf(),
                holder: read_holder(path),
            });
        }
        Err((_, e)) => {
            return Err(LockError::Io {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let record = format!("{} {}\n", std::process::id(), role.as_str());
    let write = (|| -> std::io::Result<()> {
        lock.set_len(0)?;
        lock.seek(SeekFrom::Start(0))?;
        lock.write_all(record.as_bytes())?;
        lock.flush()
    })();
    write.map_err(|e| LockError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(HostLock {
        path: path.to_path_buf(),
        _lock: lock,
    })
}

/// Whether some process holds `path` right now (probed with a shared non-blocking lock that is
/// released at once).
pub fn is_held(path: &Path) -> Result<bool, LockError> {
    let file = open(path)?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => {
            drop(lock);
            Ok(false)
        }
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(LockError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Reads the whole content of a held lock's file (used by tests).
pub fn content(lock: &HostLock) -> std::io::Result<String> {
    let mut file = File::open(&lock.path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/k.lock");
        let first = try_acquire(&path, Role::Run).expect("first");
        assert_eq!(
            content(&first).expect("read"),
            format!("{} run\n", std::process::id())
        );
        assert!(is_held(&path).expect("probe"));
        match try_acquire(&path, Role::Standby) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder.pid, Some(std::process::id() as i32));
                assert_eq!(holder.role.as_deref(), Some("run"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(!is_held(&path).expect("probe"));
        assert!(try_acquire(&path, Role::Standby).is_ok());
    }

    #[test]
    fn run_lock_sits_beside_the_kubelet_lock() {
        assert_eq!(
            run_lock_path(Path::new("/run/krw.lock")),
            PathBuf::from("/run/krw.lock.run")
        );
    }

    #[test]
    fn unusable_path_is_an_io_error() {
        assert!(matches!(
            try_acquire(Path::new("/proc/version/x.lock"), Role::Run),
            Err(LockError::Io { .. })
        ));
    }
}
