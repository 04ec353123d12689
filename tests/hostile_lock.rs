//! The host lock against an adversary on the same host (issue 8, finding 3): links, FIFOs and
//! relative paths are refused with one line and exit 78; an unrelated process named in a lock
//! record is never signalled; an unprivileged neighbour can neither open the lock file nor
//! block the agent with a `flock` on an old readable copy.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kubelet_resource_wrapper::lock::{self, Role};

const NOBODY: u32 = 65534;

fn run_env(scratch: &Scratch, lock: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KRW_KUBELET", double("fake-kubelet").display().to_string()),
        ("KRW_HOST_ROOT", scratch.host_root().display().to_string()),
        (
            "KRW_LEGACY_FILE",
            scratch.path("services").display().to_string(),
        ),
        ("KRW_LOCK_FILE", lock.to_string()),
        ("KRW_HEALTH_ADDR", format!("127.0.0.1:{}", free_port())),
        ("KRW_KUBELET_HEALTHZ_PORT", "0".into()),
        ("KRW_STOP_TIMEOUT", "0".into()),
        ("KRW_CPUS", "1".into()),
        ("KRW_MEM", "512".into()),
        (
            "KRW_ENV_FILE",
            scratch.path("no-settings").display().to_string(),
        ),
    ]
}

fn run_agent(scratch: &Scratch, lock: &str) -> (Option<i32>, String) {
    let env = run_env(scratch, lock);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = agent(&["run"], &env);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    lines[0]
}

#[test]
fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
    let scratch = Scratch::new(2, 4);
    let target = scratch.path("precious");
    std::fs::write(&target, "operator data\n").expect("write");
    let link = scratch.path("krw.lock");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let (code, stderr) = run_agent(&scratch, &link.display().to_string());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("symbolic link"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("read"),
        "operator data\n"
    );
    assert!(scratch.kubelet_status().is_none(), "a kubelet was started");
}

#[test]
fn a_fifo_or_a_relative_path_is_refused_at_once() {
    let scratch = Scratch::new(2, 4);
    let fifo = scratch.path("krw.lock");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("fifo");
    let started = Instant::now();
    let (code, stderr) = run_agent(&scratch, &fifo.display().to_string());
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("FIFO"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let (code, stderr) = run_agent(&scratch, "krw.lock");
    assert_eq!(code, Some(78), "{stderr}");
    assert!(one_line(&stderr).contains("relative"), "{stderr}");
}

#[test]
fn a_record_naming_an_unrelated_process_never_gets_it_signalled() {
    let scratch = Scratch::new(2, 4);
    let path = scratch.lock_file();
    // Hold the kubelet lock here, with a record that names an unrelated process as standby
    // (a stale record after pid reuse looks exactly like this).
    let held = lock::try_acquire(&path, Role::Standby).expect("hold the lock");
    let mut victim = Command::new("sleep")
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .expect("sleep");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", victim.id())).expect("stat");
    let start = lock::parse_start_time(&stat).expect("start time");
    std::fs::write(&path, format!("{} standby {start}\n", victim.id())).expect("record");
    let (code, stderr) = run_agent(&scratch, &path.display().to_string());
    let victim_alive = victim.try_wait().expect("wait").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    drop(held);
    assert!(victim_alive, "the agent signalled an unrelated process");
    assert_eq!(code, Some(73), "{stderr}");
    assert!(
        stderr.contains("not signalling the lock holder"),
        "{stderr}"
    );
    assert!(stderr.contains("did not yield"), "{stderr}");
}

/// Runs `argv` as `nobody` (setuid in the child before exec).
fn as_nobody(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[test]
fn an_unprivileged_neighbour_cannot_open_the_lock_nor_block_the_agent() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as nobody");
        return;
    }
    // A directory others may traverse (like /run), holding a lock file an older version left
    // readable to everyone.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("krw.lock");
    std::fs::write(&path, "").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let old_ino = std::fs::metadata(&path).expect("meta").ino();
    let p = path.display().to_string();
    let mut neighbour = as_nobody(&["flock", "--shared", &p, "sleep", "60"])
        .spawn()
        .expect("flock as nobody");
    // Wait until the neighbour really holds its lock on the old inode.
    assert!(wait_until(Duration::from_secs(10), || {
        Command::new("flock")
            .args(["--nonblock", "--exclusive", &p, "true"])
            .status()
            .is_ok_and(|s| !s.success())
    }));
    let taken = lock::try_acquire(&path, Role::Run);
    let new_meta = std::fs::metadata(&path).expect("meta");
    // A neighbour cannot even open the fresh file to lock it.
    let reopen = as_nobody(&["flock", "--nonblock", "--shared", &p, "true"])
        .status()
        .expect("flock as nobody");
    let _ = neighbour.kill();
    let _ = neighbour.wait();
    let held = taken.expect("the agent takes the lock despite the neighbour's flock");
    assert_ne!(new_meta.ino(), old_ino, "the old inode was kept");
    assert_eq!(new_meta.mode() & 0o777, 0o600);
    assert_eq!(new_meta.uid(), 0);
    assert!(!reopen.success(), "nobody could open the new lock file");
    drop(held);
    assert!(!Path::new(&format!("{p}.{}.new", std::process::id())).exists());
}
