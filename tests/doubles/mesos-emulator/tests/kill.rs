//! Kill path (killtree SIGTERM, escalation to SIGKILL) and container destroy.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

fn script_app(dir: &Path, script: &str, grace: Option<f64>) -> std::path::PathBuf {
    let sb = dir.join("sb");
    std::fs::create_dir_all(&sb).unwrap();
    std::fs::write(sb.join("task.sh"), script).unwrap();
    let mut app = json!({"id": "/k8s/kubelet", "cmd": "exec sh ./task.sh", "portDefinitions": []});
    if let Some(g) = grace {
        app["taskKillGracePeriodSeconds"] = json!(g);
    }
    write_app(dir, &app)
}

#[test]
fn task_trapping_term_and_exiting_0_is_killed_before_grace() {
    let dir = tempfile::tempdir().unwrap();
    let app = script_app(
        dir.path(),
        "trap 'echo term; exit 0' TERM\necho ready > ready\nsleep 30 &\nwait\n",
        Some(4.0),
    );
    let sb = dir.path().join("sb");
    let mut emu = Emu::start(&app, &["--sandbox", sb.to_str().unwrap()]);
    emu.launched();
    wait_file(&sb.join("ready")); // the trap is installed
    emu.signal(libc::SIGTERM);
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["reason"], "signal");
    assert_eq!(k["grace_seconds"], 4.0);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED", "killed wins over exit code 0");
    assert_eq!(t["exit_code"], 0);
    assert!(t["seconds_after_kill"].as_f64().unwrap() < 1.0, "{t}");
    emu.wait_exit(Duration::from_secs(4));
    assert!(emu.seen("escalated").is_empty());
    assert_eq!(
        std::fs::read_to_string(sb.join("stdout")).unwrap(),
        "term\n"
    );
}

#[test]
fn task_ignoring_term_is_sigkilled_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    // The default grace (no taskKillGracePeriodSeconds) is 3 s; use the app field to make it 1 s.
    let app = script_app(
        dir.path(),
        "trap '' TERM\necho ready > ready\nwhile true; do sleep 0.1; done\n",
        Some(1.0),
    );
    let sb = dir.path().join("sb");
    let mut emu = Emu::start(
        &app,
        &["--sandbox", sb.to_str().unwrap(), "--kill-after", "0.3"],
    );
    emu.launched();
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["reason"], "kill_after");
    emu.wait_event("escalated", Duration::from_secs(4));
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED");
    assert_eq!(t["signal"], 9);
    assert_eq!(t["exit_code"], serde_json::Value::Null);
    let after = t["seconds_after_kill"].as_f64().unwrap();
    assert!((1.0..2.5).contains(&after), "{t}");
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn default_destroy_delay_is_the_executors_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let app = script_app(dir.path(), "exit 0\n", None);
    let sb = dir.path().join("sb");
    let mut emu = Emu::start(&app, &["--sandbox", sb.to_str().unwrap()]);
    assert_eq!(emu.launched()["destroy_delay_seconds"], 1.0);
    emu.wait_event("destroyed", Duration::from_secs(10));
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn default_grace_is_three_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let app = script_app(dir.path(), "sleep 30\n", None);
    let sb = dir.path().join("sb");
    let mut emu = Emu::start(
        &app,
        &["--sandbox", sb.to_str().unwrap(), "--kill-after", "0"],
    );
    let l = emu.launched();
    assert_eq!(l["kill_grace_seconds"], 3.0);
    let k = emu.wait_event("killing", Duration::from_secs(4));
    assert_eq!(k["grace_seconds"], 3.0);
    emu.wait_event("terminal", Duration::from_secs(4));
    emu.wait_exit(Duration::from_secs(4));
}

#[test]
fn grandchild_gets_sigterm_at_the_same_time_as_the_root() {
    let dir = tempfile::tempdir().unwrap();
    // root (sh task.sh) → child (sh) → grandchild (sh), each recording when TERM arrived.
    // The grandchild even moved to its own process group: killtree follows descendants anyway.
    let script = r#"
# Like a well-behaved wrapper, the root waits for its tree (here: the grandchild's note) before
# exiting, because the container destroy SIGKILLs whatever is left once the root is gone.
trap 'date +%s.%N > root_term; while [ ! -s gc_term ]; do sleep 0.02; done; exit 0' TERM
sh -c '
  echo $$ > mid.pid
  setsid sh -c "trap \"date +%s.%N > gc_term; exit 0\" TERM; echo \$\$ > gc.pid; while true; do sleep 0.05; done" &
  trap "" TERM
  while true; do sleep 0.05; done
' &
while [ ! -s gc.pid ]; do sleep 0.02; done
echo ready > ready
wait
"#;
    let app = script_app(dir.path(), script, Some(3.0));
    let sb = dir.path().join("sb");
    let mut emu = Emu::start(&app, &["--sandbox", sb.to_str().unwrap()]);
    emu.launched();
    let gc = read_pid(&sb.join("gc.pid"));
    let mid = read_pid(&sb.join("mid.pid"));
    emu.own(gc);
    emu.own(mid);
    wait_file(&sb.join("ready"));
    emu.signal(libc::SIGTERM);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_KILLED");
    assert!(t["seconds_after_kill"].as_f64().unwrap() < 1.0);
    let d = emu.wait_event("destroyed", Duration::from_secs(4));
    emu.wait_exit(Duration::from_secs(4));
    let root_t: f64 = read_f64(&sb.join("root_term"));
    let gc_t: f64 = read_f64(&sb.join("gc_term"));
    assert!(
        (root_t - gc_t).abs() < 0.5,
        "root {root_t} grandchild {gc_t}"
    );
    assert!(!alive(gc));
    // The child that ignored TERM was left behind by the root and SIGKILLed by the destroy
    // (it still carries the task's environment).
    let killed = d["killed_pids"].as_array().unwrap();
    assert!(killed.contains(&json!(mid)), "{d}");
    assert!(!killed.contains(&json!(gc)), "{d}");
    assert!(!alive(mid));
}

fn read_f64(p: &Path) -> f64 {
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(p)
            && let Ok(v) = s.trim().parse()
        {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no timestamp in {}", p.display());
}

#[test]
fn destroy_kills_what_kept_the_task_env_and_spares_what_escaped() {
    let dir = tempfile::tempdir().unwrap();
    // Both grandchildren leave the session with setsid; only one also clears its environment
    // (like a containerd-started pod). The root then exits 0 while they run on.
    let script = r#"
setsid env -i /bin/sh -c 'echo $$ > escaped.pid; exec /bin/sleep 30' &
setsid /bin/sh -c 'echo $$ > kept.pid; exec /bin/sleep 30' &
while [ ! -s escaped.pid ] || [ ! -s kept.pid ]; do sleep 0.02; done
exit 0
"#;
    let app = script_app(dir.path(), script, None);
    let sb = dir.path().join("sb");
    // The executor lingers before the agent destroys the container (1 s by default; 3 s
    // here so the window is observable on a loaded machine).
    let mut emu = Emu::start(
        &app,
        &["--sandbox", sb.to_str().unwrap(), "--destroy-delay", "3"],
    );
    assert_eq!(emu.launched()["destroy_delay_seconds"], 3.0);
    let escaped = read_pid(&sb.join("escaped.pid"));
    let kept = read_pid(&sb.join("kept.pid"));
    emu.own(escaped);
    emu.own(kept);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_FINISHED");
    assert!(
        alive(kept),
        "still running between the terminal update and the destroy"
    );
    let d = emu.wait_event("destroyed", Duration::from_secs(8));
    emu.wait_exit(Duration::from_secs(4));
    let killed: Vec<i64> = d["killed_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(killed, vec![kept as i64], "{d}");
    assert!(
        !alive(kept),
        "kept-env grandchild must be killed by the destroy"
    );
    assert!(
        alive(escaped),
        "escaped grandchild must survive the destroy"
    );
}

#[test]
fn repeated_kill_signals_do_not_restart_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let app = script_app(
        dir.path(),
        "trap '' TERM\necho ready > ready\nwhile true; do sleep 0.1; done\n",
        Some(1.0),
    );
    let sb = dir.path().join("sb");
    let mut emu = Emu::start(&app, &["--sandbox", sb.to_str().unwrap()]);
    emu.launched();
    wait_file(&sb.join("ready"));
    emu.signal(libc::SIGTERM);
    emu.wait_event("killing", Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(600));
    emu.signal(libc::SIGTERM);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    let after = t["seconds_after_kill"].as_f64().unwrap();
    assert!((1.0..2.0).contains(&after), "{t}");
    emu.wait_exit(Duration::from_secs(4));
    assert_eq!(emu.seen("killing").len(), 1);
}
