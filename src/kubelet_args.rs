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

/// Flags that silently change what kubelet subtracts from allocatable, or how it is enforced,
/// so the agent refuses them.
pub const CONFLICTING_FLAGS: &[(&str, &str)] = &[
    (
        "--reserved-cpus",
        "it replaces --system-reserved/--kube-reserved for CPU",
    ),
    (
        "--experimental-allocatable-ignore-eviction",
        "it drops the eviction term from allocatable",
    ),
    (
        "--reserved-memory",
        "it must add up to the memory reservations the agent computes per lease",
    ),
    (
        "--system-reserved-cgroup",
        "it enforces system-reserved (capacity minus the lease, Mesos' share) on a host cgroup",
    ),
    (
        "--kube-reserved-cgroup",
        "it enforces kube-reserved on a host cgroup; the agent supports only pods enforcement",
    ),
];

/// The only value of `--enforce-node-allocatable` the agent accepts (kubelet's default).
pub const ENFORCE_NODE_ALLOCATABLE: &str = "pods";

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

/// The name part of `--flag` or `--flag=value`, normalised as kubelet normalises flag names:
/// its flag set uses `cliflag.WordSepNormalizeFunc` (`k8s.io/component-base/cli/flag`,
/// set in `cmd/kubelet/app/server.go` `NewKubeletCommand`), which turns every `_` into `-`,
/// so `--system_reserved` *is* `--system-reserved` to kubelet.
pub fn flag_name(arg: &str) -> String {
    arg.split_once('=')
        .map_or(arg, |(name, _)| name)
        .replace('_', "-")
}

/// Refuses user copies of agent-owned or allocatable-changing flags, in every spelling kubelet
/// accepts, and any `--enforce-node-allocatable` other than `pods`.
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
    if let Some(value) = user_flag_value(args, "--enforce-node-allocatable")
        && value.trim() != ENFORCE_NODE_ALLOCATABLE
    {
        let spelled = args
            .iter()
            .rev()
            .find(|a| flag_name(a) == "--enforce-node-allocatable")
            .map_or("--enforce-node-allocatable", |a| a.as_str());
        return Err(KubeletArgsError::Conflicting {
            arg: if spelled.contains('=') {
                spelled.to_string()
            } else {
                format!("{spelled} {value}")
            },
            why: "only pods keeps the kubepods cgroup at the lease without capping Mesos' share of the host",
        });
    }
    Ok(())
}

/// Reads an arguments file: one argument per line, no shell quoting; blank lines and lines
/// starting with `#` are skipped; surrounding whitespace is trimmed.
/// The file is opened without blocking and must be a regular UTF-8 file without NUL of at most
/// 1 MiB.
pub fn read_args_file(path: &Path) -> Result<Vec<String>, KubeletArgsError> {
    let text = crate::fsread::read_text(path, crate::fsread::CONFIG_CAP).map_err(|e| {
        KubeletArgsError::File {
            path: path.display().to_string(),
            problem: e.to_string(),
        }
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

/// The value the operator gave a kubelet flag (`--flag=v` or `--flag v`, any spelling of the
/// name kubelet accepts), last one wins as in pflag.
pub fn user_flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if flag_name(arg) != flag {
            continue;
        }
        match arg.split_once('=') {
            Some((_, value)) => found = Some(value.to_string()),
            None => found = iter.next().cloned(),
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
            "--reserved-memory=0:memory=1Gi",
            "--system-reserved-cgroup=/system",
            "--kube-reserved-cgroup=/kube",
            "--enforce-node-allocatable=pods,system-reserved",
        ] {
            assert!(check_user_args(&s(&["--v=2", bad])).is_err(), "{bad}");
            // Every spelling kubelet's WordSepNormalizeFunc maps to the same flag.
            let name = bad.split_once('=').map_or(bad, |(n, _)| n);
            let tail = &bad[name.len()..];
            let underscored = format!("--{}{tail}", name[2..].replace('-', "_"));
            let err = check_user_args(&s(&[&underscored])).expect_err(&underscored);
            assert!(err.to_string().contains(&underscored), "{err}");
            let mixed = format!("--{}{tail}", name[2..].replacen('-', "_", 1));
            assert!(check_user_args(&s(&[&mixed])).is_err(), "{mixed}");
        }
        assert!(check_user_args(&s(&["--enforce-node-allocatable", "pods"])).is_ok());
        assert!(check_user_args(&s(&["--enforce_node_allocatable", "none"])).is_err());
        // A prefix of an owned flag's name is a different flag.
        assert!(check_user_args(&s(&["--system-reserved-x=1", "--kube-reserved_y"])).is_ok());
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
            user_flag_value(&s(&["--hostname_override=n2"]), "--hostname-override").as_deref(),
            Some("n2")
        );
        assert_eq!(
            parse_args_text("# comment\n  --v=2  \n\n--config=/etc/k.yaml\n"),
            s(&["--v=2", "--config=/etc/k.yaml"])
        );
    }
}
