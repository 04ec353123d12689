//! Kubelet's command line: the operator's own arguments plus the flags the agent owns.

use std::net::Ipv4Addr;
use std::path::Path;

use thiserror::Error;

use crate::reservation::{EvictionHard, Reservation};

/// Flags the agent computes; a user copy would break `allocatable == lease` or the health proxy.
pub const OWNED_FLAGS: &[&str] = &[
    "--system-reserved",
    "--kube-reserved",
    "--eviction-hard",
    "--healthz-port",
    "--healthz-bind-address",
];

/// Flags that silently change what kubelet subtracts from allocatable, so the agent refuses them.
pub const CONFLICTING_FLAGS: &[(&str, &str)] = &[
    (
        "--reserved-cpus",
        "it replaces --system-reserved/--kube-reserved for CPU",
    ),
    (
        "--experimental-allocatable-ignore-eviction",
        "it drops the eviction term from allocatable",
    ),
];

/// Why the operator's kubelet arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KubeletArgsError {
    /// The operator passed a flag the agent owns.
    #[error(
        "kubelet argument {arg:?} sets {flag}, which the agent computes; remove it (use the agent's --kube-reserved / --eviction-hard / --health-addr instead)"
    )]
    Owned {
        /// The offending argument.
        arg: String,
        /// The owned flag.
        flag: &'static str,
    },
    /// The operator passed a flag that breaks the reservation arithmetic.
    #[error("kubelet argument {arg:?} is refused: {why}")]
    Conflicting {
        /// The offending argument.
        arg: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// The arguments file cannot be read.
    #[error("kubelet arguments file {path}: {problem}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
}

/// The name part of `--flag` or `--flag=value`.
fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(name, _)| name)
}

/// Refuses user copies of agent-owned or allocatable-changing flags.
pub fn check_user_args(args: &[String]) -> Result<(), KubeletArgsError> {
    for arg in args {
        let name = flag_name(arg);
        if let Some(flag) = OWNED_FLAGS.iter().find(|f| **f == name) {
            return Err(KubeletArgsError::Owned {
                arg: arg.clone(),
                flag,
            });
        }
        if let Some((_, why)) = CONFLICTING_FLAGS.iter().find(|(f, _)| *f == name) {
            return Err(KubeletArgsError::Conflicting {
                arg: arg.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// Reads an arguments file: one argument per line, no shell quoting; blank lines and lines
/// starting with `#` are skipped; surrounding whitespace is trimmed.
pub fn read_args_file(path: &Path) -> Result<Vec<String>, KubeletArgsError> {
    let text = std::fs::read_to_string(path).map_err(|e| KubeletArgsError::File {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    Ok(parse_args_text(&text))
}

/// Splits an arguments file's text into arguments (see [`read_args_file`]).
pub fn parse_args_text(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The value the operator gave a kubelet flag (`--flag=v` or `--flag v`), last one wins as in pflag.
pub fn user_flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(value) = arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
        {
            found = Some(value.to_string());
        } else if arg == flag {
            found = iter.next().cloned();
        }
    }
    found
}

/// Where kubelet's own healthz listens once the agent moved it aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeletHealthz {
    /// Always loopback.
    pub bind: Ipv4Addr,
    /// The port the agent chose.
    pub port: u16,
}

/// Builds kubelet's argv: program, the operator's arguments, then the flags the agent owns.
/// `--kube-reserved` and `--eviction-hard` are always passed (even when empty or default) so a
/// kubelet config file cannot change the arithmetic behind the agent's back.
pub fn build_argv(
    program: &Path,
    user_args: &[String],
    reservation: &Reservation,
    eviction_hard: &EvictionHard,
    healthz: KubeletHealthz,
) -> Vec<String> {
    let mut argv = Vec::with_capacity(user_args.len() + 6);
    argv.push(program.display().to_string());
    argv.extend(user_args.iter().cloned());
    let sys = reservation.system_reserved;
    let kube = reservation.kube_reserved;
    argv.push(format!(
        "--system-reserved=cpu={}m,memory={}",
        sys.cpu_millicores, sys.memory_bytes
    ));
    argv.push(format!(
        "--kube-reserved=cpu={}m,memory={}",
        kube.cpu_millicores, kube.memory_bytes
    ));
    argv.push(format!("--eviction-hard={}", eviction_hard.to_flag_value()));
    argv.push(format!("--healthz-bind-address={}", healthz.bind));
    argv.push(format!("--healthz-port={}", healthz.port));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn owned_and_conflicting_flags_are_refused() {
        assert!(check_user_args(&s(&["--kubeconfig=/x", "--v=2"])).is_ok());
        for bad in [
            "--system-reserved=cpu=1",
            "--kube-reserved",
            "--eviction-hard=memory.available<1Gi",
            "--healthz-port=10248",
            "--healthz-bind-address=0.0.0.0",
            "--reserved-cpus=0-1",
            "--experimental-allocatable-ignore-eviction=true",
        ] {
            assert!(check_user_args(&s(&["--v=2", bad])).is_err(), "{bad}");
        }
        // A prefix of an owned flag's name is a different flag.
        assert!(check_user_args(&s(&["--system-reserved-cgroup=/system"])).is_ok());
    }

    #[test]
    fn flag_values_and_args_files() {
        let args = s(&[
            "--kubeconfig",
            "/a",
            "--hostname-override=n1",
            "--kubeconfig=/b",
        ]);
        assert_eq!(
            user_flag_value(&args, "--kubeconfig").as_deref(),
            Some("/b")
        );
        assert_eq!(
            user_flag_value(&args, "--hostname-override").as_deref(),
            Some("n1")
        );
        assert_eq!(user_flag_value(&args, "--node-ip"), None);
        assert_eq!(
            parse_args_text("# comment\n  --v=2  \n\n--config=/etc/k.yaml\n"),
            s(&["--v=2", "--config=/etc/k.yaml"])
        );
    }
}
