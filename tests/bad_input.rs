//! Bad input (DESIGN §3, §8): one clear line naming what was wrong and what is accepted, the
//! documented exit code, and nothing started or changed.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    says: Vec<&'static str>,
}

fn case(
    name: &'static str,
    args: &[&str],
    env: &[(&'static str, &str)],
    code: i32,
    says: &'static [&'static str],
) -> Case {
    Case {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        code,
        says: says.to_vec(),
    }
}

fn run_case(scratch: &Scratch, c: &Case) {
    let host = scratch.host_root().display().to_string();
    let lock = scratch.lock_file().display().to_string();
    let legacy = scratch.path("services").display().to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("KRW_HOST_ROOT", host.as_str()),
        ("KRW_LOCK_FILE", lock.as_str()),
        ("KRW_LEGACY_FILE", legacy.as_str()),
    ];
    // A case's own value for one of these wins.
    env.retain(|(k, _)| !c.env.iter().any(|(ck, _)| ck == k));
    env.extend(c.env.iter().map(|(k, v)| (*k, v.as_str())));
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let out = agent(&args, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(c.code), "{}: {stderr}", c.name);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: expected one line, got:\n{stderr}",
        c.name
    );
    assert!(
        lines[0].starts_with("kubelet-resource-wrapper: "),
        "{}: {stderr}",
        c.name
    );
    for needle in &c.says {
        assert!(
            stderr.contains(needle),
            "{}: {needle:?} not in {stderr}",
            c.name
        );
    }
    assert!(out.stdout.is_empty(), "{}: printed a result anyway", c.name);
    assert!(
        !scratch.lock_file().exists(),
        "{}: the host lock was taken",
        c.name
    );
    assert!(
        scratch.kubelet_status().is_none(),
        "{}: a kubelet was started",
        c.name
    );
}

const CPUS: &str = "MARATHON_APP_RESOURCE_CPUS";
const MEM: &str = "MARATHON_APP_RESOURCE_MEM";

fn lease_cases() -> Vec<Case> {
    let accepted_cores = &["expected a non-negative decimal number of cores"];
    vec![
        case(
            "empty cpus",
            &["plan"],
            &[(CPUS, ""), (MEM, "1024.0")],
            65,
            &["MARATHON_APP_RESOURCE_CPUS=\"\" is empty"],
        ),
        case(
            "blank cpus",
            &["plan"],
            &[(CPUS, "  "), (MEM, "1024.0")],
            65,
            &["is empty"],
        ),
        case(
            "text cpus",
            &["plan"],
            &[(CPUS, "two"), (MEM, "1024.0")],
            65,
            &["\"two\" is not a number"],
        ),
        case(
            "negative cpus",
            &["plan"],
            &[(CPUS, "-1.0"), (MEM, "1024.0")],
            65,
            &["is negative"],
        ),
        case(
            "NaN cpus",
            &["plan"],
            &[(CPUS, "NaN"), (MEM, "1024.0")],
            65,
            &["is not a finite number"],
        ),
        case(
            "Infinity cpus",
            &["plan"],
            &[(CPUS, "Infinity"), (MEM, "1024.0")],
            65,
            &["is not a finite number"],
        ),
        case(
            "inf mem",
            &["plan"],
            &[(CPUS, "1.0"), (MEM, "inf")],
            65,
            &["MARATHON_APP_RESOURCE_MEM=\"inf\" is not a finite number"],
        ),
        case(
            "comma decimal",
            &["plan"],
            &[(CPUS, "1,5"), (MEM, "1024.0")],
            65,
            &["uses ','"],
        ),
        case(
            "hex cpus",
            &["plan"],
            &[(CPUS, "0x2"), (MEM, "1024.0")],
            65,
            &["is hexadecimal"],
        ),
        case(
            "overflow cpus",
            &["plan"],
            &[(CPUS, "1e400"), (MEM, "1024.0")],
            65,
            &["out of range"],
        ),
        case(
            "absurd mem",
            &["plan"],
            &[(CPUS, "1.0"), (MEM, "1.0E30")],
            65,
            &["out of range"],
        ),
        case(
            "mem with unit",
            &["plan"],
            &[(CPUS, "1.0"), (MEM, "4096MiB")],
            65,
            &["is not a number", "MiB such as 4096"],
        ),
        case(
            "negative mem",
            &["plan"],
            &[(CPUS, "1.0"), (MEM, "-0.5")],
            65,
            &["is negative"],
        ),
        case(
            "trailing dot",
            &["plan"],
            &[(CPUS, "2."), (MEM, "1024.0")],
            65,
            accepted_cores,
        ),
        case(
            "only cpus",
            &["plan"],
            &[(CPUS, "1.0")],
            65,
            &["MARATHON_APP_RESOURCE_CPUS is set but MARATHON_APP_RESOURCE_MEM is not"],
        ),
        case(
            "only mem",
            &["plan"],
            &[(MEM, "1024.0")],
            65,
            &["MARATHON_APP_RESOURCE_MEM is set but"],
        ),
        case(
            "flag cpus alone",
            &["plan", "--cpus", "1"],
            &[],
            65,
            &["--cpus is set but --mem is not"],
        ),
        case(
            "empty flag",
            &["plan", "--cpus", "", "--mem", "1"],
            &[],
            65,
            &["--cpus=\"\" is empty"],
        ),
        case(
            "no lease anywhere",
            &["plan"],
            &[],
            65,
            &["no lease found", "--cpus and --mem"],
        ),
        case(
            "cpus beyond host",
            &["plan"],
            &[(CPUS, "64.0"), (MEM, "1024.0")],
            78,
            &["lease cpu of 64", "capacity 2", "at most 2.000 cores"],
        ),
        case(
            "mem beyond host",
            &["plan", "--cpus", "1", "--mem", "1000000"],
            &[],
            78,
            &["lease memory", "at most 8092 MiB"],
        ),
    ]
}

fn policy_and_host_cases() -> Vec<Case> {
    vec![
        case(
            "kube-reserved key",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--kube-reserved",
                "gpu=1",
            ],
            &[],
            64,
            &["--kube-reserved", "key \"gpu\" is not accepted"],
        ),
        case(
            "kube-reserved value",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--kube-reserved",
                "cpu=lots",
            ],
            &[],
            64,
            &["not a Kubernetes quantity"],
        ),
        case(
            "kube-reserved negative",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--kube-reserved",
                "memory=-1Gi",
            ],
            &[],
            64,
            &["is negative"],
        ),
        case(
            "eviction percent",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--eviction-hard",
                "memory.available<101%",
            ],
            &[],
            64,
            &["not a percentage"],
        ),
        case(
            "eviction signal",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--eviction-hard",
                "memory.free<1Gi",
            ],
            &[],
            64,
            &["unknown signal"],
        ),
        case(
            "eviction syntax",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--eviction-hard",
                "memory.available=1Gi",
            ],
            &[],
            64,
            &["has no '<'"],
        ),
        case(
            "kube-reserved eats host",
            &[
                "plan",
                "--cpus",
                "0",
                "--mem",
                "0",
                "--kube-reserved",
                "memory=64Gi",
            ],
            &[],
            78,
            &["even with a zero lease"],
        ),
        case(
            "missing host root",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--host-root",
                "/nonexistent/host",
            ],
            &[],
            78,
            &["cannot measure host capacity", "/nonexistent/host"],
        ),
        case(
            "owned flag",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--",
                "--system-reserved=cpu=1",
            ],
            &[],
            64,
            &["sets --system-reserved, which the agent computes"],
        ),
        case(
            "owned healthz port",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--",
                "--healthz-port",
                "10248",
            ],
            &[],
            64,
            &["--healthz-port"],
        ),
        case(
            "allocatable-changing flag",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--",
                "--reserved-cpus=0-1",
            ],
            &[],
            64,
            &["replaces --system-reserved"],
        ),
        case(
            "bad output",
            &["plan", "--output", "yaml"],
            &[],
            64,
            &["possible values: text, json"],
        ),
        case(
            "unknown option",
            &["plan", "--cpu", "1"],
            &[],
            64,
            &["unexpected argument '--cpu'"],
        ),
        case(
            "negative drain timeout",
            &["run", "--drain-timeout=-1"],
            &[],
            64,
            &["--drain-timeout"],
        ),
        case(
            "nan probe interval",
            &["run", "--health-probe-interval", "NaN"],
            &[],
            64,
            &["--health-probe-interval"],
        ),
        case(
            "bad health addr",
            &["run", "--health-addr", "localhost"],
            &[],
            64,
            &["--health-addr"],
        ),
        case(
            "missing args file",
            &[
                "plan",
                "--cpus",
                "1",
                "--mem",
                "1",
                "--kubelet-args-file",
                "/nonexistent/args",
            ],
            &[],
            64,
            &["kubelet arguments file /nonexistent/args"],
        ),
        case("no subcommand", &[], &[], 64, &["subcommand"]),
    ]
}

#[test]
fn bad_lease_values() {
    let scratch = Scratch::new(2, 8);
    let cases = lease_cases();
    assert!(cases.len() >= 20);
    for c in &cases {
        run_case(&scratch, c);
    }
}

#[test]
fn bad_policy_host_and_kubelet_arguments() {
    let scratch = Scratch::new(2, 8);
    for c in &policy_and_host_cases() {
        run_case(&scratch, c);
    }
}

#[test]
fn bad_legacy_files() {
    let scratch = Scratch::new(2, 8);
    let legacy = scratch.path("services");
    for (content, says) in [
        ("", "is empty"),
        ("cpu 2.0 memory 4096.0", "has no ','"),
        ("cpu abc, memory 1024.0", "\"abc\" is not a number"),
        ("memory 1024.0, cpu 2.0", "expected 'cpu <number>'"),
        (
            "cpu 1.0, memory 1.0\ncpu 2.0, memory 2.0",
            "more than one line",
        ),
    ] {
        std::fs::write(&legacy, content).expect("legacy");
        let mut c = case("legacy file", &["plan"], &[], 65, &["legacy lease file"]);
        c.says.push(says);
        run_case(&scratch, &c);
    }
    std::fs::remove_file(&legacy).expect("rm");
    std::fs::create_dir(&legacy).expect("dir in place of the file");
    run_case(
        &scratch,
        &case("unreadable legacy", &["plan"], &[], 65, &["cannot be read"]),
    );
}

#[test]
fn malformed_host_files() {
    let scratch = Scratch::new(2, 8);
    std::fs::write(scratch.host_root().join("proc/meminfo"), "MemFree: 1 kB\n").expect("meminfo");
    run_case(
        &scratch,
        &case(
            "no MemTotal",
            &["plan", "--cpus", "1", "--mem", "1"],
            &[],
            78,
            &["no MemTotal line"],
        ),
    );
    std::fs::write(
        scratch.host_root().join("proc/meminfo"),
        "MemTotal: 8388608 kB\n",
    )
    .expect("meminfo");
    std::fs::write(
        scratch.host_root().join("sys/devices/system/cpu/online"),
        "0-x\n",
    )
    .expect("online");
    run_case(
        &scratch,
        &case(
            "bad online list",
            &["plan", "--cpus", "1", "--mem", "1"],
            &[],
            78,
            &["is not a CPU list"],
        ),
    );
}

#[test]
fn run_refuses_a_missing_or_non_executable_kubelet_before_starting_anything() {
    let scratch = Scratch::new(2, 8);
    let missing = scratch.path("no-kubelet").display().to_string();
    run_case(
        &scratch,
        &case(
            "kubelet missing",
            &["run", "--cpus", "1", "--mem", "1", "--kubelet", &missing],
            &[],
            69,
            &["kubelet binary", "install kubelet or pass --kubelet"],
        ),
    );
    let not_exec = scratch.path("kubelet.txt");
    std::fs::write(&not_exec, "#!/bin/sh\n").expect("file");
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = not_exec.display().to_string();
    run_case(
        &scratch,
        &case(
            "kubelet not executable",
            &["run", "--cpus", "1", "--mem", "1", "--kubelet", &path],
            &[],
            69,
            &["is not executable"],
        ),
    );
    run_case(
        &scratch,
        &case(
            "standby kubelet missing",
            &["standby", "--kubelet", &missing],
            &[],
            69,
            &["kubelet binary"],
        ),
    );
    let fake = double("fake-kubelet").display().to_string();
    run_case(
        &scratch,
        &case(
            "run with a bad lease",
            &["run", "--kubelet", &fake],
            &[(CPUS, "abc"), (MEM, "1.0")],
            65,
            &["is not a number"],
        ),
    );
    run_case(
        &scratch,
        &case(
            "run with an owned flag",
            &[
                "run",
                "--kubelet",
                &fake,
                "--cpus",
                "1",
                "--mem",
                "1",
                "--",
                "--eviction-hard=memory.available<1Gi",
            ],
            &[],
            64,
            &["--eviction-hard"],
        ),
    );
}
