//! The parts of a Marathon app definition the emulator uses, and the task environment built from it.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::javafmt::java_double_to_string;

/// Marathon defaults (RAML `app.raml`): cpus 1, mem 128, disk 0, gpus 0.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub cmd: Option<String>,
    pub args: Option<Vec<String>>,
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub gpus: i64,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub version: Option<String>,
    pub kill_grace: Option<f64>,
    /// Requested ports (port number, optional name); 0 = any.
    pub ports: Vec<(u16, Option<String>)>,
    pub health_checks: Vec<HealthCheckDef>,
}

#[derive(Debug, Clone)]
pub struct HealthCheckDef {
    pub protocol: String,
    pub path: String,
    pub port: Option<u16>,
    pub port_index: Option<usize>,
    pub command: Option<String>,
    pub ipv6: bool,
    pub delay: f64,
    pub interval: f64,
    pub timeout: f64,
    pub grace: f64,
    pub max_failures: u32,
}

impl HealthCheckDef {
    /// Protocols the Mesos executor runs itself (Marathon-level HTTP/HTTPS/TCP are run by Marathon).
    pub fn is_mesos_check(&self) -> bool {
        matches!(
            self.protocol.as_str(),
            "MESOS_HTTP" | "MESOS_HTTPS" | "MESOS_TCP" | "COMMAND"
        )
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    match v.and_then(Value::as_object) {
        Some(o) => o
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect(),
        None => Vec::new(),
    }
}

impl App {
    pub fn parse(text: &str) -> Result<App, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("app JSON: {e}"))?;
        if !v.is_object() {
            return Err("app JSON: not an object".into());
        }
        let mut id = v
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("/app")
            .to_string();
        if !id.starts_with('/') {
            id.insert(0, '/');
        }
        let cmd = v.get("cmd").and_then(Value::as_str).map(str::to_string);
        let args = match v.get("args") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| "app JSON: args must be strings".to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err("app JSON: args must be an array".into()),
        };
        match (&cmd, &args) {
            (Some(_), Some(_)) => {
                return Err("app JSON: cmd and args are mutually exclusive".into());
            }
            (None, None) => return Err("app JSON: one of cmd or args is required".into()),
            (None, Some(a)) if a.is_empty() => return Err("app JSON: args is empty".into()),
            _ => {}
        }
        let mut ports = Vec::new();
        if let Some(defs) = v.get("portDefinitions").and_then(Value::as_array) {
            for d in defs {
                let port = num(d, "port").unwrap_or(0.0) as u16;
                let name = d.get("name").and_then(Value::as_str).map(str::to_string);
                ports.push((port, name));
            }
        } else if let Some(ps) = v.get("ports").and_then(Value::as_array) {
            for p in ps {
                ports.push((p.as_f64().unwrap_or(0.0) as u16, None));
            }
        } else {
            // Apps.DefaultPortDefinitions: one random port named "default".
            ports.push((0, Some("default".to_string())));
        }
        let mut health_checks = Vec::new();
        if let Some(hcs) = v.get("healthChecks").and_then(Value::as_array) {
            for h in hcs {
                health_checks.push(HealthCheckDef {
                    protocol: h
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("HTTP")
                        .to_string(),
                    path: h
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or("/")
                        .to_string(),
                    port: num(h, "port").map(|p| p as u16),
                    port_index: num(h, "portIndex").map(|p| p as usize),
                    command: h
                        .get("command")
                        .and_then(|c| c.get("value"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    ipv6: h.get("ipProtocol").and_then(Value::as_str) == Some("IPv6"),
                    delay: num(h, "delaySeconds").unwrap_or(15.0),
                    interval: num(h, "intervalSeconds").unwrap_or(60.0),
                    timeout: num(h, "timeoutSeconds").unwrap_or(20.0),
                    grace: num(h, "gracePeriodSeconds").unwrap_or(300.0),
                    max_failures: num(h, "maxConsecutiveFailures").unwrap_or(3.0) as u32,
                });
            }
        }
        Ok(App {
            id,
            cmd,
            args,
            cpus: num(&v, "cpus").unwrap_or(1.0),
            mem: num(&v, "mem").unwrap_or(128.0),
            disk: num(&v, "disk").unwrap_or(0.0),
            gpus: num(&v, "gpus").unwrap_or(0.0) as i64,
            env: string_map(v.get("env")),
            labels: string_map(v.get("labels")),
            version: v.get("version").and_then(Value::as_str).map(str::to_string),
            kill_grace: num(&v, "taskKillGracePeriodSeconds"),
            ports,
            health_checks,
        })
    }

    /// Marathon's `PathId.safePath`: `/k8s/kubelet` → `k8s_kubelet`.
    pub fn safe_path(&self) -> String {
        self.id
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("_")
    }

    /// Host ports for the app's port definitions: the requested port, or a free ephemeral one for 0.
    pub fn assign_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .map(|(p, _)| {
                if *p != 0 {
                    *p
                } else {
                    TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .map(|a| a.port())
                        .unwrap_or(31000)
                }
            })
            .collect()
    }
}

/// `[^a-zA-Z0-9_]+` → `_`, then upper-case (EnvironmentHelper.labelsToEnvVars).
pub fn sanitize_label_key(key: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c.to_ascii_uppercase());
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

/// Inputs the agent/executor side contributes to the environment.
pub struct ExecutorContext {
    pub task_id: String,
    pub framework_id: String,
    pub agent_id: String,
    pub agent_endpoint: String,
    pub sandbox: String,
    pub host: String,
    pub role: String,
    pub extra_env: Vec<(String, String)>,
    /// Seconds; `None` when the app sets no `taskKillGracePeriodSeconds` (no kill policy).
    pub kill_policy_grace: Option<f64>,
    pub version: String,
    pub ports: Vec<u16>,
}

pub const HOST_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// stout's `Duration` stringification (`5secs`, `1.5mins`, `500ms`).
pub fn stout_duration(secs: f64) -> String {
    let (v, unit) = if secs < 1e-6 {
        (secs * 1e9, "ns")
    } else if secs < 1e-3 {
        (secs * 1e6, "us")
    } else if secs < 1.0 {
        (secs * 1e3, "ms")
    } else if secs < 60.0 {
        (secs, "secs")
    } else if secs < 3600.0 {
        (secs / 60.0, "mins")
    } else if secs < 86400.0 {
        (secs / 3600.0, "hrs")
    } else if secs < 7.0 * 86400.0 {
        (secs / 86400.0, "days")
    } else {
        (secs / (7.0 * 86400.0), "weeks")
    };
    let v = (v * 1e9).round() / 1e9;
    format!("{v}{unit}")
}

/// The complete task environment, in the layering of Mesos' command executor:
/// 1. the executor's environment (agent `--executor_environment_variables`, default PATH, then the
///    agent's `executorEnvironment()` variables, then `MESOS_SANDBOX` from the containerizer);
/// 2. `CommandInfo.environment` = Marathon's `taskContextEnv ++ ports/HOST ++ app.env`;
/// 3. `MESOS_ALLOCATION_ROLE`, always.
pub fn task_environment(app: &App, cx: &ExecutorContext) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // (1) executor environment — slave.cpp executorEnvironment()
    for (k, v) in &cx.extra_env {
        env.insert(k.clone(), v.clone());
    }
    env.entry("PATH".into())
        .or_insert_with(|| HOST_DEFAULT_PATH.to_string());
    let shutdown_grace = match cx.kill_policy_grace {
        // getExecutorInfo: kill grace + MAX_REAP_INTERVAL (1 s) + 1 s
        Some(g) => g + 2.0,
        None => 5.0,
    };
    let executor = [
        ("LIBPROCESS_PORT", "0".to_string()),
        ("MESOS_FRAMEWORK_ID", cx.framework_id.clone()),
        ("MESOS_EXECUTOR_ID", cx.task_id.clone()),
        ("MESOS_DIRECTORY", cx.sandbox.clone()),
        ("MESOS_SLAVE_ID", cx.agent_id.clone()),
        ("MESOS_SLAVE_PID", format!("slave(1)@{}", cx.agent_endpoint)),
        ("MESOS_AGENT_ENDPOINT", cx.agent_endpoint.clone()),
        ("MESOS_CHECKPOINT", "1".to_string()),
        ("MESOS_HTTP_COMMAND_EXECUTOR", "0".to_string()),
        ("MESOS_RECOVERY_TIMEOUT", "15mins".to_string()),
        ("MESOS_SUBSCRIPTION_BACKOFF_MAX", "2secs".to_string()),
        (
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
            stout_duration(shutdown_grace),
        ),
        ("MESOS_SANDBOX", cx.sandbox.clone()),
    ];
    for (k, v) in executor {
        env.insert(k.to_string(), v);
    }
    // (2) CommandInfo.environment — Marathon TaskBuilder
    env.insert("MESOS_TASK_ID".into(), cx.task_id.clone());
    env.insert("MARATHON_APP_ID".into(), app.id.clone());
    env.insert("MARATHON_APP_VERSION".into(), cx.version.clone());
    env.insert(
        "MARATHON_APP_RESOURCE_CPUS".into(),
        java_double_to_string(app.cpus),
    );
    env.insert(
        "MARATHON_APP_RESOURCE_MEM".into(),
        java_double_to_string(app.mem),
    );
    env.insert(
        "MARATHON_APP_RESOURCE_DISK".into(),
        java_double_to_string(app.disk),
    );
    env.insert("MARATHON_APP_RESOURCE_GPUS".into(), app.gpus.to_string());
    let valid: Vec<(String, &String)> = app
        .labels
        .iter()
        .filter(|(k, v)| k.len() < 512 - "MARATHON_APP_LABEL_".len() && v.len() < 512)
        .map(|(k, v)| (sanitize_label_key(k), v))
        .collect();
    env.insert(
        "MARATHON_APP_LABELS".into(),
        valid
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    for (k, v) in &valid {
        env.insert(format!("MARATHON_APP_LABEL_{k}"), (*v).clone());
    }
    // ports (EnvironmentHelper.portsEnv) and HOST
    if !cx.ports.is_empty() {
        for (i, p) in cx.ports.iter().enumerate() {
            env.insert(format!("PORT{i}"), p.to_string());
            if let Some((req, name)) = app.ports.get(i) {
                if *req != 0 {
                    env.insert(format!("PORT_{req}"), p.to_string());
                }
                if let Some(n) = name {
                    env.insert(format!("PORT_{}", n.to_uppercase()), p.to_string());
                }
            }
        }
        env.insert("PORT".into(), cx.ports[0].to_string());
        env.insert(
            "PORTS".into(),
            cx.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    env.insert("HOST".into(), cx.host.clone());
    for (k, v) in &app.env {
        env.insert(k.clone(), v.clone());
    }
    // (3) executor.cpp launch(): MESOS_ALLOCATION_ROLE overrides everything.
    env.insert("MESOS_ALLOCATION_ROLE".into(), cx.role.clone());
    env
}

/// Marathon's `Timestamp.toString`: ISO-8601, UTC, milliseconds (`2015-02-03T12:30:00.000Z`).
pub fn iso8601_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    iso8601(d.as_secs() as i64, d.subsec_millis())
}

pub fn iso8601(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// A random RFC-4122 v4 UUID from /dev/urandom.
pub fn uuid4() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        assert_eq!(sanitize_label_key("owner"), "OWNER");
        assert_eq!(sanitize_label_key("a.b-c/d"), "A_B_C_D");
        assert_eq!(sanitize_label_key("x..y"), "X_Y");
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1422966600, 0), "2015-02-03T12:30:00.000Z");
        assert_eq!(iso8601(951782400, 7), "2000-02-29T00:00:00.007Z");
    }

    #[test]
    fn durations() {
        assert_eq!(stout_duration(5.0), "5secs");
        assert_eq!(stout_duration(12.0), "12secs");
        assert_eq!(stout_duration(90.0), "1.5mins");
        assert_eq!(stout_duration(0.5), "500ms");
    }

    #[test]
    fn safe_path_and_defaults() {
        let a = App::parse(r#"{"id":"/k8s/kubelet","cmd":"true"}"#).unwrap();
        assert_eq!(a.safe_path(), "k8s_kubelet");
        assert_eq!(a.cpus, 1.0);
        assert_eq!(a.mem, 128.0);
        assert_eq!(a.ports.len(), 1);
        assert!(App::parse(r#"{"id":"/x","cmd":"a","args":["b"]}"#).is_err());
        assert!(App::parse(r#"{"id":"/x"}"#).is_err());
    }
}
