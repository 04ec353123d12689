#![allow(dead_code)]
//! `run` started directly (no emulator) with the fake kubelet, for the HTTP and metrics tests:
//! a fresh scratch host, ephemeral loopback ports, every process killed by pid on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{AGENT, Guard, Scratch, double, free_port, http, wait_until};

/// A running agent with its fake kubelet. Field order: the guard (agent, then kubelet by pid)
/// drops before the scratch dir.
pub struct RunningAgent {
    pub guard: Guard,
    pub health_port: u16,
    pub metrics_port: u16,
    pub scratch: Scratch,
}

/// Where the agent's stderr goes.
pub enum Stderr {
    /// A temp file (read with [`RunningAgent::log`]).
    File,
    /// This descriptor (e.g. a pipe's write end); kubelet's own stderr then goes to a file, so
    /// only the agent faces it.
    Fd(std::os::fd::OwnedFd),
}

impl RunningAgent {
    /// Starts `run` on a 4-CPU, 8 GiB fake host with a lease of 1.5 cores and 512 MiB.
    pub fn start(extra_env: &[(&str, &str)], stderr: Stderr) -> RunningAgent {
        RunningAgent::start_with(extra_env, stderr, None)
    }

    /// [`RunningAgent::start`] with the agent's open-file limit set to `fd_limit` (soft, hard).
    pub fn start_with(
        extra_env: &[(&str, &str)],
        stderr: Stderr,
        fd_limit: Option<(u64, u64)>,
    ) -> RunningAgent {
        let scratch = Scratch::new(4, 8);
        let health_port = free_port();
        let metrics_port = free_port();
        let fake_kubelet = double("fake-kubelet");
        let (kubelet, stderr_cfg, log) = match stderr {
            Stderr::File => {
                let log = tempfile::NamedTempFile::new().expect("log file");
                let cfg = Stdio::from(log.reopen().expect("log file"));
                (fake_kubelet, cfg, Some(log))
            }
            Stderr::Fd(fd) => {
                // Kubelet inherits the agent's stderr; a wrapper sends its own to a file.
                let wrapper = scratch.path("kubelet-wrapper.sh");
                std::fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh\nexec '{}' \"$@\" 2>>'{}'\n",
                        fake_kubelet.display(),
                        scratch.path("kubelet.log").display()
                    ),
                )
                .expect("write wrapper");
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod wrapper");
                (wrapper, Stdio::from(fd), None)
            }
        };
        let mut cmd = Command::new(AGENT);
        cmd.arg("run")
            .arg("--")
            .args(scratch.kubelet_args())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KRW_KUBELET", &kubelet)
            .env("KRW_HOST_ROOT", scratch.host_root())
            .env("KRW_LOCK_FILE", scratch.lock_file())
            .env("KRW_HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
            .env("KRW_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("KRW_KUBELET_HEALTHZ_PORT", "0")
            .env("KRW_LEGACY_FILE", scratch.path("services"))
            .env("KRW_CPUS", "1.5")
            .env("KRW_MEM", "512")
            .env("KRW_HEALTH_PROBE_INTERVAL", "0.3")
            .env("FAKE_KUBELET_HOST_ROOT", scratch.host_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_cfg);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = fd_limit {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value copied in.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let guard = Guard {
            child: cmd.spawn().expect("spawn agent"),
            extra: Vec::new(),
            log,
        };
        let mut agent = RunningAgent {
            guard,
            health_port,
            metrics_port,
            scratch,
        };
        let started = wait_until(Duration::from_secs(20), || {
            agent
                .scratch
                .kubelet_status()
                .and_then(|s| s["pid"].as_i64())
                .is_some()
        });
        assert!(started, "fake kubelet never started; log:\n{}", agent.log());
        if let Some(pid) = agent
            .scratch
            .kubelet_status()
            .and_then(|s| s["pid"].as_i64())
        {
            agent.guard.extra.push(pid as i32);
        }
        agent
    }

    /// The agent's log so far (empty when stderr is not a file).
    pub fn log(&self) -> String {
        self.guard.stderr_text()
    }

    /// Waits for `/healthz` to answer 200.
    pub fn wait_healthy(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            http("GET", self.health_port, "/healthz").is_some_and(|(code, _)| code == 200)
        });
        assert!(ok, "agent never healthy; log:\n{}", self.log());
    }
}

/// A GET with extra header lines on a fresh connection; the whole raw answer.
pub fn get_raw(port: u16, path: &str, headers: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Raises this process's open-file soft limit to the hard limit (tests hold many sockets).
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// A request head that never ends.
const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n";

/// Connections held against `port`: a third idle, a third with a half-sent head, a third
/// trickling their head a byte at a time and reconnecting whenever the agent closes them.
pub struct Hostile {
    stop: Arc<AtomicBool>,
    trickler: Option<std::thread::JoinHandle<()>>,
    _held: Vec<TcpStream>,
}

impl Hostile {
    /// Opens `n` connections to `port` and keeps them as described above.
    pub fn hold(port: u16, n: usize) -> Hostile {
        let connect = || TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut held = Vec::with_capacity(n);
        for i in 0..n * 2 / 3 {
            let mut s = connect();
            if i % 2 == 1 {
                let _ = s.write_all(HALF_HEAD);
            }
            held.push(s);
        }
        let slow: Vec<TcpStream> = (0..n - held.len()).map(|_| connect()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let trickler = std::thread::spawn(move || {
            let mut slow = slow;
            let mut sent = vec![0usize; slow.len()];
            while !flag.load(Ordering::Relaxed) {
                for (s, at) in slow.iter_mut().zip(sent.iter_mut()) {
                    let byte = HALF_HEAD[*at % HALF_HEAD.len()];
                    if s.write_all(&[byte]).is_err() {
                        // Closed by the agent: come back, as an attacker would.
                        if let Ok(fresh) = TcpStream::connect(("127.0.0.1", port)) {
                            *s = fresh;
                        }
                        *at = 0;
                    } else {
                        *at += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Hostile {
            stop,
            trickler: Some(trickler),
            _held: held,
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.trickler.take() {
            let _ = t.join();
        }
    }
}
