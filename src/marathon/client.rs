//! The Marathon REST client: URL building, authentication header, and the mapping of every
//! failure to one line and a documented exit code (see the module doc of [`super`]).

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;

use crate::exit::{ExitStatus, Failure};

/// Longest piece of a non-JSON error body quoted in a failure line.
const MAX_QUOTED: usize = 200;

/// A checked Marathon base URL (no trailing slash, no credentials, no query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `scheme://host[:port][/path]`, without a trailing `/`.
    pub url: String,
    /// `user:pass` found in the URL's userinfo, if any (used as Basic credentials, never printed).
    pub userinfo: Option<String>,
}

/// Parses `--marathon-url`. Accepts `http`/`https` with an optional path prefix (DC/OS:
/// `https://master/service/marathon`).
pub fn parse_base_url(raw: &str) -> Result<BaseUrl, Failure> {
    let usage = |why: &str| {
        Failure::new(
            ExitStatus::Usage,
            format!(
                "marathon: --marathon-url (MARATHON_URL) {raw:?} {why}; expected e.g. http://marathon.example:8080 or https://master/service/marathon"
            ),
        )
    };
    let mut url =
        reqwest::Url::parse(raw.trim()).map_err(|e| usage(&format!("is not a URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(usage("must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(usage("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(usage("must not have a query or fragment"));
    }
    let userinfo = if url.username().is_empty() {
        None
    } else {
        let user = percent_decode(url.username());
        let pass = percent_decode(url.password().unwrap_or(""));
        Some(format!("{user}:{pass}"))
    };
    // Both setters only fail for URLs that cannot have credentials, which http(s) always can.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let text = url.as_str().trim_end_matches('/').to_string();
    Ok(BaseUrl {
        url: text,
        userinfo,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalises and checks an app id (`--app-id`, `KRW_APP_ID`): absolute, lowercase path segments as
/// Marathon's `pathType` allows (`[a-z0-9]`, inner `-` and `.`).
pub fn normalize_app_id(raw: &str) -> Result<String, Failure> {
    let trimmed = raw.trim().trim_matches('/');
    let bad = |why: &str| {
        Failure::new(
            ExitStatus::Usage,
            format!(
                "marathon: --app-id (KRW_APP_ID) {raw:?} {why}; expected a path like /k8s/kubelet (lowercase letters, digits, '-' and '.', segments not starting or ending with '-')"
            ),
        )
    };
    if trimmed.is_empty() {
        return Err(bad("is empty"));
    }
    for seg in trimmed.split('/') {
        let ok_chars = seg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let edges_ok = !seg.starts_with(['-', '.']) && !seg.ends_with('-');
        if seg.is_empty() || !ok_chars || !edges_ok || seg == ".." || seg == "." {
            return Err(bad(&format!("has an invalid segment {seg:?}")));
        }
    }
    Ok(format!("/{trimmed}"))
}

/// `{base}/v2/apps{app_id}` (the id starts with `/`).
pub fn app_url(base: &str, app_id: &str) -> String {
    format!("{base}/v2/apps{app_id}")
}

/// Standard base64 with padding (for the Basic header).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sym = |shift: u32| ALPHABET[((n >> shift) & 63) as usize] as char;
        out.push(sym(18));
        out.push(sym(12));
        out.push(if chunk.len() > 1 { sym(6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(0) } else { '=' });
    }
    out
}

/// The `Authorization` header value: `Basic base64(user:pass)` from `--user`, or DC/OS
/// `token=<T>` from `--token`. Both at once is a usage error; `--user` must contain `:`.
pub fn auth_header(
    user: Option<&str>,
    token: Option<&str>,
    url_userinfo: Option<&str>,
) -> Result<Option<String>, Failure> {
    let user = user.filter(|u| !u.is_empty());
    let token = token.filter(|t| !t.is_empty());
    match (user, token) {
        (Some(_), Some(_)) => Err(Failure::new(
            ExitStatus::Usage,
            "marathon: give either --user (MARATHON_CREDENTIALS) or --token (MARATHON_TOKEN), not both",
        )),
        (Some(u), None) => {
            if !u.contains(':') {
                return Err(Failure::new(
                    ExitStatus::Usage,
                    "marathon: --user (MARATHON_CREDENTIALS) must be USER:PASS (the value of Marathon's --http_credentials)",
                ));
            }
            Ok(Some(format!("Basic {}", base64(u.as_bytes()))))
        }
        (None, Some(t)) => Ok(Some(format!("token={t}"))),
        (None, None) => Ok(url_userinfo.map(|u| format!("Basic {}", base64(u.as_bytes())))),
    }
}

/// A successful Marathon answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status (2xx).
    pub status: u16,
    /// Parsed JSON body (`Null` when empty).
    pub body: Value,
    /// The `Marathon-Deployment-Id` header, if any.
    pub deployment_header: Option<String>,
}

/// A configured connection to one Marathon.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL without trailing slash.
    pub base: String,
    /// Request timeout (each request).
    pub timeout: Duration,
}

impl Client {
    /// Builds the client; `auth` is the full `Authorization` value.
    pub fn new(base: String, auth: Option<String>, timeout: Duration) -> Result<Client, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(a) = auth {
            let mut v = HeaderValue::from_str(&a).map_err(|_| {
                Failure::new(
                    ExitStatus::Usage,
                    "marathon: credentials or token contain characters not allowed in an HTTP header",
                )
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!(
                "kubelet-resource-wrapper/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| {
                Failure::new(
                    ExitStatus::Software,
                    format!("marathon: cannot build the HTTP client: {e}"),
                )
            })?;
        Ok(Client {
            http,
            base,
            timeout,
        })
    }

    /// Sends one request to `{base}{path_and_query}`; non-2xx answers become a [`Failure`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        tracing::debug!(%method, %url, "marathon request");
        let resp = req
            .send()
            .await
            .map_err(|e| transport_failure(&method, &url, e, self.timeout))?;
        let status = resp.status().as_u16();
        let deployment_header = resp
            .headers()
            .get("Marathon-Deployment-Id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .text()
            .await
            .map_err(|e| transport_failure(&method, &url, e, self.timeout))?;
        if !(200..300).contains(&status) {
            return Err(api_failure(&method, &url, status, &text));
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                Failure::new(
                    ExitStatus::Software,
                    format!(
                        "marathon: {method} {url}: answer {status} is not JSON ({e}): {}",
                        quote(&text)
                    ),
                )
            })?
        };
        Ok(Answer {
            status,
            body,
            deployment_header,
        })
    }

    /// `GET` returning the JSON body.
    pub async fn get(&self, path_and_query: &str) -> Result<Value, Failure> {
        Ok(self.send(Method::GET, path_and_query, None).await?.body)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ")
}

fn transport_failure(method: &Method, url: &str, e: reqwest::Error, timeout: Duration) -> Failure {
    let e = e.without_url();
    let why = if e.is_timeout() {
        format!("no answer within {}s (--timeout)", timeout.as_secs_f64())
    } else if e.is_connect() {
        format!("cannot connect ({})", error_chain(&e))
    } else {
        error_chain(&e)
    };
    Failure::new(
        ExitStatus::Unavailable,
        one_line(&format!(
            "marathon: {method} {url}: Marathon unreachable: {why}; check --marathon-url (MARATHON_URL)"
        )),
    )
}

/// Marathon's own words from an error body: `message` (+ 422 `details`, 409 `deployments`), DC/OS's
/// `description`/`title`, or the quoted raw text.
pub fn marathon_message(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return quote(text);
    };
    let mut msg = v
        .get("message")
        .or_else(|| v.get("description"))
        .or_else(|| v.get("title"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| quote(text));
    if let Some(details) = v.get("details").and_then(Value::as_array) {
        let parts: Vec<String> = details
            .iter()
            .map(|d| {
                let path = d.get("path").and_then(Value::as_str).unwrap_or("/");
                let errors: Vec<String> = d
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|es| {
                        es.iter()
                            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                format!("{path}: {}", errors.join(", "))
            })
            .collect();
        if !parts.is_empty() {
            msg = format!("{msg} ({})", parts.join("; "));
        }
    }
    if let Some(deps) = v.get("deployments").and_then(Value::as_array) {
        let ids: Vec<&str> = deps
            .iter()
            .filter_map(|d| d.get("id").and_then(Value::as_str))
            .collect();
        if !ids.is_empty() {
            msg = format!("{msg} [deployments: {}]", ids.join(", "));
        }
    }
    msg
}

/// Maps a non-2xx answer to the documented exit code and one line naming the URL and Marathon's message.
pub fn api_failure(method: &Method, url: &str, status: u16, text: &str) -> Failure {
    let said = marathon_message(text);
    let (code, line) = match status {
        401 | 403 => (
            ExitStatus::Config,
            format!(
                "marathon: {method} {url}: authentication rejected ({status}): {said}; check --user (MARATHON_CREDENTIALS) or --token (MARATHON_TOKEN)"
            ),
        ),
        409 => (
            ExitStatus::TempFail,
            format!(
                "marathon: {method} {url}: 409 locked: {said}; wait for the running deployment (`marathon status`, `marathon deploy --wait`) and retry, or override with --force"
            ),
        ),
        400 | 422 => (
            ExitStatus::DataErr,
            format!("marathon: {method} {url}: app definition rejected ({status}): {said}"),
        ),
        404 => (
            ExitStatus::Software,
            format!(
                "marathon: {method} {url}: 404 not found: {said}; check --app-id (KRW_APP_ID) and --marathon-url, or run `marathon deploy` first"
            ),
        ),
        _ => (
            ExitStatus::Software,
            format!("marathon: {method} {url}: Marathon answered {status}: {said}"),
        ),
    };
    Failure::new(code, one_line(&line))
}

fn quote(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "(empty body)".to_string();
    }
    let mut cut: String = t.chars().take(MAX_QUOTED).collect();
    if cut.len() < t.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Collapses whitespace runs (newlines included) so a failure stays one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_trims_slash_keeps_prefix_and_strips_credentials() {
        let b = parse_base_url("http://127.0.0.1:8080/").unwrap();
        assert_eq!(b.url, "http://127.0.0.1:8080");
        assert_eq!(b.userinfo, None);
        let b = parse_base_url("https://master.example/service/marathon/").unwrap();
        assert_eq!(b.url, "https://master.example/service/marathon");
        let b = parse_base_url("http://ops:s%40cret@m:8080").unwrap();
        assert_eq!(b.url, "http://m:8080");
        assert_eq!(b.userinfo.as_deref(), Some("ops:s@cret"));
    }

    #[test]
    fn base_url_rejects_garbage_with_usage() {
        for bad in ["", "marathon:8080", "ftp://m", "http://m/?x=1", "not a url"] {
            let f = parse_base_url(bad).unwrap_err();
            assert_eq!(f.status, ExitStatus::Usage, "{bad}");
            assert!(f.message.contains("MARATHON_URL"));
        }
    }

    #[test]
    fn app_ids_are_normalised_and_checked() {
        assert_eq!(normalize_app_id("/k8s/kubelet").unwrap(), "/k8s/kubelet");
        assert_eq!(normalize_app_id("k8s/kubelet/").unwrap(), "/k8s/kubelet");
        assert_eq!(normalize_app_id("a.b-c/x1").unwrap(), "/a.b-c/x1");
        for bad in [
            "", "/", "/K8s", "/a//b", "/-a", "/a-", "/a b", "/../x", "/a?x",
        ] {
            assert_eq!(
                normalize_app_id(bad).unwrap_err().status,
                ExitStatus::Usage,
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_are_built_from_base_and_id() {
        assert_eq!(
            app_url("https://m/service/marathon", "/k8s/kubelet"),
            "https://m/service/marathon/v2/apps/k8s/kubelet"
        );
    }

    #[test]
    fn auth_header_basic_token_and_conflicts() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            auth_header(Some("user:pass"), None, None)
                .unwrap()
                .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert_eq!(
            auth_header(None, Some("eyJ0"), None).unwrap().as_deref(),
            Some("token=eyJ0")
        );
        assert_eq!(auth_header(None, None, None).unwrap(), None);
        assert_eq!(
            auth_header(None, None, Some("a:b")).unwrap().as_deref(),
            Some("Basic YTpi")
        );
        // Explicit options win over URL credentials; empty values count as absent.
        assert_eq!(
            auth_header(Some(""), Some("t"), Some("a:b"))
                .unwrap()
                .as_deref(),
            Some("token=t")
        );
        assert_eq!(
            auth_header(Some("u:p"), Some("t"), None)
                .unwrap_err()
                .status,
            ExitStatus::Usage
        );
        assert_eq!(
            auth_header(Some("nopass"), None, None).unwrap_err().status,
            ExitStatus::Usage
        );
    }

    #[test]
    fn failures_map_to_documented_codes_in_one_line() {
        let m = Method::PUT;
        let u = "http://m/v2/apps/k8s/kubelet";
        let f = api_failure(&m, u, 401, r#"{"message":"Invalid username or password."}"#);
        assert_eq!(f.status, ExitStatus::Config);
        assert!(f.message.contains("authentication rejected"));
        assert!(f.message.contains(u));
        assert!(f.message.contains("Invalid username or password."));
        assert_eq!(api_failure(&m, u, 403, "").status, ExitStatus::Config);
        let f = api_failure(
            &m,
            u,
            409,
            r#"{"message":"App is locked by one or more deployments.","deployments":[{"id":"d1"}]}"#,
        );
        assert_eq!(f.status, ExitStatus::TempFail);
        assert!(f.message.contains("d1"));
        assert!(f.message.contains("--force"));
        let f = api_failure(
            &m,
            u,
            422,
            r#"{"message":"Object is not valid","details":[{"path":"/instances","errors":["bad"]}]}"#,
        );
        assert_eq!(f.status, ExitStatus::DataErr);
        assert!(f.message.contains("/instances: bad"));
        assert_eq!(api_failure(&m, u, 400, "{").status, ExitStatus::DataErr);
        assert_eq!(
            api_failure(&m, u, 500, "boom\nline2").status,
            ExitStatus::Software
        );
        assert!(
            !api_failure(&m, u, 503, "<html>\n<body>x</body>\n</html>")
                .message
                .contains('\n')
        );
        let f = api_failure(
            &Method::GET,
            u,
            401,
            r#"{"title":"Unauthorized","description":"token expired"}"#,
        );
        assert!(f.message.contains("token expired"));
    }
}
