//! The host's settings file (`/etc/default/kubelet-resource-wrapper`, written by the Ansible
//! role): `KRW_*` variables read by both `standby` (systemd `EnvironmentFile=`) and `run`
//! (Mesos passes a task only the Marathon app's `env`, so `run` reads the file itself).
//! Variables already in the environment win; the file only fills gaps.

use std::path::Path;

/// Default location of the settings file; `KRW_ENV_FILE` names another.
pub const DEFAULT_PATH: &str = "/etc/default/kubelet-resource-wrapper";

/// Parses systemd `EnvironmentFile` lines: `KEY=VALUE`, optional single or double quotes,
/// `#`/`;` comments and blank lines skipped. Only `KRW_*` keys are returned.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| {
            k.starts_with("KRW_") && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|(k, v)| {
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.to_string(), unquoted.to_string())
        })
        .collect()
}

/// Reads the settings file, if present, and returns the variables not already set.
pub fn missing_vars(
    path: &Path,
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)
            .into_iter()
            .filter(|(k, _)| !is_set(k))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read settings file {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_environment_file_lines() {
        let text = "# comment\n; other\nKRW_DRAIN_TIMEOUT=50\nKRW_KUBE_RESERVED=\"cpu=100m,memory=256Mi\"\n\
                    KRW_EVICTION_HARD='memory.available<200Mi'\nPATH=/evil\nKRW BAD=1\n\n  KRW_NO_DRAIN = true \n";
        assert_eq!(
            parse(text),
            vec![
                ("KRW_DRAIN_TIMEOUT".into(), "50".into()),
                ("KRW_KUBE_RESERVED".into(), "cpu=100m,memory=256Mi".into()),
                ("KRW_EVICTION_HARD".into(), "memory.available<200Mi".into()),
                ("KRW_NO_DRAIN".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn environment_wins_and_a_missing_file_is_fine() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("krw");
        assert_eq!(missing_vars(&path, |_| false), Ok(Vec::new()));
        std::fs::write(&path, "KRW_A=1\nKRW_B=2\n").expect("write");
        assert_eq!(
            missing_vars(&path, |k| k == "KRW_A"),
            Ok(vec![("KRW_B".into(), "2".into())])
        );
        assert!(missing_vars(dir.path(), |_| false).is_err());
    }
}
