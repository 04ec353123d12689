//! Host-wide locks (`flock`), so at most one kubelet runs on a host at any instant.
//!
//! Two files:
//! - `<lock-file>`: the *kubelet lock*, held by whichever process (run or standby) runs kubelet.
//! - `<lock-file>.run`: the *run lock*, held by `run` for its whole life; a second `run` finds it
//!   held and exits 73, and `standby` sees it held and keeps its hands off the host.
//!
//! The kernel drops a `flock` when its holder dies, even on SIGKILL, so nothing goes stale.
//! Each file holds the holder's record `<pid> <role> <start time>` for messages and for the
//! handover ([`signal_standby`]).
//!
//! # Why no other user can block or subvert the lock
//! A `flock` can be taken by anyone who can *open* the file, so the design keeps every other
//! user from opening it, and never trusts what it finds at the path:
//! - The path must be absolute (a relative one would resolve inside each task's sandbox).
//! - Its directory must belong to the agent's user (root) and be writable by no one else, so
//!   nobody else can plant, rename or replace entries there. A missing directory is created
//!   0700.
//! - The file is opened `O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK` and created 0600: a symbolic link is
//!   refused (never followed and overwritten), and so is anything that is not a regular file
//!   (FIFO, device, directory): one line, exit 78.
//! - A regular file with another owner, any group/other permission bit, or more than one link
//!   (left by an older version that created 0644 files, or by an operator) is *replaced* by a
//!   fresh 0600 inode (created beside it and renamed over it). A process that opened the old
//!   file while it was readable keeps only a lock on an inode nobody uses any more, so it cannot
//!   block the agent.
//! - After taking the lock, the agent checks that the path still names the inode it locked;
//!   if another agent replaced it in between, it starts over, so two agents can never hold
//!   locks on two different inodes of the same path.
//!
//! The record in the file is therefore written only by root agents. Still, `run` never signals
//! the pid it names without proof (see [`signal_standby`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

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
    /// The holder's start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
    pub start_time: Option<u64>,
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
    /// The path, its directory or what is found there is unsafe to use (exit 78).
    #[error("refusing lock file {path}: {reason}")]
    Unsafe {
        /// The lock file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
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

impl LockError {
    /// The documented exit code: 78 for an unsafe path or file, 73 otherwise.
    pub fn exit_status(&self) -> crate::exit::ExitStatus {
        match self {
            LockError::Unsafe { .. } => crate::exit::ExitStatus::Config,
            LockError::Held { .. } | LockError::Io { .. } => crate::exit::ExitStatus::CantCreate,
        }
    }
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct HostLock {
    path: PathBuf,
    lock: Flock<File>,
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

fn unsafe_path(path: &Path, reason: impl Into<String>) -> LockError {
    LockError::Unsafe {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> LockError {
    LockError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Checks the path is absolute and its directory is the agent's and writable by no one else
/// (creating it 0700 if missing).
fn check_dir(path: &Path) -> Result<(), LockError> {
    if !path.is_absolute() {
        return Err(unsafe_path(
            path,
            "the path is relative; give an absolute path such as /run/kubelet-resource-wrapper.lock",
        ));
    }
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Err(unsafe_path(path, "the path has no directory"));
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error(path, format!("cannot create {}: {e}", dir.display())))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| io_error(path, e))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(unsafe_path(
            path,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(unsafe_path(
            path,
            format!(
                "its directory {} (owner uid {}, mode {:04o}) must be owned by uid {euid} and writable by no one else, \
                 or another user could plant or replace the lock file",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

fn open_nofollow(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    options.open(path)
}

/// Whether an open lock file is one this design can trust: ours, 0600-or-stricter, one link.
fn trusted(meta: &std::fs::Metadata) -> bool {
    meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 == 0 && meta.nlink() == 1
}

/// Replaces an untrusted lock file with a fresh 0600 inode (created beside it, renamed over it).
fn replace(path: &Path, old: &std::fs::Metadata) -> Result<(), LockError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    open_nofollow(&tmp, true).map_err(|e| io_error(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })?;
    tracing::warn!(
        path = %path.display(),
        owner_uid = old.uid(),
        mode = format!("{:04o}", old.mode() & 0o7777),
        links = old.nlink(),
        "lock file was not a root-only file; replaced it with a fresh 0600 file so no process that opened the old one can hold the lock"
    );
    Ok(())
}

/// Opens the lock file safely (see the module docs).
fn open(path: &Path) -> Result<File, LockError> {
    check_dir(path)?;
    for _ in 0..4 {
        // Refuse a link, FIFO, socket or device by its name first, so it is never opened.
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && !meta.file_type().is_file()
        {
            return Err(unsafe_path(
                path,
                format!(
                    "it is a {}, not a regular file; remove it",
                    crate::fsread::kind_of(meta.file_type())
                ),
            ));
        }
        let file = open_nofollow(path, false).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => unsafe_path(
                path,
                "it is a symbolic link; remove it (the agent never follows a link at the lock path)",
            ),
            _ => io_error(path, e),
        })?;
        let meta = file.metadata().map_err(|e| io_error(path, e))?;
        if !meta.file_type().is_file() {
            return Err(unsafe_path(
                path,
                format!(
                    "it is a {}, not a regular file; remove it",
                    crate::fsread::kind_of(meta.file_type())
                ),
            ));
        }
        if trusted(&meta) {
            return Ok(file);
        }
        drop(file);
        replace(path, &meta)?;
    }
    Err(unsafe_path(
        path,
        "it keeps being replaced by an untrusted file",
    ))
}

/// Whether `path` still names the inode open as `file`.
fn still_at_path(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(at_path), Ok(open)) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
        _ => false,
    }
}

/// Reads the holder record from an open lock file (at most 4 KiB).
fn read_record(file: &File) -> Holder {
    let mut text = String::new();
    let mut reader: &File = file;
    let _ = reader.seek(SeekFrom::Start(0));
    let _ = reader.take(4096).read_to_string(&mut text);
    parse_record(&text)
}

/// Parses a holder record `<pid> <role> <start time>`; missing or bad parts are `None`.
pub fn parse_record(text: &str) -> Holder {
    let mut words = text.split_whitespace();
    Holder {
        pid: words.next().and_then(|w| w.parse().ok()).filter(|p| *p > 0),
        role: words.next().map(|r| r.chars().take(16).collect()),
        start_time: words.next().and_then(|w| w.parse().ok()),
    }
}

/// Tries to take `path` exclusively without waiting, recording this process as `role`.
pub fn try_acquire(path: &Path, role: Role) -> Result<HostLock, LockError> {
    for _ in 0..4 {
        let file = open(path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: read_record(&file),
                });
            }
            Err((_, e)) => return Err(io_error(path, e)),
        };
        if !still_at_path(path, &lock) {
            // Another agent replaced the file between our open and our lock: start over.
            continue;
        }
        let start = own_start_time().map_or_else(String::new, |t| t.to_string());
        let record = format!("{} {} {start}\n", std::process::id(), role.as_str());
        let write = (|| -> std::io::Result<()> {
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            lock.write_all(record.as_bytes())?;
            lock.flush()
        })();
        write.map_err(|e| io_error(path, e))?;
        return Ok(HostLock {
            path: path.to_path_buf(),
            lock,
        });
    }
    Err(io_error(path, "the lock file kept changing under us"))
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
        Err((_, e)) => Err(io_error(path, e)),
    }
}

/// Reads the whole content of a held lock's file (used by tests).
pub fn content(lock: &HostLock) -> std::io::Result<String> {
    let mut text = String::new();
    let mut reader: &File = &lock.lock;
    reader.seek(SeekFrom::Start(0))?;
    reader.take(4096).read_to_string(&mut text)?;
    Ok(text)
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` text; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn start_time_of(pid: &str) -> Option<u64> {
    let stat = crate::fsread::read_text(Path::new(&format!("/proc/{pid}/stat")), 4096).ok()?;
    parse_start_time(&stat)
}

fn own_start_time() -> Option<u64> {
    start_time_of("self")
}

/// A pidfd: refers to one process for its whole life, never to a later one that reuses the pid.
fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: Option<Signal>) -> Result<(), Errno> {
    let sig = signal.map_or(0, |s| s as libc::c_int);
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Proves that `holder` is a live `standby` agent: its pid is opened as a pidfd first, then
/// `/proc/<pid>` must show the start time the record names, the same executable as this
/// process (`/proc/<pid>/exe` and `/proc/self/exe` are the same file) and this process's user;
/// finally the pidfd must still be alive, so every `/proc` read above described that very
/// process and not a later one that reused its pid. Returns the pidfd to signal through.
pub fn prove_standby(holder: &Holder) -> Result<OwnedFd, String> {
    if holder.role.as_deref() != Some("standby") {
        return Err("the record does not name a standby".into());
    }
    let pid = holder.pid.ok_or("the record names no pid")?;
    let recorded = holder
        .start_time
        .ok_or("the record names no start time (an older agent wrote it)")?;
    let fd = pidfd_open(pid).map_err(|e| format!("pid {pid} cannot be opened ({e})"))?;
    let started = start_time_of(&pid.to_string())
        .ok_or_else(|| format!("/proc/{pid}/stat cannot be read"))?;
    if started != recorded {
        return Err(format!(
            "pid {pid} started at tick {started}, the record says {recorded}: it is another process"
        ));
    }
    let exe = |p: &str| std::fs::metadata(format!("/proc/{p}/exe")).map(|m| (m.dev(), m.ino()));
    match (exe(&pid.to_string()), exe("self")) {
        (Ok(theirs), Ok(ours)) if theirs == ours => {}
        (Ok(_), Ok(_)) => return Err(format!("pid {pid} runs another program")),
        (Err(e), _) | (_, Err(e)) => return Err(format!("/proc/{pid}/exe cannot be read ({e})")),
    }
    let owner = std::fs::metadata(format!("/proc/{pid}"))
        .map_err(|e| format!("/proc/{pid} cannot be read ({e})"))?
        .uid();
    if owner != nix::unistd::geteuid().as_raw() {
        return Err(format!("pid {pid} belongs to uid {owner}"));
    }
    pidfd_send_signal(&fd, None).map_err(|e| format!("pid {pid} ended meanwhile ({e})"))?;
    Ok(fd)
}

/// Sends `signal` to the standby named by `holder` only once [`prove_standby`] has proved it is
/// one; returns its pid. Never signals anything else.
pub fn signal_standby(holder: &Holder, signal: Signal) -> Result<i32, String> {
    let fd = prove_standby(holder)?;
    pidfd_send_signal(&fd, Some(signal)).map_err(|e| format!("cannot signal: {e}"))?;
    Ok(holder.pid.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/k.lock");
        let first = try_acquire(&path, Role::Run).expect("first");
        let record = content(&first).expect("read");
        assert!(
            record.starts_with(&format!("{} run ", std::process::id())),
            "{record}"
        );
        assert_eq!(parse_record(&record).start_time, own_start_time());
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("sub"))
                .expect("meta")
                .mode()
                & 0o777,
            0o700
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
    fn unusable_path_is_an_error() {
        assert!(try_acquire(Path::new("/proc/version/x.lock"), Role::Run).is_err());
    }

    #[test]
    fn relative_paths_links_fifos_and_open_directories_are_refused() {
        assert!(matches!(
            try_acquire(Path::new("krw.lock"), Role::Run),
            Err(LockError::Unsafe { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").expect("write");
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = try_acquire(&link, Role::Run).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
        let fifo = dir.path().join("fifo.lock");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let err = try_acquire(&fifo, Role::Run).expect_err("fifo");
        assert!(err.to_string().contains("FIFO"), "{err}");
        let open_dir = dir.path().join("open");
        std::fs::create_dir(&open_dir).expect("mkdir");
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let err = try_acquire(&open_dir.join("k.lock"), Role::Run).expect_err("open dir");
        assert!(err.to_string().contains("writable by no one else"), "{err}");
    }

    #[test]
    fn a_readable_lock_file_is_replaced_by_a_fresh_private_inode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.lock");
        std::fs::write(&path, "1 standby\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let old_ino = std::fs::metadata(&path).expect("meta").ino();
        let lock = try_acquire(&path, Role::Run).expect("acquire");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_ne!(meta.ino(), old_ino);
        assert_eq!(meta.mode() & 0o777, 0o600);
        drop(lock);
    }

    #[test]
    fn start_times_are_read_after_the_command_name() {
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(stat), Some(123456));
        assert_eq!(parse_start_time("42 (x) S"), None);
        assert_eq!(parse_start_time(""), None);
    }

    #[test]
    fn only_a_proven_standby_is_signalled() {
        let me = Holder {
            pid: Some(std::process::id() as i32),
            role: Some("standby".into()),
            start_time: own_start_time(),
        };
        assert!(prove_standby(&me).is_ok());
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = sleeper.id() as i32;
        let other = Holder {
            pid: Some(pid),
            role: Some("standby".into()),
            start_time: start_time_of(&pid.to_string()),
        };
        let why = signal_standby(&other, Signal::SIGUSR1).expect_err("another program");
        assert!(why.contains("another program"), "{why}");
        let stale = Holder {
            start_time: me.start_time.map(|t| t + 1),
            ..me.clone()
        };
        assert!(
            prove_standby(&stale)
                .expect_err("stale")
                .contains("another process")
        );
        let old_format = Holder {
            start_time: None,
            ..me.clone()
        };
        assert!(prove_standby(&old_format).is_err());
        assert_eq!(
            sleeper.try_wait().expect("wait"),
            None,
            "sleep was signalled"
        );
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
}
