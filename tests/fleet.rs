//! The fleet rehearsal (issue 9): `fleet-rehearsal` (what `scripts/rehearse-fleet.sh` runs) on
//! ten emulated hosts, asserting its last line — the invariants sampled throughout.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{double, repo};

/// The last line's fields, in order, as (key, value).
fn invariants(stdout: &str) -> Vec<(String, f64)> {
    let last = stdout.lines().last().unwrap_or_default();
    let rest = last
        .strip_prefix("fleet: ")
        .unwrap_or_else(|| panic!("last line is not the fleet line: {last:?}\n{stdout}"));
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

/// Runs the rehearsal on `hosts` hosts with `scenario` and paces scaled by `time_scale`;
/// (exit code, stdout, stderr).
fn rehearse(
    hosts: usize,
    scenario: &str,
    time_scale: &str,
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let start = Instant::now();
    let out = Command::new(double("fleet-rehearsal"))
        .args(["--hosts", &hosts.to_string(), "--scenario", scenario])
        .args(["--time-scale", time_scale])
        .args(["--timeout", &timeout.as_secs().to_string()])
        .arg("--repo")
        .arg(repo())
        .output()
        .expect("run fleet-rehearsal");
    eprintln!("rehearsal took {:?}", start.elapsed());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_invariants(hosts: usize, code: Option<i32>, stdout: &str, stderr: &str) {
    let fields = invariants(stdout);
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "hosts",
            "min_schedulable",
            "pdb_violations",
            "lost_pods",
            "orphan_pods",
            "double_kubelets",
            "roll_s"
        ],
        "{stdout}"
    );
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| *v);
    assert_eq!(get("hosts"), Some(hosts as f64));
    assert!(
        get("min_schedulable").is_some_and(|m| m + 1.0 >= hosts as f64),
        "more than one node unschedulable during a roll:\n{stdout}"
    );
    for k in [
        "pdb_violations",
        "lost_pods",
        "orphan_pods",
        "double_kubelets",
    ] {
        assert_eq!(get(k), Some(0.0), "{k}:\n{stdout}\n{stderr}");
    }
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
}

#[test]
fn ten_hosts_scale_up_sigkill_and_scale_down_keep_every_invariant() {
    // Paces at 0.2 of real time: slow enough for a loaded machine (kubelet Lease 8 s).
    let (code, stdout, stderr) =
        rehearse(10, "sigkill,scale-down", "0.2", Duration::from_secs(200));
    for s in ["scale-up", "sigkill", "scale-down"] {
        assert!(
            stdout.contains(&format!("scenario {s}: ")),
            "no figures for {s}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAILED"), "{stdout}\n{stderr}");
    assert_invariants(10, code, &stdout, &stderr);
}

#[test]
fn ten_hosts_full_rehearsal_keeps_every_invariant() {
    let (code, stdout, stderr) = rehearse(10, "all", "0.1", Duration::from_secs(230));
    assert!(stdout.contains("scenario roll: "), "{stdout}");
    assert_invariants(10, code, &stdout, &stderr);
}
