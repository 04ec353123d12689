//! Host capacity exactly as kubelet (through cAdvisor) measures it: online logical CPUs from
//! sysfs, `MemTotal` from `/proc/meminfo`, and every pre-allocated hugepage pool. Everything is
//! read under a root directory so tests can use a fake `/proc` + `/sys`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsread;

use serde::Serialize;
use thiserror::Error;

/// What kubelet will report as the node's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// Online logical CPUs × 1000.
    pub cpu_millicores: u64,
    /// `MemTotal` × 1024.
    pub memory_bytes: u64,
    /// Sum of every pre-allocated hugepage pool, in bytes.
    pub hugepages_bytes: u64,
    /// Each hugepage pool: page size and number of pages.
    #[serde(skip)]
    pub hugepage_pools: Vec<HugepagePool>,
}

/// One pre-allocated hugepage pool (`/sys/kernel/mm/hugepages/hugepages-<size>kB`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugepagePool {
    /// Page size in bytes.
    pub page_bytes: u64,
    /// Pages reserved (`nr_hugepages`).
    pub pages: u64,
}

/// Why the host's capacity could not be read.
#[derive(Debug, Error)]
pub enum CapacityError {
    /// A file kubelet reads could not be read (absent, not a regular file, too large, not text).
    #[error("{0}")]
    File(fsread::ReadError),
    /// A directory kubelet reads could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path under the host root.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file was read but its content is not what the kernel writes.
    #[error("{path} is malformed: {problem}")]
    Malformed {
        /// The path under the host root.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
    /// No online CPU was found.
    #[error("no online CPU found under {0}")]
    NoCpus(PathBuf),
}

/// Reads the capacity of the host whose `/proc` and `/sys` are under `root`.
pub fn read(root: &Path) -> Result<Capacity, CapacityError> {
    let memory_bytes = read_mem_total(root)?;
    let cpus = count_online_cpus(root)?;
    let hugepage_pools = read_hugepages(root)?;
    let hugepages_bytes = hugepage_pools
        .iter()
        .map(|p| p.page_bytes.saturating_mul(p.pages))
        .fold(0u64, u64::saturating_add);
    Ok(Capacity {
        cpu_millicores: cpus.saturating_mul(1000),
        memory_bytes,
        hugepages_bytes,
        hugepage_pools,
    })
}

/// Cap for one `/proc` or `/sys` file: meminfo is a few KiB, `cpu/online` for the kernel's
/// largest `NR_CPUS` (8192) written as single ids is under 40 KiB.
const HOST_FILE_CAP: u64 = 256 * 1024;

fn read_file(path: PathBuf) -> Result<(PathBuf, String), CapacityError> {
    match fsread::read_text(&path, HOST_FILE_CAP) {
        Ok(text) => Ok((path, text)),
        Err(e) => Err(CapacityError::File(e)),
    }
}

/// `MemTotal:  16384000 kB` → bytes, with cAdvisor's regexp `MemTotal:\s*([0-9]+) kB`.
fn read_mem_total(root: &Path) -> Result<u64, CapacityError> {
    let (path, text) = read_file(root.join("proc/meminfo"))?;
    parse_mem_total(&text).map_err(|problem| CapacityError::Malformed {
        path,
        problem: problem.to_string(),
    })
}

/// The `MemTotal` of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_total(text: &str) -> Result<u64, &'static str> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .ok_or("no MemTotal line")?;
    let kib = line
        .trim_start()
        .strip_suffix(" kB")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or("MemTotal is not '<number> kB'")?;
    kib.checked_mul(1024).ok_or("MemTotal is too large")
}

/// Counts logical CPUs the way cAdvisor's `GetNodesInfo` does (`utils/sysinfo/sysinfo.go`):
/// with NUMA node directories, every *online* `cpuN` under each `node*` directory
/// (`getCoresInfo` skips CPUs that `IsCPUOnline` says are offline); without node directories,
/// `getCPUTopology` returns `len(GetCPUsPaths("/sys/devices/system/cpu"))`, i.e. every `cpuN`
/// directory, offline CPUs included.
fn count_online_cpus(root: &Path) -> Result<u64, CapacityError> {
    let node_root = root.join("sys/devices/system/node");
    let node_dirs = numbered_entries(&node_root, "node")?;
    let count = if node_dirs.is_empty() {
        numbered_entries(&root.join("sys/devices/system/cpu"), "cpu")?.len() as u64
    } else {
        let online = read_online_set(root)?;
        let mut cpu_ids: Vec<u64> = Vec::new();
        for node in node_dirs {
            cpu_ids.extend(numbered_entries(
                &node_root.join(format!("node{node}")),
                "cpu",
            )?);
        }
        cpu_ids.sort_unstable();
        cpu_ids.dedup();
        cpu_ids
            .iter()
            .filter(|id| online.as_ref().is_none_or(|set| set.contains(**id)))
            .count() as u64
    };
    if count == 0 {
        return Err(CapacityError::NoCpus(root.join("sys/devices/system")));
    }
    Ok(count)
}

/// Parses `/sys/devices/system/cpu/online` (`0-3,6,8-9`); `None` when the file is absent, in
/// which case cAdvisor counts every CPU as online.
fn read_online_set(root: &Path) -> Result<Option<CpuSet>, CapacityError> {
    let path = root.join("sys/devices/system/cpu/online");
    let text = match fsread::read_text(&path, HOST_FILE_CAP) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(CapacityError::File(e)),
    };
    parse_cpu_list(text.trim())
        .map(Some)
        .ok_or_else(|| CapacityError::Malformed {
            path,
            problem: format!(
                "{:?} is not a CPU list like 0-3,6",
                text.trim().chars().take(64).collect::<String>()
            ),
        })
}

/// A set of CPU ids kept as sorted, disjoint, inclusive ranges (a kernel CPU list can name
/// thousands of ranges; expanding them id by id would not be bounded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSet {
    ranges: Vec<(u64, u64)>,
}

impl CpuSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end < id);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= id)
    }

    /// How many ids the set holds.
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| (b - a).saturating_add(1))
            .fold(0, u64::saturating_add)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Parses a kernel CPU list (`0-3,6`); `None` if malformed. Ranges may overlap or come in any
/// order; the result is merged.
pub fn parse_cpu_list(text: &str) -> Option<CpuSet> {
    let mut ranges = Vec::new();
    if text.is_empty() {
        return Some(CpuSet { ranges });
    }
    for part in text.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
            None => {
                let id = part.parse::<u64>().ok()?;
                (id, id)
            }
        };
        if b < a {
            return None;
        }
        ranges.push((a, b));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Some(CpuSet { ranges: merged })
}

/// Lists the numbers N of entries named `<prefix>N` in a directory (absent directory → none).
fn numbered_entries(dir: &Path, prefix: &str) -> Result<Vec<u64>, CapacityError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CapacityError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CapacityError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(|n| n.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Reads every `hugepages-<size>kB/nr_hugepages` pool.
fn read_hugepages(root: &Path) -> Result<Vec<HugepagePool>, CapacityError> {
    let dir = root.join("sys/kernel/mm/hugepages");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CapacityError::Read { path: dir, source }),
    };
    let mut pools = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CapacityError::Read {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let Some(kib) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let (path, text) = read_file(entry.path().join("nr_hugepages"))?;
        let Some(page_bytes) = kib.checked_mul(1024) else {
            return Err(CapacityError::Malformed {
                path,
                problem: format!("page size {kib} kB is too large"),
            });
        };
        let pages = text
            .trim()
            .parse::<u64>()
            .map_err(|_| CapacityError::Malformed {
                path,
                problem: format!("{:?} is not a page count", text.trim()),
            })?;
        pools.push(HugepagePool { page_bytes, pages });
    }
    pools.sort_by_key(|p| p.page_bytes);
    Ok(pools)
}

/// Writes a fake host root (for tests and benchmarks): `cpus` CPUs across `nodes` NUMA nodes
/// (0 = no node directories), `mem_kib` of MemTotal, the given online list and hugepage pools.
pub mod fake {
    use std::fs;
    use std::io;
    use std::path::Path;

    /// Description of a fake host.
    #[derive(Debug, Clone)]
    pub struct FakeHost<'a> {
        /// Logical CPUs present.
        pub cpus: u64,
        /// NUMA nodes to spread them over (0: no `node*` directories).
        pub nodes: u64,
        /// Content of `/sys/devices/system/cpu/online`, if the file should exist.
        pub online: Option<&'a str>,
        /// MemTotal in KiB.
        pub mem_kib: u64,
        /// Hugepage pools as (page size in KiB, pages).
        pub hugepages: &'a [(u64, u64)],
    }

    impl FakeHost<'_> {
        /// Writes the host's files under `root`.
        pub fn write(&self, root: &Path) -> io::Result<()> {
            let cpu_dir = root.join("sys/devices/system/cpu");
            fs::create_dir_all(&cpu_dir)?;
            for cpu in 0..self.cpus {
                fs::create_dir_all(cpu_dir.join(format!("cpu{cpu}")))?;
                if self.nodes > 0 {
                    let node = cpu % self.nodes;
                    let dir = root.join(format!("sys/devices/system/node/node{node}/cpu{cpu}"));
                    fs::create_dir_all(dir)?;
                }
            }
            if let Some(online) = self.online {
                fs::write(cpu_dir.join("online"), format!("{online}\n"))?;
            }
            fs::create_dir_all(root.join("proc"))?;
            fs::write(
                root.join("proc/meminfo"),
                format!(
                    "MemTotal:       {} kB\nMemFree:         1000 kB\nMemAvailable:    2000 kB\n",
                    self.mem_kib
                ),
            )?;
            for (kib, pages) in self.hugepages {
                let dir = root.join(format!("sys/kernel/mm/hugepages/hugepages-{kib}kB"));
                fs::create_dir_all(&dir)?;
                fs::write(dir.join("nr_hugepages"), format!("{pages}\n"))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;

    fn host(h: FakeHost<'_>) -> (tempfile::TempDir, Result<Capacity, CapacityError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        h.write(dir.path()).expect("write fake host");
        let cap = read(dir.path());
        (dir, cap)
    }

    #[test]
    fn numa_nodes_online_filter_and_hugepages() {
        let (_d, cap) = host(FakeHost {
            cpus: 8,
            nodes: 2,
            online: Some("0-5"),
            mem_kib: 16 * 1024 * 1024,
            hugepages: &[(2048, 512), (1048576, 2)],
        });
        let cap = cap.expect("capacity");
        assert_eq!(cap.cpu_millicores, 6000);
        assert_eq!(cap.memory_bytes, 16 << 30);
        assert_eq!(cap.hugepages_bytes, ((512 * 2) << 20) + (2 << 30));
    }

    #[test]
    fn no_node_dirs_and_no_online_file_count_every_cpu() {
        let (_d, cap) = host(FakeHost {
            cpus: 3,
            nodes: 0,
            online: None,
            mem_kib: 1000,
            hugepages: &[],
        });
        let cap = cap.expect("capacity");
        assert_eq!((cap.cpu_millicores, cap.memory_bytes), (3000, 1_024_000));
        assert_eq!(cap.hugepages_bytes, 0);
    }

    #[test]
    fn missing_or_malformed_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(read(dir.path()), Err(CapacityError::File(_))));
        let (_d, cap) = host(FakeHost {
            cpus: 2,
            nodes: 1,
            online: Some("zero"),
            mem_kib: 1,
            hugepages: &[],
        });
        assert!(matches!(cap, Err(CapacityError::Malformed { .. })));
        let (_d, cap) = host(FakeHost {
            cpus: 2,
            nodes: 1,
            online: Some(""),
            mem_kib: 1,
            hugepages: &[],
        });
        assert!(matches!(cap, Err(CapacityError::NoCpus(_))));
    }

    #[test]
    fn cpu_lists() {
        let set = parse_cpu_list("0-3,6").expect("list");
        assert_eq!(set.len(), 5);
        assert!(set.contains(0) && set.contains(3) && set.contains(6));
        assert!(!set.contains(4) && !set.contains(7));
        assert_eq!(parse_cpu_list("5").map(|s| s.len()), Some(1));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("2-5,0-3,4").map(|s| s.len()), Some(6));
        let wide = parse_cpu_list("0-18446744073709551615").expect("wide");
        assert_eq!(wide.len(), u64::MAX);
    }

    #[test]
    fn three_thousand_wide_ranges_are_counted_without_expanding() {
        let list: Vec<String> = (0..3000u64)
            .map(|i| format!("{}-{}", i * 100_000, i * 100_000 + 65_536))
            .collect();
        let set = parse_cpu_list(&list.join(",")).expect("list");
        assert_eq!(set.len(), 3000 * 65_537);
        assert!(set.contains(299_965_536) && !set.contains(299_965_537));
    }

    #[test]
    fn without_node_dirs_offline_cpus_count_as_cadvisor_counts_them() {
        let (_d, cap) = host(FakeHost {
            cpus: 4,
            nodes: 0,
            online: Some("0-1"),
            mem_kib: 1000,
            hugepages: &[],
        });
        assert_eq!(cap.expect("capacity").cpu_millicores, 4000);
    }

    #[test]
    fn this_machine_is_readable() {
        let cap = read(Path::new("/")).expect("real host capacity");
        assert!(cap.cpu_millicores >= 1000);
        assert!(cap.memory_bytes > 0);
    }
}
