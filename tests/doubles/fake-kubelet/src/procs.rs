//! Pod "containers" as detached processes: double fork + setsid, cleared environment,
//! stdio on /dev/null. They are not descendants of the fake kubelet and outlive it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const CONTAINER_PATH: &str = "/usr/bin:/bin";

/// Field 22 (starttime) and field 3 (state) of /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, start))
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// The process `pid` exists, is not a zombie, and is the same process (same start time).
pub fn is_alive(pid: i32, start: u64) -> bool {
    match stat(pid) {
        Some((state, t)) => t == start && state != 'Z' && state != 'X',
        None => false,
    }
}

fn resolve(prog: &str) -> io::Result<PathBuf> {
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    for dir in CONTAINER_PATH.split(':') {
        let p = Path::new(dir).join(prog);
        if let Ok(md) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("exec: {prog:?}: executable file not found in $PATH"),
    ))
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in command"))
}

/// Start `cmd` detached; returns (pid, starttime).
pub fn spawn_detached(cmd: &[String]) -> io::Result<(i32, u64)> {
    let Some(prog) = cmd.first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "container has no command",
        ));
    };
    let path = CString::new(resolve(prog)?.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))?;
    let args: Vec<CString> = cmd.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env = [cstr(&format!("PATH={CONTAINER_PATH}"))?];
    let envp: [*const libc::c_char; 2] = [env[0].as_ptr(), std::ptr::null()];
    let devnull = cstr("/dev/null")?;
    let root = cstr("/")?;
    let mut fds = [0i32; 2];
    // SAFETY: plain pipe2 syscall with a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: between fork and exec/_exit the children only call async-signal-safe functions
    // on memory prepared before the fork.
    let child1 = unsafe { libc::fork() };
    if child1 < 0 {
        let e = io::Error::last_os_error();
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(e);
    }
    if child1 == 0 {
        unsafe {
            libc::close(rd);
            let child2 = libc::fork();
            if child2 < 0 {
                libc::_exit(1);
            }
            if child2 > 0 {
                let b = child2.to_ne_bytes();
                libc::write(wr, b.as_ptr().cast(), 4);
                libc::_exit(0);
            }
            // grandchild: new session (own process group), default signals, /dev/null stdio
            libc::setsid();
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
            if fd >= 0 {
                libc::dup2(fd, 0);
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
                if fd > 2 {
                    libc::close(fd);
                }
            }
            for f in 3..1024 {
                if f != wr {
                    libc::close(f);
                }
            }
            libc::chdir(root.as_ptr());
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let errno = *libc::__errno_location();
            let b = errno.to_ne_bytes();
            libc::write(wr, b.as_ptr().cast(), 4);
            libc::_exit(127);
        }
    }
    unsafe { libc::close(wr) };
    let mut status = 0;
    // SAFETY: reaping our own direct child.
    unsafe { libc::waitpid(child1, &mut status, 0) };
    let mut buf = [0u8; 8];
    let mut got = 0usize;
    loop {
        let n = unsafe { libc::read(rd, buf[got..].as_mut_ptr().cast(), 8 - got) };
        if n > 0 {
            got += n as usize;
            if got == 8 {
                break;
            }
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    unsafe { libc::close(rd) };
    if got < 4 {
        return Err(io::Error::other("double fork failed"));
    }
    let pid = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if got == 8 {
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        return Err(io::Error::from_raw_os_error(errno));
    }
    // exec succeeded (CLOEXEC pipe closed); read its start time
    let start = start_time(pid).ok_or_else(|| io::Error::other("container exited immediately"))?;
    Ok((pid, start))
}

fn signal(pid: i32, start: u64, sig: i32) {
    if !is_alive(pid, start) {
        return;
    }
    // SAFETY: plain kill(2); identity checked above (pid + start time).
    unsafe {
        // the container is its own process group (setsid): signal the whole group
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Runs in its own thread; the returned flag is set
/// when the process is gone.
pub fn terminate(pid: i32, start: u64, grace: Duration) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        signal(pid, start, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while is_alive(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_alive(pid, start) {
            signal(pid, start, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_alive(pid, start) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        d.store(true, Ordering::SeqCst);
    });
    done
}
