//! Hostile input (issue 8, findings 4 and 5): files that would hang or exhaust the agent, a
//! settings file systemd would read differently, kubelet flags in every spelling kubelet
//! accepts and KubeletConfiguration fields that change allocatable. Each case: the documented
//! exit code, one line, within a deadline, nothing started.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A generous deadline: a hang is what these tests catch, not speed.
const DEADLINE: Duration = Duration::from_secs(30);

struct Outcome {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

/// Runs the agent with a deadline; a run past it is killed (by pid) and fails the test.
fn agent_within(args: &[&str], env: &[(&str, String)]) -> Outcome {
    agent_limited(args, env, None)
}

/// [`agent_within`], optionally with its address space capped (`prlimit --as`), as a host
/// with little free memory would cap it.
fn agent_limited(args: &[&str], env: &[(&str, String)], max_bytes: Option<u64>) -> Outcome {
    let out_file = tempfile::NamedTempFile::new().expect("stdout file");
    let err_file = tempfile::NamedTempFile::new().expect("stderr file");
    let mut cmd = match max_bytes {
        Some(bytes) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--as={bytes}")).arg("--").arg(AGENT);
            c
        }
        None => Command::new(AGENT),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(out_file.reopen().expect("reopen"))
        .stderr(err_file.reopen().expect("reopen"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn agent");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent {args:?} still running after {DEADLINE:?} (hung)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stderr: std::fs::read_to_string(err_file.path()).unwrap_or_default(),
        stdout: std::fs::read_to_string(out_file.path()).unwrap_or_default(),
    }
}

type Env = Vec<(&'static str, String)>;

/// Environment for `plan` on a fake 4-CPU, 8 GiB host, with no settings file and no lease.
fn base_env(scratch: &Scratch) -> Env {
    vec![
        ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
        (
            "KRW_LEGACY_FILE",
            scratch.path("services").display().to_string(),
        ),
        (
            "KRW_ENV_FILE",
            scratch.path("no-settings").display().to_string(),
        ),
        ("KRW_LOCK_FILE", scratch.lock_file().display().to_string()),
    ]
}

fn with(
    mut env: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k, v.to_string()));
    }
    env
}

fn lease() -> [(&'static str, &'static str); 2] {
    [("KRW_CPUS", "1"), ("KRW_MEM", "512")]
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// Asserts a refusal: the code, exactly one line naming `needle`, nothing printed on stdout.
fn refused(o: &Outcome, code: i32, needle: &str) {
    assert_eq!(o.code, Some(code), "{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{}", o.stderr);
    assert!(lines[0].contains(needle), "{needle:?} not in {}", o.stderr);
    assert!(o.stdout.is_empty(), "printed a result anyway: {}", o.stdout);
}

#[test]
fn fifos_and_devices_as_input_files_are_refused_without_hanging() {
    let scratch = Scratch::new(4, 8);
    let fifo = scratch.path("fifo");
    mkfifo(&fifo);
    let f = fifo.display().to_string();
    let cases: Vec<(&str, Env, Vec<&str>, i32)> = vec![
        (
            "legacy lease file",
            with(base_env(&scratch), &[("KRW_LEGACY_FILE", &f)]),
            vec!["plan"],
            65,
        ),
        (
            "legacy /dev/zero",
            with(base_env(&scratch), &[("KRW_LEGACY_FILE", "/dev/zero")]),
            vec!["plan"],
            65,
        ),
        (
            "settings file",
            with(base_env(&scratch), &[("KRW_ENV_FILE", &f)]),
            vec!["plan"],
            78,
        ),
        (
            "settings /dev/zero",
            with(base_env(&scratch), &[("KRW_ENV_FILE", "/dev/zero")]),
            vec!["plan"],
            78,
        ),
        (
            "args file",
            with(
                base_env(&scratch),
                &[("KRW_KUBELET_ARGS_FILE", &f), lease()[0], lease()[1]],
            ),
            vec!["plan"],
            64,
        ),
        (
            "args /dev/zero",
            with(
                base_env(&scratch),
                &[
                    ("KRW_KUBELET_ARGS_FILE", "/dev/zero"),
                    lease()[0],
                    lease()[1],
                ],
            ),
            vec!["plan"],
            64,
        ),
        (
            "kubelet config",
            with(base_env(&scratch), &lease()),
            vec!["plan", "--", "--config", &f],
            64,
        ),
    ];
    for (name, env, args, code) in cases {
        let o = agent_within(&args, &env);
        assert_eq!(o.code, Some(code), "{name}: {}", o.stderr);
        let kind = if o.stderr.contains("FIFO") {
            "FIFO"
        } else {
            "character device"
        };
        refused(&o, code, kind);
    }
    // A FIFO in the host root's /proc.
    let meminfo = scratch.host_root().join("proc/meminfo");
    std::fs::remove_file(&meminfo).expect("rm meminfo");
    mkfifo(&meminfo);
    let o = agent_within(&["plan"], &with(base_env(&scratch), &lease()));
    refused(&o, 78, "FIFO");
}

#[test]
fn the_legacy_file_is_not_opened_when_flags_or_marathon_give_the_lease() {
    let scratch = Scratch::new(4, 8);
    let fifo = scratch.path("services");
    mkfifo(&fifo);
    let o = agent_within(&["plan"], &with(base_env(&scratch), &lease()));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let o = agent_within(
        &["plan"],
        &with(
            base_env(&scratch),
            &[
                ("MARATHON_APP_RESOURCE_CPUS", "1.0"),
                ("MARATHON_APP_RESOURCE_MEM", "512.0"),
            ],
        ),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

#[test]
fn huge_files_are_refused_by_size() {
    let scratch = Scratch::new(4, 8);
    let big = scratch.path("big");
    std::fs::write(&big, "KRW_A=1\n".repeat(20_000)).expect("write");
    let o = agent_within(
        &["plan"],
        &with(
            base_env(&scratch),
            &[("KRW_ENV_FILE", &big.display().to_string())],
        ),
    );
    refused(&o, 78, "larger than");
    let o = agent_within(
        &["plan"],
        &with(
            base_env(&scratch),
            &[("KRW_LEGACY_FILE", &big.display().to_string())],
        ),
    );
    refused(&o, 65, "larger than");
}

#[test]
fn a_cpu_online_list_of_three_thousand_ranges_is_counted() {
    let scratch = Scratch::new(4, 8);
    // 3,000 ranges of 65,536 ids each (~55 KB), the first covering the 4 real CPUs. Expanded id
    // by id they would need 1.5 GB; under a 1 GiB address space that aborted the agent (rc 134).
    let list: Vec<String> = (0..3000u64)
        .map(|i| format!("{}-{}", i * 70_000, i * 70_000 + 65_535))
        .collect();
    let text = list.join(",");
    assert!(text.len() > 40_000);
    std::fs::write(
        scratch.host_root().join("sys/devices/system/cpu/online"),
        format!("{text}\n"),
    )
    .expect("write online");
    let o = agent_limited(
        &["plan", "--output", "json"],
        &with(base_env(&scratch), &lease()),
        Some(1 << 30),
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["capacity"]["cpu_millicores"], 4000);
}

#[test]
fn the_settings_file_follows_systemd_environment_file_rules() {
    let scratch = Scratch::new(4, 8);
    let settings = scratch.path("settings");
    let env = with(
        base_env(&scratch),
        &[("KRW_ENV_FILE", &settings.display().to_string())],
    );
    for (bytes, needle) in [
        (&b"KRW_CPUS=1\nKRW_MEM=5\x0012\n"[..], "NUL"),
        (
            &b"\xef\xbb\xbfKRW_CPUS=1\nKRW_MEM=512\n"[..],
            "byte-order mark",
        ),
        (&b"export KRW_CPUS=1\nKRW_MEM=512\n"[..], "without export"),
        (&b"KRW_CPUS=1\nKRW_MEM\n"[..], "has no '='"),
        (&b"KRW_CPUS=\"1\nKRW_MEM=512\n"[..], "no closing quote"),
        (&b"KRW_CPUS=\xff\n"[..], "UTF-8"),
    ] {
        std::fs::write(&settings, bytes).expect("write");
        let o = agent_within(&["plan"], &env);
        refused(&o, 78, needle);
    }
    // CRLF lines, quotes and a continuation read as systemd reads them.
    std::fs::write(
        &settings,
        "# host settings\r\nKRW_CPUS=\"1\"\r\nKRW_MEM=5\\\n12\r\n",
    )
    .expect("write");
    let o = agent_within(&["plan", "--output", "json"], &env);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["lease"]["cpu_millicores"], 1000);
    assert_eq!(v["lease"]["memory_bytes"], 512u64 << 20);
}

/// Every flag the agent owns or refuses, in every spelling kubelet's `WordSepNormalizeFunc`
/// maps to it (`_` for `-`), as `--flag=value` and as `--flag value`.
#[test]
fn every_owned_flag_in_every_spelling_is_refused() {
    let scratch = Scratch::new(4, 8);
    let flags = [
        ("system-reserved", "cpu=1"),
        ("kube-reserved", "cpu=1"),
        ("eviction-hard", "memory.available<1Gi"),
        ("healthz-port", "10248"),
        ("healthz-bind-address", "0.0.0.0"),
        ("reserved-cpus", "0-1"),
        ("experimental-allocatable-ignore-eviction", "true"),
        ("reserved-memory", "0:memory=1Gi"),
        ("system-reserved-cgroup", "/system"),
        ("kube-reserved-cgroup", "/kube"),
        ("enforce-node-allocatable", "pods,system-reserved"),
    ];
    let env = with(base_env(&scratch), &lease());
    let mut cases = 0;
    for (name, value) in flags {
        let words: Vec<&str> = name.split('-').collect();
        // Every combination of '-' and '_' between the words.
        for mask in 0..(1u32 << (words.len() - 1)) {
            let mut spelled = String::from("--");
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    spelled.push(if mask & (1 << (i - 1)) != 0 { '_' } else { '-' });
                }
                spelled.push_str(w);
            }
            for args in [
                vec![format!("{spelled}={value}")],
                vec![spelled.clone(), value.to_string()],
            ] {
                let mut all = vec!["plan".to_string(), "--".to_string(), "--v=2".to_string()];
                all.extend(args);
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                let o = agent_within(&all, &env);
                refused(&o, 64, &spelled);
                cases += 1;
            }
        }
    }
    let expected: u32 = flags
        .iter()
        .map(|(name, _)| 2 * (1u32 << name.matches('-').count()))
        .sum();
    assert_eq!(cases, expected);
}

fn config(scratch: &Scratch, name: &str, body: &str) -> String {
    let path = scratch.path(name);
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

/// One KubeletConfiguration per field that changes allocatable or how it is enforced.
#[test]
fn a_config_file_per_refused_field_is_refused_naming_it() {
    let scratch = Scratch::new(4, 8);
    let env = with(base_env(&scratch), &lease());
    for (field, value) in [
        ("reservedSystemCPUs", "\"0-1\""),
        ("reservedMemory", "[{numaNode: 0, limits: {memory: 1Gi}}]"),
        ("systemReservedCgroup", "/system.slice"),
        ("kubeReservedCgroup", "/kube.slice"),
        ("enforceNodeAllocatable", "[pods, system-reserved]"),
        ("enforceNodeAllocatable", "[]"),
    ] {
        let path = config(
            &scratch,
            "kubelet.yaml",
            &format!("{HEAD}{field}: {value}\n"),
        );
        let o = agent_within(&["plan", "--", &format!("--config={path}")], &env);
        refused(&o, 64, field);
        // The same field in JSON, and in a --config-dir drop-in.
        let json = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            field: serde_yaml_ng::from_str::<serde_json::Value>(value).expect("value"),
        });
        let path = config(&scratch, "kubelet.json", &json.to_string());
        let o = agent_within(&["plan", "--", "--config", &path], &env);
        refused(&o, 64, field);
        let dropins = scratch.path("kubelet.conf.d/nested");
        std::fs::create_dir_all(&dropins).expect("mkdir");
        std::fs::write(
            dropins.join("10-x.conf"),
            format!("{HEAD}{field}: {value}\n"),
        )
        .expect("write");
        let o = agent_within(
            &[
                "plan",
                "--",
                &format!("--config_dir={}", scratch.path("kubelet.conf.d").display()),
            ],
            &env,
        );
        refused(&o, 64, field);
        std::fs::remove_file(dropins.join("10-x.conf")).expect("rm");
    }
    for (body, needle) in [
        ("apiVersion: v1\nkind: KubeletConfiguration\n", "apiVersion"),
        ("key: [unclosed\n", "not a YAML or JSON object"),
        ("- a list\n", "not a YAML or JSON object"),
    ] {
        let path = config(&scratch, "bad.yaml", body);
        let o = agent_within(&["plan", "--", "--config", &path], &env);
        refused(&o, 64, needle);
    }
}

#[test]
fn run_refuses_a_private_mount_namespace() {
    let scratch = Scratch::new(4, 8);
    let ns = scratch.host_root().join("proc/1/ns");
    std::fs::create_dir_all(&ns).expect("mkdir");
    std::os::unix::fs::symlink("mnt:[1]", ns.join("mnt")).expect("link");
    let env = with(
        base_env(&scratch),
        &[
            lease()[0],
            lease()[1],
            ("KRW_HEALTH_ADDR", &format!("127.0.0.1:{}", free_port())),
        ],
    );
    let mut env = env;
    env.push(("KRW_KUBELET", double("fake-kubelet").display().to_string()));
    let o = agent_within(&["run"], &env);
    refused(&o, 78, "private mount namespace");
    assert!(!scratch.lock_file().exists(), "the lock was taken");
    assert!(scratch.kubelet_status().is_none(), "a kubelet was started");
}
