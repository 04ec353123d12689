//! Healthz responses, signal handling, and every FAKE_KUBELET_FAULT mode.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn host() -> HostRoot {
    HostRoot::new(2_000_000).flat_cpus(2)
}

fn start(host: &HostRoot, port: u16, fault: Option<&str>) -> Kubelet {
    let mut o = Opts::new(host.path()).arg(format!("--healthz-port={port}"));
    if let Some(f) = fault {
        o = o.env("FAKE_KUBELET_FAULT", f);
    }
    Kubelet::start(o)
}

#[test]
fn healthz_is_a_bare_ping() {
    let h = host();
    let port = free_port();
    let _k = start(&h, port, None);
    let r = wait_http(port, "/healthz", 200, Duration::from_secs(3));
    assert_eq!(r.body, "ok");
    assert!(
        r.head.contains("Content-Type: text/plain; charset=utf-8"),
        "{}",
        r.head
    );
    let r = http(port, "HEAD", "/healthz").unwrap();
    assert_eq!((r.code, r.body.as_str()), (200, ""));
    let r = http(port, "GET", "/healthz/ping").unwrap();
    assert_eq!((r.code, r.body.as_str()), (200, "ok"));
    let r = http(port, "GET", "/healthz?verbose").unwrap();
    assert_eq!(r.code, 200);
    assert_eq!(r.body, "[+]ping ok\nhealthz check passed\n");
    for p in ["/", "/healthz/syncloop", "/metrics", "/healthzz"] {
        assert_eq!(http(port, "GET", p).unwrap().code, 404, "{p}");
    }
}

#[test]
fn healthz_port_zero_disables_and_bind_address_is_honoured() {
    let h = host();
    let port = free_port();
    let k = Kubelet::start(Opts::new(h.path()).arg("--healthz-port=0"));
    k.wait_status(Duration::from_secs(3), |_| true);
    assert!(http(port, "GET", "/healthz").is_err());
    let k2 = Kubelet::start(
        Opts::new(h.path())
            .arg("--healthz-bind-address")
            .arg("127.0.0.1")
            .arg("--healthz-port")
            .arg(port.to_string()),
    );
    wait_http(port, "/healthz", 200, Duration::from_secs(3));
    drop(k2);
}

#[test]
fn first_sigterm_exits_0_promptly_second_signal_exits_1() {
    let h = host();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let port = free_port();
        let mut k = start(&h, port, None);
        wait_http(port, "/healthz", 200, Duration::from_secs(3));
        let t = Instant::now();
        k.signal(sig);
        let st = k.wait_exit(Duration::from_secs(2)).expect("exit");
        assert_eq!(st.code(), Some(0));
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
    let port = free_port();
    let mut k = start(&h, port, None);
    wait_http(port, "/healthz", 200, Duration::from_secs(3));
    k.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(10));
    k.signal(libc::SIGTERM);
    assert_eq!(
        k.wait_exit(Duration::from_secs(2)).expect("exit").code(),
        Some(1)
    );
}

#[test]
fn fault_crash_at_start_and_crash_after() {
    let h = host();
    let mut k = start(&h, 0, Some("crash-at-start"));
    assert_eq!(
        k.wait_exit(Duration::from_secs(2)).expect("exit").code(),
        Some(1)
    );
    assert!(k.stderr().contains("crash-at-start"));
    let port = free_port();
    let mut k = start(&h, port, Some("crash-after=0.7"));
    wait_http(port, "/healthz", 200, Duration::from_secs(2));
    let t = Instant::now();
    assert_eq!(
        k.wait_exit(Duration::from_secs(3)).expect("exit").code(),
        Some(2)
    );
    assert!(t.elapsed() < Duration::from_millis(900));
    assert!(k.stderr().contains("panic:"));
}

#[test]
fn fault_hang_accepts_but_never_answers() {
    let h = host();
    let port = free_port();
    let mut k = start(&h, port, Some("hang"));
    k.wait_status(Duration::from_secs(3), |_| true);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    let e = s.read(&mut buf).expect_err("must not answer");
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    assert!(k.wait_exit(Duration::from_millis(10)).is_none());
}

#[test]
fn fault_unhealthy_and_unhealthy_while() {
    let h = host();
    let port = free_port();
    let _k = start(&h, port, Some("unhealthy"));
    let r = wait_http(port, "/healthz", 500, Duration::from_secs(3));
    assert_eq!(
        r.body,
        "[-]ping failed: reason withheld\nhealthz check failed\n"
    );

    let flag = h.path().join("sick");
    let port = free_port();
    let _k2 = start(
        &h,
        port,
        Some(&format!("unhealthy-while={}", flag.display())),
    );
    wait_http(port, "/healthz", 200, Duration::from_secs(3));
    std::fs::write(&flag, "").unwrap();
    assert_eq!(http(port, "GET", "/healthz").unwrap().code, 500);
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(http(port, "GET", "/healthz").unwrap().code, 200);
}

#[test]
fn fault_slow_start() {
    let h = host();
    let port = free_port();
    let t = Instant::now();
    let k = start(&h, port, Some("slow-start=1"));
    k.wait_status(Duration::from_secs(3), |_| true);
    assert!(
        http(port, "GET", "/healthz").is_err(),
        "healthz must not listen yet"
    );
    wait_http(port, "/healthz", 200, Duration::from_secs(3));
    assert!(t.elapsed() >= Duration::from_millis(900));
}

#[test]
fn fault_ignore_sigterm_needs_sigkill() {
    let h = host();
    let port = free_port();
    let mut k = start(&h, port, Some("ignore-sigterm,unhealthy"));
    wait_http(port, "/healthz", 500, Duration::from_secs(3));
    k.signal(libc::SIGTERM);
    assert!(
        k.wait_exit(Duration::from_millis(500)).is_none(),
        "SIGTERM must be ignored"
    );
    k.signal(libc::SIGKILL);
    let st = k.wait_exit(Duration::from_secs(2)).expect("SIGKILL works");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL));
}

#[test]
fn bad_fault_spec_is_an_error() {
    let h = host();
    let mut k = start(&h, 0, Some("explode"));
    assert_eq!(
        k.wait_exit(Duration::from_secs(2)).expect("exit").code(),
        Some(1)
    );
}
