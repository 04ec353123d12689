//! The pure core: lease + host capacity + policy → the reservation that makes kubelet's node
//! allocatable equal the lease.
//!
//! Kubelet computes (research/kubelet.md §2):
//! `allocatable.memory = capacity − system − kube − evictionHard(memory.available) − Σ hugepages`,
//! `allocatable.cpu = capacity − system − kube`. Solving for `system` with `allocatable = lease`
//! gives the reservation below; kubelet refuses to start if `system + kube + eviction` exceeds
//! capacity, so a lease larger than the host is refused here first.

use serde::Serialize;
use thiserror::Error;

use crate::capacity::Capacity;
use crate::lease::Lease;
use crate::quantity::{self, QuantityError};

/// A CPU + memory pair in kubelet units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// Millicores.
    pub cpu_millicores: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

/// Kubelet's Linux default `evictionHard` (`pkg/kubelet/eviction/defaults_linux.go`
/// `DefaultEvictionHard`). `imagefs.inodesFree<5%` joined it in kubernetes/kubernetes#121834,
/// merged in November 2023 after the 1.29 freeze, so first released in v1.30. The agent always
/// passes `--eviction-hard`, which replaces kubelet's default map, so the agent's default is
/// the current kubelet's (the signal itself exists in every kubelet version, so older kubelets
/// accept it; only `memory.available` changes allocatable).
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%";

/// Eviction signals kubelet accepts in `--eviction-hard`.
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

/// One hard-eviction threshold's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// An absolute quantity (bytes for memory).
    Quantity(u64),
    /// A fraction of capacity, kept as kubelet keeps it: a float32 (`10%` → 0.1f32).
    Percentage(f32),
}

/// `--eviction-hard`: the signals in the operator's order, exactly as passed to kubelet.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionHard {
    entries: Vec<(String, String, Threshold)>,
}

impl EvictionHard {
    /// Parses `memory.available<100Mi,nodefs.available<10%` (kubelet's flag syntax).
    pub fn parse(text: &str) -> Result<EvictionHard, PolicyError> {
        let bad = |problem: String| PolicyError::EvictionHard {
            value: text.to_string(),
            problem,
        };
        let mut entries: Vec<(String, String, Threshold)> = Vec::new();
        if text.trim().is_empty() {
            return Ok(EvictionHard { entries });
        }
        for item in text.split(',') {
            let (signal, value) = item
                .split_once('<')
                .ok_or_else(|| bad(format!("{item:?} has no '<'")))?;
            let (signal, value) = (signal.trim(), value.trim());
            if !EVICTION_SIGNALS.contains(&signal) {
                return Err(bad(format!(
                    "unknown signal {signal:?} (known: {})",
                    EVICTION_SIGNALS.join(", ")
                )));
            }
            if entries.iter().any(|(s, _, _)| s == signal) {
                return Err(bad(format!("signal {signal:?} is given twice")));
            }
            let threshold = match value.strip_suffix('%') {
                Some(pct) => {
                    let p: f32 = pct
                        .parse()
                        .ok()
                        .filter(|p: &f32| p.is_finite() && (0.0..=100.0).contains(p))
                        .ok_or_else(|| bad(format!("{value:?} is not a percentage 0%..100%")))?;
                    Threshold::Percentage(p / 100.0)
                }
                None => Threshold::Quantity(
                    quantity::parse_bytes(value).map_err(|e| bad(e.to_string()))?,
                ),
            };
            entries.push((signal.to_string(), value.to_string(), threshold));
        }
        Ok(EvictionHard { entries })
    }

    /// The memory kubelet subtracts from allocatable for this threshold set (`memory.available`
    /// only; percentages resolved against memory capacity as `GetThresholdQuantity` does).
    pub fn memory_reservation(&self, memory_capacity: u64) -> u64 {
        self.entries
            .iter()
            .find(|(s, _, _)| s == "memory.available")
            .map_or(0, |(_, _, t)| match *t {
                Threshold::Quantity(bytes) => bytes,
                // Go: int64(float64(capacity.Value()) * float64(percentage)), truncated.
                Threshold::Percentage(p) => (memory_capacity as f64 * f64::from(p)) as u64,
            })
    }

    /// The flag value as passed to kubelet (`memory.available<100Mi,...`).
    pub fn to_flag_value(&self) -> String {
        self.entries
            .iter()
            .map(|(s, v, _)| format!("{s}<{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses `--kube-reserved cpu=100m,memory=256Mi` (only cpu and memory are accepted: the agent
/// must account for every term that changes allocatable).
pub fn parse_kube_reserved(text: &str) -> Result<Resources, PolicyError> {
    let bad = |problem: String| PolicyError::KubeReserved {
        value: text.to_string(),
        problem,
    };
    let mut out = Resources::default();
    let (mut seen_cpu, mut seen_mem) = (false, false);
    if text.trim().is_empty() {
        return Ok(out);
    }
    for item in text.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("{item:?} is not key=value")))?;
        let value = value.trim();
        let convert = |r: Result<u64, QuantityError>| r.map_err(|e| bad(e.to_string()));
        match key.trim() {
            "cpu" if !seen_cpu => {
                seen_cpu = true;
                out.cpu_millicores = convert(quantity::parse_cpu_millicores(value))?;
            }
            "memory" if !seen_mem => {
                seen_mem = true;
                out.memory_bytes = convert(quantity::parse_bytes(value))?;
            }
            "cpu" | "memory" => return Err(bad(format!("{:?} is given twice", key.trim()))),
            other => {
                return Err(bad(format!(
                    "key {other:?} is not accepted (accepted: cpu, memory)"
                )));
            }
        }
    }
    Ok(out)
}

/// The operator's reservation policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `--kube-reserved`.
    pub kube_reserved: Resources,
    /// `--eviction-hard`.
    pub eviction_hard: EvictionHard,
    /// Shrink a lease that exceeds the host to the maximum grantable instead of failing.
    pub clamp: bool,
}

/// Why a policy option was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PolicyError {
    /// `--kube-reserved` is malformed.
    #[error("--kube-reserved={value:?}: {problem}; expected e.g. cpu=100m,memory=256Mi")]
    KubeReserved {
        /// The raw value.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// `--eviction-hard` is malformed.
    #[error(
        "--eviction-hard={value:?}: {problem}; expected e.g. memory.available<100Mi,nodefs.available<10%"
    )]
    EvictionHard {
        /// The raw value.
        value: String,
        /// What is wrong.
        problem: String,
    },
}

/// Why no reservation can satisfy the lease on this host.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReservationError {
    /// The lease asks for more than the host can give after kubelet's own terms.
    #[error("{0}")]
    LeaseExceedsHost(Box<ExceedsHost>),
    /// Kube-reserved, eviction and hugepages alone exceed the host: not even a zero lease fits.
    #[error(
        "{what}: capacity {capacity} is smaller than {terms} alone; kubelet would refuse to start even with a zero lease"
    )]
    TermsExceedHost {
        /// "cpu" or "memory".
        what: &'static str,
        /// The capacity, human-readable.
        capacity: String,
        /// The fixed terms, human-readable.
        terms: String,
    },
}

/// Details of a lease that does not fit the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceedsHost {
    /// "cpu" or "memory".
    pub what: &'static str,
    /// The lease, human-readable.
    pub lease: String,
    /// The capacity, human-readable.
    pub capacity: String,
    /// The terms subtracted before the lease, human-readable.
    pub terms: String,
    /// The maximum grantable, human-readable.
    pub max: String,
    /// The Marathon field to change (`cpus` / `mem`).
    pub marathon_field: &'static str,
    /// The maximum in Marathon's unit (cores / MiB).
    pub max_marathon: String,
}

impl std::fmt::Display for ExceedsHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lease {} of {} exceeds what this host can grant: capacity {} minus {} leaves at most {}; \
             lower the Marathon app's {} to at most {} or pass --clamp",
            self.what,
            self.lease,
            self.capacity,
            self.terms,
            self.max,
            self.marathon_field,
            self.max_marathon
        )
    }
}

/// What kubelet's `pods` enforcement writes on the kubepods cgroup (research/kubelet.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KubepodsCeiling {
    /// `cpu.shares` of kubepods: `MilliCPUToShares(capacity − system − kube)`; no CFS quota.
    pub cpu_shares: u64,
    /// Memory limit of kubepods: `capacity − system − kube` (eviction is not subtracted).
    pub memory_limit_bytes: u64,
}

/// Everything `plan` prints and `run` applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// The lease actually applied (after clamping, if asked).
    pub lease: Lease,
    /// The lease as requested, when `--clamp` shrank it.
    pub clamped_from: Option<Lease>,
    /// `--system-reserved` passed to kubelet.
    pub system_reserved: Resources,
    /// `--kube-reserved` passed to kubelet.
    pub kube_reserved: Resources,
    /// Memory subtracted by `--eviction-hard` (`memory.available`).
    pub eviction_hard_memory_bytes: u64,
    /// Node allocatable as kubelet will compute it; equals the lease.
    pub allocatable: Resources,
    /// The kubepods cgroup ceiling that follows.
    pub kubepods: KubepodsCeiling,
}

/// Kubelet's `MilliCPUToShares`: 1024 shares per core, minimum 2.
pub fn millicpu_to_shares(millicores: u64) -> u64 {
    (millicores * 1024 / 1000).max(2)
}

/// Computes the reservation that gives `allocatable == lease` on a host with `capacity`.
pub fn compute(
    capacity: &Capacity,
    lease: Lease,
    policy: &Policy,
) -> Result<Reservation, ReservationError> {
    let eviction = policy
        .eviction_hard
        .memory_reservation(capacity.memory_bytes);
    let kube = policy.kube_reserved;
    let mem_terms = kube
        .memory_bytes
        .saturating_add(eviction)
        .saturating_add(capacity.hugepages_bytes);
    let mem_terms_text = || {
        format!(
            "kube-reserved {} + eviction-hard {} + hugepages {}",
            quantity::format_bytes_human(kube.memory_bytes),
            quantity::format_bytes_human(eviction),
            quantity::format_bytes_human(capacity.hugepages_bytes)
        )
    };
    let max_memory = capacity
        .memory_bytes
        .checked_sub(mem_terms)
        .ok_or_else(|| ReservationError::TermsExceedHost {
            what: "memory",
            capacity: quantity::format_bytes_human(capacity.memory_bytes),
            terms: mem_terms_text(),
        })?;
    let max_cpu = capacity
        .cpu_millicores
        .checked_sub(kube.cpu_millicores)
        .ok_or_else(|| ReservationError::TermsExceedHost {
            what: "cpu",
            capacity: quantity::format_cpu_human(capacity.cpu_millicores),
            terms: format!(
                "kube-reserved {}",
                quantity::format_cpu_human(kube.cpu_millicores)
            ),
        })?;

    let mut applied = lease;
    if lease.memory_bytes > max_memory {
        if !policy.clamp {
            return Err(ReservationError::LeaseExceedsHost(Box::new(ExceedsHost {
                what: "memory",
                lease: quantity::format_bytes_human(lease.memory_bytes),
                capacity: quantity::format_bytes_human(capacity.memory_bytes),
                terms: mem_terms_text(),
                max: format!("{max_memory} bytes"),
                marathon_field: "mem",
                max_marathon: format!("{} MiB", max_memory >> 20),
            })));
        }
        applied.memory_bytes = max_memory;
    }
    if lease.cpu_millicores > max_cpu {
        if !policy.clamp {
            return Err(ReservationError::LeaseExceedsHost(Box::new(ExceedsHost {
                what: "cpu",
                lease: quantity::format_cpu_human(lease.cpu_millicores),
                capacity: quantity::format_cpu_human(capacity.cpu_millicores),
                terms: format!(
                    "kube-reserved {}",
                    quantity::format_cpu_human(kube.cpu_millicores)
                ),
                max: quantity::format_millicores(max_cpu),
                marathon_field: "cpus",
                max_marathon: format!("{:.3} cores", max_cpu as f64 / 1000.0),
            })));
        }
        applied.cpu_millicores = max_cpu;
    }

    let system_reserved = Resources {
        cpu_millicores: max_cpu - applied.cpu_millicores,
        memory_bytes: max_memory - applied.memory_bytes,
    };
    let allocatable = kubelet_allocatable(capacity, system_reserved, kube, eviction);
    let kubepods_cpu = capacity
        .cpu_millicores
        .saturating_sub(system_reserved.cpu_millicores + kube.cpu_millicores);
    let kubepods_memory = capacity
        .memory_bytes
        .saturating_sub(system_reserved.memory_bytes + kube.memory_bytes);
    Ok(Reservation {
        lease: applied,
        clamped_from: (applied != lease).then_some(lease),
        system_reserved,
        kube_reserved: kube,
        eviction_hard_memory_bytes: eviction,
        allocatable,
        kubepods: KubepodsCeiling {
            cpu_shares: millicpu_to_shares(kubepods_cpu),
            memory_limit_bytes: kubepods_memory,
        },
    })
}

/// Kubelet's own allocatable formula, written out independently of [`compute`] so the
/// invariant `allocatable == lease` is checked rather than assumed.
pub fn kubelet_allocatable(
    capacity: &Capacity,
    system: Resources,
    kube: Resources,
    eviction_memory: u64,
) -> Resources {
    let memory = capacity
        .memory_bytes
        .saturating_sub(system.memory_bytes + kube.memory_bytes + eviction_memory)
        .saturating_sub(capacity.hugepages_bytes);
    let cpu = capacity
        .cpu_millicores
        .saturating_sub(system.cpu_millicores + kube.cpu_millicores);
    Resources {
        cpu_millicores: cpu,
        memory_bytes: memory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseSource;

    const GI: u64 = 1 << 30;
    const MI: u64 = 1 << 20;

    fn cap(cpus: u64, mem: u64, huge: u64) -> Capacity {
        Capacity {
            cpu_millicores: cpus * 1000,
            memory_bytes: mem,
            hugepages_bytes: huge,
            hugepage_pools: Vec::new(),
        }
    }
    fn lease(cpu_m: u64, mem: u64) -> Lease {
        Lease {
            cpu_millicores: cpu_m,
            memory_bytes: mem,
            source: LeaseSource::Flags,
        }
    }
    fn policy(kube: &str, eviction: &str) -> Policy {
        Policy {
            kube_reserved: parse_kube_reserved(kube).expect("kube"),
            eviction_hard: EvictionHard::parse(eviction).expect("eviction"),
            clamp: false,
        }
    }

    #[test]
    fn node_allocatable_docs_example() {
        // reserve-compute-resources.md: 16 CPUs, 32Gi; kube cpu=1,memory=2Gi; system
        // cpu=500m,memory=1Gi; eviction memory.available<500Mi → "14.5 CPUs, 28.5Gi". The docs
        // round: 32Gi − 2Gi − 1Gi − 500Mi is exactly 29196Mi (500Mi is not 0.5Gi).
        let host = cap(16, 32 * GI, 0);
        let kube = parse_kube_reserved("cpu=1,memory=2Gi").expect("kube");
        let system = parse_kube_reserved("cpu=500m,memory=1Gi").expect("system");
        let eviction = EvictionHard::parse("memory.available<500Mi,nodefs.available<10%")
            .expect("eviction")
            .memory_reservation(host.memory_bytes);
        let alloc = kubelet_allocatable(&host, system, kube, eviction);
        assert_eq!(alloc.cpu_millicores, 14_500);
        assert_eq!(alloc.memory_bytes, 29_196 * MI);
        // And the agent, asked for exactly that lease, reproduces the docs' system-reserved.
        let plan = compute(
            &host,
            lease(14_500, 29_196 * MI),
            &policy(
                "cpu=1,memory=2Gi",
                "memory.available<500Mi,nodefs.available<10%",
            ),
        )
        .expect("plan");
        assert_eq!(plan.system_reserved, system);
    }

    #[test]
    fn table_of_hosts_keeps_allocatable_equal_to_lease() {
        struct Case {
            name: &'static str,
            host: Capacity,
            lease: Lease,
            kube: &'static str,
            eviction: &'static str,
            system: (u64, u64),
        }
        let cases = [
            Case {
                name: "nokia 2 cpu / 4196 MiB on 8x32Gi, kubelet defaults",
                host: cap(8, 32 * GI, 0),
                lease: lease(2000, 4196 * MI),
                kube: "",
                eviction: DEFAULT_EVICTION_HARD,
                system: (6000, 32 * GI - 4196 * MI - 100 * MI),
            },
            Case {
                name: "fractional lease",
                host: cap(4, 8 * GI, 0),
                lease: lease(1500, 1536 * MI + 512),
                kube: "cpu=100m,memory=256Mi",
                eviction: "memory.available<100Mi",
                system: (2400, 8 * GI - 1536 * MI - 512 - 256 * MI - 100 * MI),
            },
            Case {
                name: "hugepages reduce what system-reserved must hold",
                host: cap(4, 16 * GI, 2 * GI),
                lease: lease(1000, 4 * GI),
                kube: "",
                eviction: "memory.available<100Mi",
                system: (3000, 16 * GI - 4 * GI - 100 * MI - 2 * GI),
            },
            Case {
                name: "zero lease",
                host: cap(2, 4 * GI, 0),
                lease: lease(0, 0),
                kube: "",
                eviction: "memory.available<100Mi",
                system: (2000, 4 * GI - 100 * MI),
            },
            Case {
                name: "lease exactly fills the host",
                host: cap(2, 4 * GI, 0),
                lease: lease(2000, 4 * GI - 100 * MI),
                kube: "",
                eviction: "memory.available<100Mi",
                system: (0, 0),
            },
            Case {
                name: "percentage eviction threshold",
                host: cap(2, 10 * GI, 0),
                lease: lease(1000, 5 * GI),
                kube: "",
                eviction: "memory.available<5%",
                // 5% as kubelet computes it: float32(5)/100 × capacity, truncated.
                system: (1000, 5 * GI - 536_870_920),
            },
            Case {
                name: "no eviction threshold at all",
                host: cap(1, GI, 0),
                lease: lease(250, 512 * MI),
                kube: "",
                eviction: "",
                system: (750, 512 * MI),
            },
        ];
        for c in cases {
            let plan = compute(&c.host, c.lease, &policy(c.kube, c.eviction)).expect(c.name);
            assert_eq!(
                plan.allocatable,
                Resources {
                    cpu_millicores: c.lease.cpu_millicores,
                    memory_bytes: c.lease.memory_bytes
                },
                "{}",
                c.name
            );
            assert_eq!(
                (
                    plan.system_reserved.cpu_millicores,
                    plan.system_reserved.memory_bytes
                ),
                c.system,
                "{}",
                c.name
            );
            // Kubelet's validation: system + kube + eviction must not exceed capacity.
            let reserved = plan.system_reserved.memory_bytes
                + plan.kube_reserved.memory_bytes
                + plan.eviction_hard_memory_bytes;
            assert!(reserved <= c.host.memory_bytes, "{}", c.name);
        }
    }

    #[test]
    fn lease_larger_than_host_names_both_numbers_and_the_maximum() {
        let err = compute(
            &cap(2, 4 * GI, 0),
            lease(2000, 4 * GI),
            &policy("", "memory.available<100Mi"),
        )
        .expect_err("too big");
        let text = err.to_string();
        assert!(text.contains("lease memory of 4Gi"), "{text}");
        assert!(text.contains("capacity 4Gi"), "{text}");
        assert!(text.contains("at most 3996 MiB"), "{text}");
        let err = compute(&cap(2, 4 * GI, 0), lease(2500, GI), &policy("cpu=100m", ""))
            .expect_err("cpu too big");
        assert!(err.to_string().contains("at most 1900m"), "{err}");
    }

    #[test]
    fn clamp_shrinks_to_the_maximum() {
        let mut p = policy("", "memory.available<100Mi");
        p.clamp = true;
        let plan = compute(&cap(2, 4 * GI, 0), lease(3000, 8 * GI), &p).expect("clamped");
        assert_eq!(plan.lease.cpu_millicores, 2000);
        assert_eq!(plan.lease.memory_bytes, 4 * GI - 100 * MI);
        assert_eq!(plan.system_reserved, Resources::default());
        assert!(plan.clamped_from.is_some());
    }

    #[test]
    fn fixed_terms_larger_than_host() {
        let err = compute(
            &cap(1, GI, 0),
            lease(0, 0),
            &policy("memory=2Gi", "memory.available<100Mi"),
        )
        .expect_err("terms");
        assert!(matches!(err, ReservationError::TermsExceedHost { .. }));
    }

    #[test]
    fn kubepods_ceiling() {
        let plan = compute(
            &cap(4, 8 * GI, GI),
            lease(1500, 2 * GI),
            &policy("cpu=100m,memory=128Mi", "memory.available<100Mi"),
        )
        .expect("plan");
        assert_eq!(plan.kubepods.cpu_shares, 1536);
        assert_eq!(plan.kubepods.memory_limit_bytes, 2 * GI + 100 * MI + GI);
        assert_eq!(millicpu_to_shares(0), 2);
    }

    #[test]
    fn policy_syntax() {
        assert!(parse_kube_reserved("cpu=100m,memory=1Gi").is_ok());
        for bad in [
            "cpu",
            "cpu=abc",
            "gpu=1",
            "cpu=1,cpu=2",
            "memory=-1Gi",
            "ephemeral-storage=1Gi",
        ] {
            assert!(parse_kube_reserved(bad).is_err(), "{bad}");
        }
        for bad in [
            "memory.available",
            "memory.avail<1Gi",
            "memory.available<abc",
            "memory.available<101%",
            "memory.available<1Gi,memory.available<2Gi",
        ] {
            assert!(EvictionHard::parse(bad).is_err(), "{bad}");
        }
        let e = EvictionHard::parse(DEFAULT_EVICTION_HARD).expect("default");
        assert_eq!(e.to_flag_value(), DEFAULT_EVICTION_HARD);
        assert_eq!(e.memory_reservation(GI), 100 * MI);
    }
}
