//! pflag-style command line parsing with kubelet's flag names and kubelet's value rules.

use crate::quantity::Quantity;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Boolean flags (pflag NoOptDefVal = "true").
const BOOL_FLAGS: &[&str] = &[
    "experimental-allocatable-ignore-eviction",
    "register-node",
    "register-schedulable",
    "enable-server",
    "enable-debugging-handlers",
    "contention-profiling",
    "rotate-certificates",
    "rotate-server-certificates",
    "anonymous-auth",
    "exit-on-lock-contention",
    "fail-swap-on",
    "kernel-memcg-notification",
    "cgroups-per-qos",
    "cpu-cfs-quota",
    "local-storage-capacity-isolation",
    "fail-cgroupv1",
    "help",
];

/// Flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    // resources / eviction
    "system-reserved",
    "kube-reserved",
    "system-reserved-cgroup",
    "kube-reserved-cgroup",
    "enforce-node-allocatable",
    "reserved-cpus",
    "reserved-memory",
    "eviction-hard",
    "eviction-soft",
    "eviction-soft-grace-period",
    "eviction-max-pod-grace-period",
    "eviction-minimum-reclaim",
    "eviction-pressure-transition-period",
    "max-pods",
    "pods-per-core",
    "pod-max-pids",
    "cpu-manager-policy",
    "cpu-manager-policy-options",
    "cpu-manager-reconcile-period",
    "memory-manager-policy",
    "topology-manager-policy",
    "topology-manager-policy-options",
    "topology-manager-scope",
    "qos-reserved",
    "cpu-cfs-quota-period",
    "image-gc-high-threshold",
    "image-gc-low-threshold",
    "minimum-image-ttl-duration",
    // health / server
    "healthz-port",
    "healthz-bind-address",
    "port",
    "read-only-port",
    "address",
    "node-status-update-frequency",
    "sync-frequency",
    "runtime-request-timeout",
    "streaming-connection-idle-timeout",
    // config
    "config",
    "config-dir",
    "feature-gates",
    "kubeconfig",
    "bootstrap-kubeconfig",
    "cert-dir",
    "tls-cert-file",
    "tls-private-key-file",
    "tls-cipher-suites",
    "tls-min-version",
    "client-ca-file",
    "authentication-token-webhook",
    "authentication-token-webhook-cache-ttl",
    "authorization-mode",
    "authorization-webhook-cache-authorized-ttl",
    "authorization-webhook-cache-unauthorized-ttl",
    "root-dir",
    "lock-file",
    "v",
    "vmodule",
    "logging-format",
    "log-flush-frequency",
    // registration
    "register-with-taints",
    "node-labels",
    "node-ip",
    "hostname-override",
    "provider-id",
    "cloud-provider",
    "node-status-max-images",
    // cgroups
    "cgroup-driver",
    "cgroup-root",
    "kubelet-cgroups",
    "runtime-cgroups",
    "system-cgroups",
    // runtime
    "container-runtime-endpoint",
    "image-service-endpoint",
    "pod-infra-container-image",
    "image-credential-provider-config",
    "image-credential-provider-bin-dir",
    // static pods
    "pod-manifest-path",
];

const MAP_FLAGS: &[&str] = &[
    "system-reserved",
    "kube-reserved",
    "eviction-hard",
    "eviction-soft",
    "eviction-soft-grace-period",
    "eviction-minimum-reclaim",
    "node-labels",
    "feature-gates",
    "qos-reserved",
];

/// `--authentication-token-webhook` is a bool in kubelet; keep it in the bool list semantics.
fn is_bool(name: &str) -> bool {
    BOOL_FLAGS.contains(&name) || name == "authentication-token-webhook"
}

fn is_known(name: &str) -> bool {
    is_bool(name) || VALUE_FLAGS.contains(&name) || name == "version"
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub pid: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ThresholdValue {
    Quantity(i64),
    /// fraction as kubelet's float32 (percentage / 100)
    Percentage(f32),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub argv: Vec<String>,
    pub system_reserved: Reserved,
    pub kube_reserved: Reserved,
    /// signal -> threshold (all `<` i.e. LessThan)
    pub eviction_hard: BTreeMap<String, ThresholdValue>,
    pub ignore_eviction: bool,
    pub healthz_port: u16,
    pub healthz_bind_address: IpAddr,
    pub max_pods: i64,
    pub root_dir: PathBuf,
    pub pod_manifest_path: Option<PathBuf>,
    pub hostname_override: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub node_status_update_frequency: Duration,
    /// Whether the update frequency was given (then it is also the report frequency).
    pub node_status_update_frequency_explicit: bool,
}

pub enum ParseOutcome {
    Run(Box<Config>),
    Help,
    Version,
}

#[derive(Debug)]
pub struct FlagError(pub String);

pub fn parse_bool(name: &str, v: &str) -> Result<bool, FlagError> {
    // strconv.ParseBool
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(FlagError(format!(
            "invalid argument {v:?} for \"--{name}\" flag: strconv.ParseBool: parsing {v:?}: invalid syntax"
        ))),
    }
}

/// Split argv (without program name) into name -> last value, pflag style.
pub fn split_args(args: &[String]) -> Result<BTreeMap<String, String>, FlagError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            if i < args.len() {
                return Err(FlagError(format!(
                    "unknown command {:?} for \"kubelet\"",
                    args[i]
                )));
            }
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if name.is_empty() || name.starts_with('-') || name.starts_with('=') {
                return Err(FlagError(format!("bad flag syntax: {a}")));
            }
            if !is_known(&name) {
                return Err(FlagError(format!("unknown flag: --{name}")));
            }
            let value = if is_bool(&name) || name == "version" {
                let v = inline.unwrap_or_else(|| "true".to_string());
                if name != "version" {
                    parse_bool(&name, &v)?;
                }
                v
            } else if let Some(v) = inline {
                v
            } else if i < args.len() {
                i += 1;
                args[i - 1].clone()
            } else {
                return Err(FlagError(format!("flag needs an argument: --{name}")));
            };
            // map flags (cliflag.MapStringString / LangleSeparatedMapStringString): the first
            // occurrence replaces the default, later occurrences add keys
            if MAP_FLAGS.contains(&name.as_str())
                && let Some(prev) = out.get_mut(&name)
            {
                if !value.is_empty() {
                    if !prev.is_empty() {
                        prev.push(',');
                    }
                    prev.push_str(&value);
                }
                continue;
            }
            out.insert(name, value);
        } else if let Some(short) = a.strip_prefix('-') {
            if short.is_empty() {
                return Err(FlagError(format!("unknown command {a:?} for \"kubelet\"")));
            }
            let c = short.chars().next().unwrap_or('?');
            if c == 'h' {
                out.insert("help".into(), "true".into());
                continue;
            }
            return Err(FlagError(format!("unknown shorthand flag: '{c}' in {a}")));
        } else {
            return Err(FlagError(format!("unknown command {a:?} for \"kubelet\"")));
        }
    }
    Ok(out)
}

/// kubelet `parseResourceList` for --system-reserved / --kube-reserved.
pub fn parse_reserved(flag: &str, s: &str) -> Result<Reserved, FlagError> {
    let mut r = Reserved::default();
    let s = s.trim();
    if s.is_empty() {
        return Ok(r);
    }
    for pair in s.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(FlagError(format!(
                "invalid argument {s:?} for \"--{flag}\" flag: {pair} must be formatted as key=value"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        if !matches!(k, "cpu" | "memory" | "ephemeral-storage" | "pid") {
            return Err(FlagError(format!("cannot reserve {k:?} resource")));
        }
        let q = Quantity::parse(v).map_err(|e| FlagError(format!("--{flag}: {k}={v}: {e}")))?;
        if q.is_negative() {
            return Err(FlagError(format!(
                "resource quantity for {k:?} cannot be negative: {v}"
            )));
        }
        match k {
            "cpu" => r.cpu_millicores = q.milli_value(),
            "memory" => r.memory_bytes = q.value(),
            "ephemeral-storage" => r.ephemeral_storage_bytes = q.value(),
            _ => r.pid = q.value(),
        }
    }
    Ok(r)
}

const EVICTION_SIGNALS: &[&str] = &[
    "memory.available",
    "allocatableMemory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
];

pub fn default_eviction_hard() -> BTreeMap<String, ThresholdValue> {
    let mut m = BTreeMap::new();
    m.insert(
        "memory.available".to_string(),
        ThresholdValue::Quantity(100 << 20),
    );
    m.insert(
        "nodefs.available".to_string(),
        ThresholdValue::Percentage(10.0f32 / 100.0),
    );
    m.insert(
        "nodefs.inodesFree".to_string(),
        ThresholdValue::Percentage(5.0f32 / 100.0),
    );
    m.insert(
        "imagefs.available".to_string(),
        ThresholdValue::Percentage(15.0f32 / 100.0),
    );
    m
}

/// `cliflag.LangleSeparatedMapStringString` + `eviction.ParseThresholdConfig`.
pub fn parse_eviction_hard(s: &str) -> Result<BTreeMap<String, ThresholdValue>, FlagError> {
    let mut m = BTreeMap::new();
    let s = s.trim();
    if s.is_empty() {
        return Ok(m);
    }
    for pair in s.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('<') else {
            return Err(FlagError(format!(
                "invalid argument {s:?} for \"--eviction-hard\" flag: malformed pair, expect string<string"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        if !EVICTION_SIGNALS.contains(&k) {
            return Err(FlagError(format!("unsupported eviction signal {k}")));
        }
        // kubelet ignores (disables) 0% and 100% thresholds
        if v == "0%" || v == "100%" {
            continue;
        }
        let t = if let Some(p) = v.strip_suffix('%') {
            let f: f32 = p
                .parse()
                .map_err(|_| FlagError(format!("invalid percentage for {k}: {v}")))?;
            if !f.is_finite() || f < 0.0 {
                return Err(FlagError(format!(
                    "eviction percentage threshold {k} must be >= 0%: {v}"
                )));
            }
            if f > 100.0 {
                return Err(FlagError(format!(
                    "eviction percentage threshold {k} must be <= 100%: {v}"
                )));
            }
            ThresholdValue::Percentage(f / 100.0)
        } else {
            let q = Quantity::parse(v)
                .map_err(|e| FlagError(format!("--eviction-hard: {k}<{v}: {e}")))?;
            if q.is_negative() || q.is_zero() {
                return Err(FlagError(format!(
                    "eviction threshold {k} must be positive: {v}"
                )));
            }
            ThresholdValue::Quantity(q.value())
        };
        m.insert(k.to_string(), t);
    }
    Ok(m)
}

/// Go `time.ParseDuration`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

fn int_flag(raw: &BTreeMap<String, String>, name: &str) -> Result<Option<i64>, FlagError> {
    match raw.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            FlagError(format!(
                "invalid argument {v:?} for \"--{name}\" flag: strconv.ParseInt: parsing {v:?}: invalid syntax"
            ))
        }),
    }
}

pub fn parse(argv: Vec<String>) -> Result<ParseOutcome, FlagError> {
    let mut raw = split_args(&argv[1.min(argv.len())..])?;
    // --config: file values, overridden by command-line flags
    if let Some(path) = raw.get("config").filter(|p| !p.is_empty()).cloned() {
        let from_file = crate::config_file::load(std::path::Path::new(&path)).map_err(FlagError)?;
        for (k, v) in from_file {
            raw.entry(k).or_insert(v);
        }
    }
    if raw.get("help").is_some_and(|v| v == "true" || v == "1") {
        return Ok(ParseOutcome::Help);
    }
    if let Some(v) = raw.get("version")
        && v != "false"
    {
        return Ok(ParseOutcome::Version);
    }
    let system_reserved = match raw.get("system-reserved") {
        Some(v) => parse_reserved("system-reserved", v)?,
        None => Reserved::default(),
    };
    let kube_reserved = match raw.get("kube-reserved") {
        Some(v) => parse_reserved("kube-reserved", v)?,
        None => Reserved::default(),
    };
    let eviction_hard = match raw.get("eviction-hard") {
        Some(v) => parse_eviction_hard(v)?,
        None => default_eviction_hard(),
    };
    let ignore_eviction = match raw.get("experimental-allocatable-ignore-eviction") {
        Some(v) => parse_bool("experimental-allocatable-ignore-eviction", v)?,
        None => false,
    };
    let healthz_port = match int_flag(&raw, "healthz-port")? {
        None => 10248,
        Some(p) if (0..=65535).contains(&p) => p as u16,
        Some(p) => {
            return Err(FlagError(format!(
                "invalid configuration: healthzPort (--healthz-port) {p} must be between 1 and 65535, inclusive"
            )));
        }
    };
    let healthz_bind_address = match raw.get("healthz-bind-address") {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(v) => v.parse().map_err(|_| {
            FlagError(format!(
                "invalid argument {v:?} for \"--healthz-bind-address\" flag: failed to parse IP: {v:?}"
            ))
        })?,
    };
    let max_pods = int_flag(&raw, "max-pods")?.unwrap_or(110);
    if max_pods < 0 {
        return Err(FlagError(format!(
            "invalid configuration: maxPods (--max-pods) {max_pods} must not be a negative number"
        )));
    }
    int_flag(&raw, "v")?;
    let node_status_update_frequency = match raw.get("node-status-update-frequency") {
        None => Duration::from_secs(10),
        Some(v) => parse_go_duration(v).ok_or_else(|| {
            FlagError(format!(
                "invalid argument {v:?} for \"--node-status-update-frequency\" flag: time: invalid duration {v:?}"
            ))
        })?,
    };
    if node_status_update_frequency.is_zero() {
        return Err(FlagError(
            "invalid configuration: nodeStatusUpdateFrequency (--node-status-update-frequency) 0s must be greater than 0"
                .into(),
        ));
    }
    let path = |n: &str| raw.get(n).filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(ParseOutcome::Run(Box::new(Config {
        argv,
        system_reserved,
        kube_reserved,
        eviction_hard,
        ignore_eviction,
        healthz_port,
        healthz_bind_address,
        max_pods,
        root_dir: path("root-dir").unwrap_or_else(|| PathBuf::from("/var/lib/kubelet")),
        pod_manifest_path: path("pod-manifest-path"),
        hostname_override: raw
            .get("hostname-override")
            .filter(|v| !v.is_empty())
            .cloned(),
        kubeconfig: path("kubeconfig"),
        node_status_update_frequency,
        node_status_update_frequency_explicit: raw.contains_key("node-status-update-frequency"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        std::iter::once("fake-kubelet")
            .chain(a.iter().copied())
            .map(String::from)
            .collect()
    }

    fn cfg(a: &[&str]) -> Config {
        match parse(args(a)).unwrap_or_else(|e| panic!("{}", e.0)) {
            ParseOutcome::Run(c) => *c,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn forms() {
        let c = cfg(&[
            "--system-reserved=cpu=500m,memory=1Gi",
            "--kube-reserved",
            "cpu=1,memory=2Gi,ephemeral-storage=1Gi,pid=1000",
            "--experimental-allocatable-ignore-eviction",
            "--healthz-port",
            "0",
            "--fail-swap-on=false",
            "--v=2",
        ]);
        assert_eq!(c.system_reserved.cpu_millicores, 500);
        assert_eq!(c.system_reserved.memory_bytes, 1 << 30);
        assert_eq!(c.kube_reserved.cpu_millicores, 1000);
        assert_eq!(c.kube_reserved.pid, 1000);
        assert!(c.ignore_eviction);
        let c2 = cfg(&["--system-reserved=cpu=1", "--system-reserved", "memory=1Gi"]);
        assert_eq!(c2.system_reserved.cpu_millicores, 1000);
        assert_eq!(c2.system_reserved.memory_bytes, 1 << 30);
        assert_eq!(c.healthz_port, 0);
    }

    #[test]
    fn errors() {
        let e = |a: &[&str]| match parse(args(a)) {
            Err(e) => e.0,
            Ok(_) => panic!("{a:?} should fail"),
        };
        assert_eq!(e(&["--xyz"]), "unknown flag: --xyz");
        assert_eq!(
            e(&["--system-reserved=gpu=1"]),
            "cannot reserve \"gpu\" resource"
        );
        assert!(
            e(&["--kube-reserved=memory=-1Gi"])
                .starts_with("resource quantity for \"memory\" cannot be negative")
        );
        assert!(e(&["--max-pods=abc"]).contains("max-pods"));
        assert!(e(&["--fail-swap-on=maybe"]).contains("ParseBool"));
        assert!(e(&["--eviction-hard=memory.available=1Gi"]).contains("malformed pair"));
        assert!(e(&["--healthz-port"]).contains("needs an argument"));
        assert!(e(&["--node-status-update-frequency=10"]).contains("invalid duration"));
    }

    #[test]
    fn eviction() {
        let m = parse_eviction_hard("memory.available<500Mi,nodefs.available<10%").unwrap();
        assert_eq!(m["memory.available"], ThresholdValue::Quantity(500 << 20));
        assert_eq!(m["nodefs.available"], ThresholdValue::Percentage(0.1));
        assert_eq!(cfg(&[]).eviction_hard, default_eviction_hard());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("abc"), None);
    }
}
