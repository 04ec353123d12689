//! Fleet benchmark (issue 9): the fleet rehearsal at 50 emulated hosts (`FLEET_BENCH_HOSTS`),
//! scenarios from `FLEET_BENCH_SCENARIOS` (default `roll,sigkill,scale-down`; `all` adds the
//! API-server outage). Prints the rehearsal's figures, then the roll time against 1.2 × the sum
//! over hosts of (drain + kubelet start to healthy): the figure to reach is "no idle gaps
//! between hosts". Runs `scripts/rehearse-fleet.sh` (debug build of the workspace).
//!
//! `cargo bench --bench fleet`

use std::process::Command;

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` it is absent: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet bench: run with `cargo bench --bench fleet`");
        return;
    }
    let hosts = std::env::var("FLEET_BENCH_HOSTS").unwrap_or_else(|_| "50".into());
    let scenarios =
        std::env::var("FLEET_BENCH_SCENARIOS").unwrap_or_else(|_| "roll,sigkill,scale-down".into());
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{repo}/scripts/rehearse-fleet.sh"))
        .args([
            "--hosts",
            &hosts,
            "--scenario",
            &scenarios,
            "--timeout",
            "3000",
        ])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fleet bench: cannot run scripts/rehearse-fleet.sh: {e}");
            std::process::exit(1);
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if let Some(roll) = stdout.lines().find(|l| l.starts_with("scenario roll: ")) {
        let (Some(t), Some(sum)) = (field(roll, "roll_s"), field(roll, "drain_plus_start_sum_s"))
        else {
            println!("fleet bench: the roll line has no roll_s / drain_plus_start_sum_s");
            std::process::exit(1);
        };
        let bound = 1.2 * sum;
        println!(
            "fleet bench: hosts={hosts} roll_s={t:.1} sum(drain + start to healthy)={sum:.1} \
             1.2x={bound:.1} -> {}",
            if t <= bound { "within" } else { "OVER" }
        );
    }
    std::process::exit(out.status.code().unwrap_or(1));
}
