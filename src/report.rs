//! Renders `plan`: a readable report, or one JSON object with the fields of DESIGN §9.

use serde_json::{Value, json};

use crate::kubelet_config::Effect;
use crate::quantity::{format_bytes_human, format_cpu_human};
use crate::reservation::Resources;
use crate::setup::NodeSetup;

fn resources_json(r: Resources) -> Value {
    json!({"cpu_millicores": r.cpu_millicores, "memory_bytes": r.memory_bytes})
}

/// The `plan --output json` object.
pub fn plan_json(setup: &NodeSetup, argv: &[String]) -> Value {
    let r = &setup.reservation;
    let c = &setup.capacity;
    json!({
        "lease": {
            "cpu_millicores": r.lease.cpu_millicores,
            "memory_bytes": r.lease.memory_bytes,
            "source": r.lease.source.as_str(),
        },
        "clamped_from": r.clamped_from.map(|l| json!({
            "cpu_millicores": l.cpu_millicores, "memory_bytes": l.memory_bytes})),
        "capacity": {
            "cpu_millicores": c.cpu_millicores,
            "memory_bytes": c.memory_bytes,
            "hugepages_bytes": c.hugepages_bytes,
        },
        "reserved": {
            "system": resources_json(r.system_reserved),
            "kube": resources_json(r.kube_reserved),
            "eviction_hard_memory_bytes": r.eviction_hard_memory_bytes,
        },
        "allocatable": resources_json(r.allocatable),
        "kubepods": {
            "cpu_shares": r.kubepods.cpu_shares,
            "memory_limit_bytes": r.kubepods.memory_limit_bytes,
        },
        "kubelet_config": setup.kubelet_config.iter().map(|f| json!({
            "file": f.file.display().to_string(),
            "field": f.name,
            "value": f.value,
            "overridden_by": match f.effect {
                Effect::OverriddenBy(flag) => Some(flag),
                Effect::Used => None,
            },
        })).collect::<Vec<_>>(),
        "kubelet_argv": argv,
    })
}

fn line(label: &str, cpu_m: u64, mem: u64) -> String {
    format!(
        "  {label:<22} cpu {:>8} ({cpu_m}m)   memory {:>10} ({mem} bytes)\n",
        format_cpu_human(cpu_m),
        format_bytes_human(mem)
    )
}

/// The `plan` text report.
pub fn plan_text(setup: &NodeSetup, argv: &[String]) -> String {
    let r = &setup.reservation;
    let c = &setup.capacity;
    let mut out = String::new();
    out.push_str(&format!("lease (from {}):\n", r.lease.source));
    out.push_str(&line(
        "granted",
        r.lease.cpu_millicores,
        r.lease.memory_bytes,
    ));
    if let Some(orig) = r.clamped_from {
        out.push_str(&line(
            "requested (clamped)",
            orig.cpu_millicores,
            orig.memory_bytes,
        ));
    }
    out.push_str("host capacity (as kubelet measures it):\n");
    out.push_str(&line("capacity", c.cpu_millicores, c.memory_bytes));
    out.push_str(&format!(
        "  {:<22} {} ({} bytes)\n",
        "hugepages (pre-alloc)",
        format_bytes_human(c.hugepages_bytes),
        c.hugepages_bytes
    ));
    out.push_str("reservation:\n");
    out.push_str(&line(
        "system-reserved",
        r.system_reserved.cpu_millicores,
        r.system_reserved.memory_bytes,
    ));
    out.push_str(&line(
        "kube-reserved",
        r.kube_reserved.cpu_millicores,
        r.kube_reserved.memory_bytes,
    ));
    out.push_str(&line("eviction-hard", 0, r.eviction_hard_memory_bytes));
    out.push_str("result:\n");
    out.push_str(&line(
        "node allocatable",
        r.allocatable.cpu_millicores,
        r.allocatable.memory_bytes,
    ));
    out.push_str(&format!(
        "  {:<22} cpu.shares {}   memory limit {} ({} bytes)   (no CFS quota: pods may burst on idle CPU)\n",
        "kubepods cgroup",
        r.kubepods.cpu_shares,
        format_bytes_human(r.kubepods.memory_limit_bytes),
        r.kubepods.memory_limit_bytes
    ));
    if !setup.kubelet_config.is_empty() {
        out.push_str("kubelet config fields read:\n");
        for f in &setup.kubelet_config {
            let effect = match f.effect {
                Effect::OverriddenBy(flag) => format!("overridden by {flag}"),
                Effect::Used => "used by kubelet; allocatable unchanged".to_string(),
            };
            out.push_str(&format!(
                "  {:<22} {}   ({}; {})\n",
                f.name,
                f.value,
                effect,
                f.file.display()
            ));
        }
    }
    out.push_str("kubelet command line:\n  ");
    out.push_str(&argv.join(" "));
    out.push('\n');
    out
}
