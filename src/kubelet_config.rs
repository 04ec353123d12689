//! Kubelet's `--config` file and `--config-dir` drop-ins (KubeletConfiguration,
//! `kubelet.config.k8s.io/v1beta1`, YAML or JSON), read the way kubelet reads them, so that no
//! field can change node allocatable or the health port behind the agent's back.
//!
//! Kubelet loads the config file, merges the drop-ins (`*.conf` under `--config-dir`, in
//! lexical order), then re-parses its command line over the result
//! (`cmd/kubelet/app/server.go`, `kubeletConfigFlagPrecedence`): **a flag always beats the
//! file**. So every field the agent sets by flag is *overridden* (the agent always passes
//! `--system-reserved`, `--kube-reserved`, `--eviction-hard`, `--healthz-port` and
//! `--healthz-bind-address`), and every other field that changes allocatable or how it is
//! enforced is *refused* with one line naming the field and the file (exit 64).
//! Field names are matched ignoring case, so a spelling kubelet might accept cannot slip by.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

use crate::fsread;

/// The only config version kubelet accepts.
pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The config kind.
pub const KIND: &str = "KubeletConfiguration";

/// Fields the agent's own flags override (flag precedence), with the flag.
pub const OVERRIDDEN: &[(&str, &str)] = &[
    ("systemReserved", "--system-reserved"),
    ("kubeReserved", "--kube-reserved"),
    ("evictionHard", "--eviction-hard"),
    ("healthzPort", "--healthz-port"),
    ("healthzBindAddress", "--healthz-bind-address"),
];

/// Fields refused because they change allocatable or how it is enforced, with the reason.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "reservedSystemCPUs",
        "it replaces the CPU reservation the agent computes (kubelet takes it over --system-reserved/--kube-reserved cpu)",
    ),
    (
        "reservedMemory",
        "it must add up to the memory reservations the agent computes per lease, or kubelet refuses to start",
    ),
    (
        "systemReservedCgroup",
        "it enforces system-reserved (capacity minus the lease, Mesos' share) on a host cgroup",
    ),
    (
        "kubeReservedCgroup",
        "it enforces kube-reserved on a host cgroup; the agent supports only pods enforcement",
    ),
];

/// Fields shown by `plan` because they bear on the node's resources but leave allocatable
/// (CPU, memory) as the agent computes it.
pub const SHOWN: &[&str] = &[
    "maxPods",
    "podsPerCore",
    "evictionSoft",
    "evictionSoftGracePeriod",
    "evictionMinimumReclaim",
    "mergeDefaultEvictionSettings",
    "enforceNodeAllocatable",
    "cgroupsPerQOS",
    "cgroupRoot",
    "cpuManagerPolicy",
    "memoryManagerPolicy",
];

/// Largest number of drop-in files read.
pub const MAX_DROPINS: usize = 256;

/// What became of a field the agent read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A flag the agent passes overrides it.
    OverriddenBy(&'static str),
    /// Kubelet uses it; it does not change allocatable.
    Used,
}

/// One field the agent read from a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The file it came from.
    pub file: PathBuf,
    /// The field name as written.
    pub name: String,
    /// Its value as compact JSON (cut at 200 characters).
    pub value: String,
    /// What the agent did with it.
    pub effect: Effect,
}

/// Why a config file is refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("kubelet config {0}")]
    Read(fsread::ReadError),
    /// The drop-in directory cannot be listed.
    #[error("kubelet --config-dir {path}: {reason}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file is not a YAML or JSON object.
    #[error("kubelet config {path} is not a YAML or JSON object: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// Wrong apiVersion or kind.
    #[error("kubelet config {path}: {problem}; expected apiVersion: {API_VERSION}, kind: {KIND}")]
    Version {
        /// The file.
        path: PathBuf,
        /// What was found.
        problem: String,
    },
    /// A field that changes allocatable.
    #[error("kubelet config {path} sets {field}, which is refused: {why}; remove it")]
    Refused {
        /// The file.
        path: PathBuf,
        /// The field as written.
        field: String,
        /// Why.
        why: String,
    },
}

/// Parses a KubeletConfiguration's text (JSON when it starts with `{`, else YAML) into its
/// top-level object.
pub fn parse(path: &Path, text: &str) -> Result<Map<String, Value>, ConfigError> {
    let syntax = |reason: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        reason: reason.lines().next().unwrap_or_default().to_string(),
    };
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?
    } else {
        // Kubelet's YAML reader (go-yaml via sigs.k8s.io/yaml) applies YAML 1.1 merge keys
        // (`<<: {reservedSystemCPUs: ...}`), so the agent applies them too before looking at
        // the fields; a merge left over after that (merge inside merge) is refused.
        let mut yaml: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| syntax(e.to_string()))?;
        yaml.apply_merge().map_err(|e| syntax(e.to_string()))?;
        if yaml.as_mapping().is_some_and(|m| m.contains_key("<<")) {
            return Err(syntax("a YAML merge key (<<) inside a merge".into()));
        }
        serde_json::to_value(yaml).map_err(|e| syntax(e.to_string()))?
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(syntax(format!("the top level is {}", type_name(&other)))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn compact(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 200 {
        text.chars().take(200).collect::<String>() + "…"
    } else {
        text
    }
}

/// Checks one parsed file: version and kind, then every field. Returns the fields the agent
/// read (overridden or shown), or the first refusal.
pub fn check(path: &Path, map: &Map<String, Value>) -> Result<Vec<Field>, ConfigError> {
    let version = |problem: String| ConfigError::Version {
        path: path.to_path_buf(),
        problem,
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => return Err(version(format!("apiVersion is {}", compact(v)))),
        None => return Err(version("apiVersion is missing".into())),
    }
    match map.get("kind") {
        Some(Value::String(k)) if k == KIND => {}
        Some(v) => return Err(version(format!("kind is {}", compact(v)))),
        None => return Err(version("kind is missing".into())),
    }
    let mut fields = Vec::new();
    for (name, value) in map {
        let field = |effect| Field {
            file: path.to_path_buf(),
            name: name.clone(),
            value: compact(value),
            effect,
        };
        if let Some((_, why)) = REFUSED.iter().find(|(f, _)| f.eq_ignore_ascii_case(name)) {
            return Err(ConfigError::Refused {
                path: path.to_path_buf(),
                field: name.clone(),
                why: (*why).to_string(),
            });
        }
        if "enforceNodeAllocatable".eq_ignore_ascii_case(name) && !pods_only(value) {
            return Err(ConfigError::Refused {
                path: path.to_path_buf(),
                field: format!("{name}: {}", compact(value)),
                why: "only [pods] keeps the kubepods cgroup at the lease without capping Mesos' share of the host".into(),
            });
        }
        if let Some((_, flag)) = OVERRIDDEN
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(name))
        {
            fields.push(field(Effect::OverriddenBy(flag)));
        } else if SHOWN.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            fields.push(field(Effect::Used));
        }
    }
    Ok(fields)
}

/// `enforceNodeAllocatable: [pods]` (kubelet's default).
fn pods_only(value: &Value) -> bool {
    matches!(value, Value::Array(items) if items.len() == 1 && items.first().is_some_and(|v| v == "pods"))
}

/// Reads and checks one file.
pub fn check_file(path: &Path) -> Result<Vec<Field>, ConfigError> {
    let text = fsread::read_text(path, fsread::CONFIG_CAP).map_err(ConfigError::Read)?;
    check(path, &parse(path, &text)?)
}

/// The `*.conf` files under a drop-in directory, recursively, in lexical order of their paths
/// (as kubelet's `filepath.WalkDir`).
pub fn dropin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let dir_err = |reason: String| ConfigError::Dir {
            path: d.clone(),
            reason,
        };
        let entries = std::fs::read_dir(&d).map_err(|e| dir_err(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| dir_err(e.to_string()))?;
            let kind = entry.file_type().map_err(|e| dir_err(e.to_string()))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "conf") {
                files.push(path);
            }
            if files.len() + pending.len() > MAX_DROPINS {
                return Err(dir_err(format!("holds more than {MAX_DROPINS} entries")));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads kubelet's `--config` file and `--config-dir` drop-ins named in its arguments, if any,
/// and returns every field the agent read; refuses a field that would change allocatable.
pub fn read(config: Option<&Path>, config_dir: Option<&Path>) -> Result<Vec<Field>, ConfigError> {
    let mut fields = Vec::new();
    if let Some(path) = config {
        fields.extend(check_file(path)?);
    }
    if let Some(dir) = config_dir {
        for file in dropin_files(dir)? {
            fields.extend(check_file(&file)?);
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(body: &str) -> Result<Vec<Field>, ConfigError> {
        let text = format!("apiVersion: {API_VERSION}\nkind: {KIND}\n{body}");
        let path = Path::new("/k.yaml");
        check(path, &parse(path, &text)?)
    }

    #[test]
    fn each_refused_field_is_named() {
        // (The integration tests cover each field; here: spelling and the enforcement list.)
        for (field, value) in [
            ("enforceNodeAllocatable", "[none]"),
            ("ReservedSystemCpus", "\"0\""),
            ("SYSTEMRESERVEDCGROUP", "/x"),
        ] {
            let err = yaml(&format!("{field}: {value}\n")).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
            assert!(matches!(err, ConfigError::Refused { .. }), "{err}");
        }
    }

    #[test]
    fn overridden_and_shown_fields_are_reported() {
        let fields = yaml(
            "systemReserved: {cpu: 500m}\nhealthzPort: 10248\nmaxPods: 50\nenforceNodeAllocatable: [pods]\naddress: 0.0.0.0\n",
        )
        .expect("ok");
        let by_name = |n: &str| {
            fields
                .iter()
                .find(|f| f.name == n)
                .map(|f| f.effect.clone())
        };
        assert_eq!(
            by_name("systemReserved"),
            Some(Effect::OverriddenBy("--system-reserved"))
        );
        assert_eq!(
            by_name("healthzPort"),
            Some(Effect::OverriddenBy("--healthz-port"))
        );
        assert_eq!(by_name("maxPods"), Some(Effect::Used));
        assert_eq!(by_name("address"), None);
    }

    #[test]
    fn json_files_and_wrong_versions() {
        let path = Path::new("/k.json");
        let map = parse(
            path,
            &format!("{{\"apiVersion\":\"{API_VERSION}\",\"kind\":\"{KIND}\",\"reservedSystemCPUs\":\"0\"}}"),
        )
        .expect("json");
        assert!(matches!(
            check(path, &map),
            Err(ConfigError::Refused { .. })
        ));
        let map = parse(path, "apiVersion: v1\nkind: KubeletConfiguration\n").expect("yaml");
        assert!(matches!(
            check(path, &map),
            Err(ConfigError::Version { .. })
        ));
        assert!(matches!(
            parse(path, "- a\n- b\n"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            parse(path, "a: [\n"),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn yaml_merge_keys_are_applied_as_kubelet_applies_them() {
        let path = Path::new("/k.yaml");
        let merged = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nbase: &b {{reservedSystemCPUs: \"0\"}}\n<<: *b\n"
        );
        let err = check(path, &parse(path, &merged).expect("merge")).expect_err("merged field");
        assert!(err.to_string().contains("reservedSystemCPUs"), "{err}");
        let nested = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\n<<: {{<<: {{reservedSystemCPUs: \"0\"}}}}\n"
        );
        assert!(matches!(
            parse(path, &nested),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
