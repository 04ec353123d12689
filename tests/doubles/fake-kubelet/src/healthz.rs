//! Kubelet's 10248 healthz: a bare ping (healthz.InstallHandler with no checks).

use crate::faults::Faults;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

pub fn serve(listener: TcpListener, faults: Arc<Faults>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let faults = faults.clone();
        std::thread::spawn(move || {
            if faults.hang {
                // accept, never answer; keep the socket open
                let _keep = stream;
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            let _ = handle(stream, &faults);
        });
    }
}

fn handle(mut s: TcpStream, faults: &Faults) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > 16 * 1024 {
            return respond(
                &mut s,
                false,
                431,
                "Request Header Fields Too Large",
                "431 Request Header Fields Too Large",
            );
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(());
            }
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let head = method == "HEAD";
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let verbose = query
        .split('&')
        .any(|kv| kv == "verbose" || kv.starts_with("verbose="));
    let unhealthy = faults.is_unhealthy();
    match path {
        "/healthz" => {
            if unhealthy {
                respond(
                    &mut s,
                    head,
                    500,
                    "Internal Server Error",
                    "[-]ping failed: reason withheld\nhealthz check failed\n",
                )
            } else if verbose {
                respond(
                    &mut s,
                    head,
                    200,
                    "OK",
                    "[+]ping ok\nhealthz check passed\n",
                )
            } else {
                respond(&mut s, head, 200, "OK", "ok")
            }
        }
        "/healthz/ping" => {
            if unhealthy {
                respond(
                    &mut s,
                    head,
                    500,
                    "Internal Server Error",
                    "internal server error: fake-kubelet fault: unhealthy\n",
                )
            } else {
                respond(&mut s, head, 200, "OK", "ok")
            }
        }
        _ => respond(&mut s, head, 404, "Not Found", "404 page not found\n"),
    }
}

fn respond(
    s: &mut TcpStream,
    head: bool,
    code: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head {
        out.push_str(body);
    }
    s.write_all(out.as_bytes())?;
    s.flush()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}
