//! kubelet-resource-wrapper: runs kubelet as a Marathon task on a Mesos host so Kubernetes gets
//! exactly the granted share of the host (DESIGN.md).
//!
//! The pure core turns a lease and the host's capacity into kubelet's reservation flags
//! ([`lease`], [`capacity`], [`reservation`], [`kubelet_args`]); the effects live in their own
//! modules (process supervision, health endpoint, metrics, host lock, drain, Marathon API).

pub mod agent;
pub mod backoff;
pub mod capacity;
pub mod cli;
pub mod drain;
pub mod envfile;
pub mod exit;
pub mod health;
pub mod http;
pub mod kubelet_args;
pub mod lease;
pub mod lock;
pub mod logging;
pub mod marathon;
pub mod metrics;
pub mod node_watch;
pub mod probe;
pub mod quantity;
pub mod report;
pub mod reservation;
pub mod runner;
pub mod serve;
pub mod setup;
pub mod spawner;
pub mod taskkill;
