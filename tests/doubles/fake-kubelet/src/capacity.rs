//! Capacity as cadvisor computes it, and allocatable as kubelet computes it.

use crate::flags::{Config, ThresholdValue};
use std::fs;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    /// (page size in bytes, total bytes) per pool, sorted by page size.
    pub hugepages: Vec<(i64, i64)>,
}

impl Capacity {
    pub fn hugepages_bytes(&self) -> i64 {
        self.hugepages.iter().map(|(_, b)| *b).sum()
    }
}

/// Parse a kernel cpu list such as `0-3,5`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn numbered_dirs(dir: &Path, prefix: &str) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_prefix(prefix)
                && !n.is_empty()
                && n.bytes().all(|c| c.is_ascii_digit())
                && e.path().is_dir()
                && let Ok(n) = n.parse()
            {
                v.push(n);
            }
        }
    }
    v.sort_unstable();
    v
}

pub fn detect(root: &Path) -> Result<Capacity, String> {
    let sys_cpu = root.join("sys/devices/system/cpu");
    let online: Option<Vec<u32>> = match fs::read_to_string(sys_cpu.join("online")) {
        Ok(s) => {
            Some(parse_cpu_list(&s).ok_or_else(|| format!("cannot parse cpu online list {s:?}"))?)
        }
        Err(_) => None, // cadvisor: missing file => every CPU is online
    };
    let is_online = |cpu: u32| online.as_ref().is_none_or(|l| l.contains(&cpu));
    let node_root = root.join("sys/devices/system/node");
    let nodes = numbered_dirs(&node_root, "node");
    let mut cores = 0i64;
    if !nodes.is_empty() {
        for n in nodes {
            for cpu in numbered_dirs(&node_root.join(format!("node{n}")), "cpu") {
                if is_online(cpu) {
                    cores += 1;
                }
            }
        }
    } else {
        // cadvisor's getCPUTopology (utils/sysinfo/sysinfo.go): without NUMA node directories
        // the count is len(cpusPaths), every cpuN directory, offline CPUs included.
        cores = numbered_dirs(&sys_cpu, "cpu").len() as i64;
    }
    let meminfo_path = root.join("proc/meminfo");
    let meminfo = fs::read_to_string(&meminfo_path)
        .map_err(|e| format!("failed to read {}: {e}", meminfo_path.display()))?;
    let mut mem_kb: Option<i64> = None;
    for line in meminfo.lines() {
        if let Some(rest) = line.strip_prefix("MemTotal:") {
            let rest = rest.trim();
            if let Some(num) = rest.strip_suffix(" kB").or_else(|| rest.strip_suffix("kB")) {
                mem_kb = num.trim().parse().ok();
            }
        }
    }
    let mem_kb = mem_kb.ok_or_else(|| "failed to find MemTotal in /proc/meminfo".to_string())?;
    let mut hugepages = Vec::new();
    let hp_root = root.join("sys/kernel/mm/hugepages");
    if let Ok(rd) = fs::read_dir(&hp_root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(size) = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse::<i64>().ok())
            else {
                continue;
            };
            let nr: i64 = fs::read_to_string(e.path().join("nr_hugepages"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            hugepages.push((size * 1024, size * 1024 * nr));
        }
    }
    hugepages.sort_unstable();
    Ok(Capacity {
        cpu_millicores: cores * 1000,
        memory_bytes: mem_kb * 1024,
        hugepages,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub eviction_hard_memory_bytes: i64,
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    /// validateNodeAllocatable errors (empty when valid)
    pub errors: Vec<String>,
}

pub fn eviction_memory(cfg: &Config, cap: &Capacity) -> i64 {
    if cfg.ignore_eviction {
        return 0;
    }
    match cfg.eviction_hard.get("memory.available") {
        Some(ThresholdValue::Quantity(q)) => *q,
        // evictionapi.GetThresholdQuantity: int64(float64(capacity.Value()) * float64(percentage))
        Some(ThresholdValue::Percentage(p)) => (cap.memory_bytes as f64 * f64::from(*p)) as i64,
        None => 0,
    }
}

pub fn compute(cfg: &Config, cap: &Capacity) -> Allocation {
    let ev = eviction_memory(cfg, cap);
    let cpu_res = cfg.system_reserved.cpu_millicores + cfg.kube_reserved.cpu_millicores;
    let mem_res = cfg.system_reserved.memory_bytes + cfg.kube_reserved.memory_bytes + ev;
    let mut errors = Vec::new();
    if cap.cpu_millicores - cpu_res < 0 {
        errors.push(format!(
            "Resource \"cpu\" has a reservation of {cpu_res}m but capacity of {}m. Expected capacity >= reservation.",
            cap.cpu_millicores
        ));
    }
    if cap.memory_bytes - mem_res < 0 {
        errors.push(format!(
            "Resource \"memory\" has a reservation of {mem_res} but capacity of {}. Expected capacity >= reservation.",
            cap.memory_bytes
        ));
    }
    let cpu = (cap.cpu_millicores - cpu_res).max(0);
    let mut mem = (cap.memory_bytes - mem_res).max(0);
    mem = (mem - cap.hugepages_bytes()).max(0);
    Allocation {
        eviction_hard_memory_bytes: ev,
        cpu_millicores: cpu,
        memory_bytes: mem,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5\n"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
