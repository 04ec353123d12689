//! `fleet-rehearsal`: N emulated hosts on loopback, each with its own host root, lock file,
//! ports, kubelet state dir and `standby`; one fake kube-apiserver; the fake Marathon in live
//! mode, driven by the real `kubelet-resource-wrapper marathon deploy | scale`. Runs the
//! scenarios, samples the invariants continuously, prints one line of figures per scenario and
//! finally exactly
//! `fleet: hosts=N min_schedulable=X pdb_violations=P lost_pods=L orphan_pods=O double_kubelets=D roll_s=T`.
//! Exit 0 when every invariant held, 1 when one did not (or a scenario failed), 2 on a usage or
//! start-up error or the --timeout, 130 on SIGINT/SIGTERM. Every process it started is ended
//! by pid in all cases. Test-only; never shipped.

mod fleet;
mod http;
mod logs;
mod procs;
mod scenarios;
mod watch;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use fleet::{Bins, Fleet, Options};
use procs::Procs;
use scenarios::{ALL, Rehearsal, agent_rss_mib};
use watch::Watch;

#[derive(Parser, Debug)]
#[command(
    name = "fleet-rehearsal",
    about = "Fleet rehearsal on emulated hosts (test-only)"
)]
struct Cli {
    /// Number of emulated hosts (= Kubernetes nodes at full scale).
    #[arg(long, default_value_t = 10)]
    hosts: usize,
    /// `all`, or a comma-separated list run after scale-up, in the given order: scale-up, roll,
    /// api-outage, sigkill, scale-down.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Multiplier for every pace: the app's health checks and backoff, Mesos' offer interval,
    /// kubelet's Lease and status cadence, the node monitor grace, the agent's probe and node
    /// check intervals; 1 = real time. Budgets (drain timeout, kill grace) are not scaled.
    #[arg(long, default_value_t = 0.1)]
    time_scale: f64,
    /// Hard bound on the whole run (seconds); everything is cleaned up when it passes.
    #[arg(long, default_value_t = 900.0)]
    timeout: f64,
    /// How long each scenario waits for the ReplicaSets to be back at their counts (seconds).
    #[arg(long, default_value_t = 30.0)]
    settle: f64,
    /// Where the binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The repository (for marathon/); default: this crate's.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Work directory (default: a new one under $TMPDIR; removed after a clean run).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the work directory even after a clean run.
    #[arg(long)]
    keep: bool,
    /// API Priority and Fairness seats per priority level of the fake kube-apiserver (0 = off).
    #[arg(long, default_value_t = 16)]
    max_inflight: u32,
    /// Extra argument for the fake kube-apiserver (repeatable), e.g. its in-flight limit.
    #[arg(long = "apiserver-arg", allow_hyphen_values = true)]
    apiserver_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.hosts < 2 || !(cli.time_scale > 0.0 && cli.time_scale.is_finite()) {
        eprintln!("fleet: --hosts must be at least 2 and --time-scale a positive number");
        return ExitCode::from(2);
    }
    let scenarios: Vec<&str> = if cli.scenario == "all" {
        ALL.to_vec()
    } else {
        let mut list = vec!["scale-up"];
        for s in cli.scenario.split(',').map(str::trim) {
            let Some(known) = ALL.iter().find(|a| **a == s) else {
                eprintln!(
                    "fleet: unknown scenario {s:?}; one of all, {}",
                    ALL.join(", ")
                );
                return ExitCode::from(2);
            };
            if !list.contains(known) {
                list.push(known);
            }
        }
        list
    };
    let procs = Procs::default();
    guard_signals(&procs);
    guard_deadline(&procs, cli.timeout);
    let code = match rehearse(&cli, &scenarios, &procs) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet: {e}");
            2
        }
    };
    procs.cleanup();
    ExitCode::from(code)
}

fn guard_signals(procs: &Procs) {
    let procs = procs.clone();
    match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    eprintln!("fleet: interrupted; cleaning up");
                    procs.cleanup();
                    std::process::exit(130);
                }
            });
        }
        Err(e) => eprintln!("fleet: cannot watch signals ({e}); cleanup on exit only"),
    }
}

fn guard_deadline(procs: &Procs, timeout: f64) {
    let procs = procs.clone();
    let timeout = Duration::from_secs_f64(timeout.max(1.0));
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("fleet: --timeout of {timeout:?} reached; cleaning up");
        procs.cleanup();
        std::process::exit(2);
    });
}

fn rehearse(cli: &Cli, scenarios: &[&str], procs: &Procs) -> Result<u8, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => exe.parent().ok_or("no binary directory")?.to_path_buf(),
    };
    let repo = cli
        .repo
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../..")));
    let work = cli.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fleet-rehearsal-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    procs.set_work(&work);
    let bins = Bins::in_dir(&bin_dir)?;
    let started = Instant::now();
    let opts = Options {
        hosts: cli.hosts,
        scale: cli.time_scale,
        max_inflight: cli.max_inflight,
        apiserver_args: cli.apiserver_args.clone(),
    };
    let fleet = Fleet::start(&work, &repo, bins, procs.clone(), &opts)?;
    let watch = Watch::start(&fleet);
    println!(
        "fleet: {} hosts up in {:.1}s (work dir {}), time scale {}",
        cli.hosts,
        started.elapsed().as_secs_f64(),
        work.display(),
        cli.time_scale
    );
    let mut r = Rehearsal::new(
        &fleet,
        &watch,
        cli.hosts as u64,
        Duration::from_secs_f64(cli.settle),
    );
    let mut figures = Vec::new();
    let mut rss = 0.0;
    for s in scenarios {
        let f = r.run(s);
        println!("{}", f.line());
        if *s == "roll" || (scenarios.len() == 1 && *s == "scale-up") || rss == 0.0 {
            rss = agent_rss_mib(&fleet);
        }
        let failed = f.failure.is_some();
        figures.push(f);
        if failed {
            break;
        }
    }
    println!("fleet: agent RSS summed over the fleet (run + standby): {rss:.1} MiB");
    let lost = r.settle_workloads();
    let tally = watch.tally();
    drop(watch);
    for n in &tally.notes {
        println!("fleet: note: {n}");
    }
    if tally.api_misses > 0 {
        println!(
            "fleet: {} API samples missed (API server down or slow)",
            tally.api_misses
        );
    }
    let roll_s = figures
        .iter()
        .find(|f| f.name == "roll")
        .and_then(|f| f.roll_s)
        .unwrap_or(0.0);
    let min_sched = tally.min_schedulable_roll.unwrap_or(cli.hosts);
    let failures = figures.iter().filter(|f| f.failure.is_some()).count();
    // A PDB is violated when its healthy count drops below the desired one in a voluntary phase,
    // or when an agent forces an eviction past it.
    let pdb_violations =
        tally.pdb_violations + figures.iter().map(|f| f.forced_past_pdb).sum::<u64>();
    println!(
        "fleet: hosts={} min_schedulable={} pdb_violations={} lost_pods={} orphan_pods={} double_kubelets={} roll_s={:.1}",
        cli.hosts,
        min_sched,
        pdb_violations,
        lost,
        tally.orphan_pods,
        tally.double_kubelets,
        roll_s
    );
    let ok = failures == 0
        && figures.len() == scenarios.len()
        && min_sched + 1 >= cli.hosts
        && pdb_violations == 0
        && lost == 0
        && tally.orphan_pods == 0
        && tally.double_kubelets == 0;
    if ok && !cli.keep && cli.workdir.is_none() {
        procs.cleanup();
        let _ = std::fs::remove_dir_all(&work);
    } else if !ok {
        eprintln!("fleet: kept {} for inspection", work.display());
    }
    Ok(if ok { 0 } else { 1 })
}
