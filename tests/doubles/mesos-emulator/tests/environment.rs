//! Launch behaviour: environment, cmd vs args, session, sandbox, terminal states of a task that ends
//! by itself.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

fn run_env_app(
    app: serde_json::Value,
    extra: &[&str],
) -> (Vec<(String, String)>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let app = write_app(dir.path(), &app);
    let mut args = vec!["--sandbox", sandbox.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut emu = Emu::start(&app, &args);
    let launched = emu.launched();
    let t = emu.wait_event("terminal", Duration::from_secs(5));
    assert_eq!(t["state"], "TASK_FINISHED", "{t}");
    emu.wait_exit(Duration::from_secs(5));
    let out = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    (parse_env(&out), launched)
}

fn get<'a>(env: &'a [(String, String)], k: &str) -> &'a str {
    env.iter()
        .find(|(kk, _)| kk == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{k} missing from {env:#?}"))
}

#[test]
fn environment_is_exactly_what_mesos_and_marathon_set() {
    let (env, launched) = run_env_app(
        json!({
            "id": "/k8s/kubelet",
            "args": ["env"],
            "cpus": 2, "mem": 4196, "disk": 0, "gpus": 0,
            "portDefinitions": [],
            "labels": {"owner.team": "k8s", "tier": "infra"},
            "env": {"KUBELET_EXTRA": "yes"},
        }),
        &["--host", "node-7.example", "--extra-env", "AGENT_SET=1"],
    );
    let keys: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let expected: BTreeSet<&str> = [
        // --executor_environment_variables
        "AGENT_SET",
        // agent executorEnvironment() + containerizer
        "PATH",
        "LIBPROCESS_PORT",
        "MESOS_FRAMEWORK_ID",
        "MESOS_EXECUTOR_ID",
        "MESOS_DIRECTORY",
        "MESOS_SANDBOX",
        "MESOS_SLAVE_ID",
        "MESOS_SLAVE_PID",
        "MESOS_AGENT_ENDPOINT",
        "MESOS_CHECKPOINT",
        "MESOS_HTTP_COMMAND_EXECUTOR",
        "MESOS_RECOVERY_TIMEOUT",
        "MESOS_SUBSCRIPTION_BACKOFF_MAX",
        "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
        // Marathon taskContextEnv + HOST
        "MESOS_TASK_ID",
        "MARATHON_APP_ID",
        "MARATHON_APP_VERSION",
        "MARATHON_APP_RESOURCE_CPUS",
        "MARATHON_APP_RESOURCE_MEM",
        "MARATHON_APP_RESOURCE_DISK",
        "MARATHON_APP_RESOURCE_GPUS",
        "MARATHON_APP_LABELS",
        "MARATHON_APP_LABEL_OWNER_TEAM",
        "MARATHON_APP_LABEL_TIER",
        "HOST",
        // app env
        "KUBELET_EXTRA",
        // executor launch()
        "MESOS_ALLOCATION_ROLE",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(env.len(), expected.len(), "duplicate keys: {env:#?}");

    let task_id = launched["task_id"].as_str().unwrap();
    let sandbox = launched["sandbox"].as_str().unwrap();
    assert!(task_id.starts_with("k8s_kubelet.instance-"), "{task_id}");
    assert!(task_id.ends_with("._app.1"), "{task_id}");
    assert_eq!(
        task_id.len(),
        "k8s_kubelet.instance-".len() + 36 + "._app.1".len()
    );
    assert_eq!(get(&env, "MESOS_TASK_ID"), task_id);
    assert_eq!(get(&env, "MESOS_EXECUTOR_ID"), task_id);
    assert_eq!(get(&env, "MESOS_DIRECTORY"), sandbox);
    assert_eq!(get(&env, "MESOS_SANDBOX"), sandbox);
    assert_eq!(get(&env, "MARATHON_APP_ID"), "/k8s/kubelet");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_CPUS"), "2.0");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_MEM"), "4196.0");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_DISK"), "0.0");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_GPUS"), "0");
    assert_eq!(get(&env, "MARATHON_APP_LABELS"), "OWNER_TEAM TIER");
    assert_eq!(get(&env, "MARATHON_APP_LABEL_OWNER_TEAM"), "k8s");
    assert_eq!(get(&env, "HOST"), "node-7.example");
    assert_eq!(get(&env, "AGENT_SET"), "1");
    assert_eq!(get(&env, "KUBELET_EXTRA"), "yes");
    assert_eq!(get(&env, "MESOS_ALLOCATION_ROLE"), "*");
    assert_eq!(get(&env, "MESOS_CHECKPOINT"), "1");
    assert_eq!(get(&env, "MESOS_HTTP_COMMAND_EXECUTOR"), "0");
    assert_eq!(get(&env, "LIBPROCESS_PORT"), "0");
    assert_eq!(get(&env, "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"), "5secs");
    assert_eq!(
        get(&env, "PATH"),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let version = get(&env, "MARATHON_APP_VERSION");
    // 2015-02-03T12:30:00.000Z
    assert_eq!(version.len(), 24, "{version}");
    assert_eq!(&version[10..11], "T");
    assert_eq!(&version[19..20], ".");
    assert!(version.ends_with('Z'));
}

#[test]
fn double_formatting_and_precedence() {
    let (env, _) = run_env_app(
        json!({
            "id": "/fmt",
            "args": ["env"],
            "cpus": 0.5, "mem": 1e7, "disk": 12345678.9, "gpus": 2,
            "taskKillGracePeriodSeconds": 30,
            "portDefinitions": [{"port": 0, "name": "http"}],
            "env": {"MARATHON_APP_RESOURCE_CPUS": "7", "MESOS_ALLOCATION_ROLE": "nope",
                    "PATH": "/opt/bin:/usr/bin:/bin"},
        }),
        &["--role", "k8s"],
    );
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_MEM"), "1.0E7");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_DISK"), "1.23456789E7");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_GPUS"), "2");
    // The app's env wins over Marathon's variables ...
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_CPUS"), "7");
    assert_eq!(get(&env, "PATH"), "/opt/bin:/usr/bin:/bin");
    // ... but not over MESOS_ALLOCATION_ROLE, which the executor sets last.
    assert_eq!(get(&env, "MESOS_ALLOCATION_ROLE"), "k8s");
    // kill policy 30 s → executor shutdown grace 30 + 1 + 1
    assert_eq!(get(&env, "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"), "32secs");
    let port = get(&env, "PORT0");
    assert!(port.parse::<u16>().unwrap() > 0);
    assert_eq!(get(&env, "PORT"), port);
    assert_eq!(get(&env, "PORTS"), port);
    assert_eq!(get(&env, "PORT_HTTP"), port);
    assert_eq!(get(&env, "MARATHON_APP_LABELS"), "");

    let (env, _) = run_env_app(
        json!({"id": "/fmt", "args": ["env"], "cpus": 0.1, "mem": 0.0001}),
        &[],
    );
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_CPUS"), "0.1");
    assert_eq!(get(&env, "MARATHON_APP_RESOURCE_MEM"), "1.0E-4");
    // Marathon's default port definition: one random port named "default".
    assert!(env.iter().any(|(k, _)| k == "PORT_DEFAULT"));
}

fn stat_fields(pid: i32) -> (String, i32, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = s.rsplit_once(')').unwrap();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    (
        comm.trim().to_string(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    )
}

#[test]
fn cmd_runs_under_sh_and_args_exec_directly_in_own_session() {
    for (app, want_comm) in [
        (json!({"id": "/c", "cmd": "sleep 5; true"}), "sh"),
        (json!({"id": "/c", "args": ["sleep", "5"]}), "sleep"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sb");
        let app = write_app(dir.path(), &app);
        let mut emu = Emu::start(
            &app,
            &["--sandbox", sandbox.to_str().unwrap(), "--kill-grace", "1"],
        );
        let l = emu.launched();
        let pid = l["pid"].as_i64().unwrap() as i32;
        std::thread::sleep(Duration::from_millis(100));
        let (comm, pgrp, session) = stat_fields(pid);
        assert_eq!(comm, want_comm);
        assert_eq!(pgrp, pid, "task leads its process group");
        assert_eq!(session, pid, "task leads its session");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, std::fs::canonicalize(&sandbox).unwrap());
        emu.signal(libc::SIGTERM);
        let t = emu.wait_event("terminal", Duration::from_secs(4));
        assert_eq!(t["state"], "TASK_KILLED");
        assert_eq!(t["signal"], 15);
        emu.wait_exit(Duration::from_secs(4));
    }
}

#[test]
fn terminal_states_of_a_task_ending_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sb");
    let sb = sandbox.to_str().unwrap();

    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "cmd": "echo out; echo err >&2; exit 0"}),
    );
    let mut emu = Emu::start(&app, &["--sandbox", sb]);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_FINISHED");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["seconds_after_kill"], serde_json::Value::Null);
    assert!(emu.wait_exit(Duration::from_secs(4)).success());
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        "out\n"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stderr")).unwrap(),
        "err\n"
    );

    let app = write_app(dir.path(), &json!({"id": "/t", "cmd": "exit 3"}));
    let mut emu = Emu::start(&app, &["--sandbox", sb, "--exit-with-task"]);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_FAILED");
    assert_eq!(t["exit_code"], 3);
    emu.wait_event("destroyed", Duration::from_secs(4));
    assert_eq!(emu.wait_exit(Duration::from_secs(4)).code(), Some(3));

    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "args": ["/nonexistent/binary"]}),
    );
    let mut emu = Emu::start(&app, &["--sandbox", sb]);
    let t = emu.wait_event("terminal", Duration::from_secs(4));
    assert_eq!(t["state"], "TASK_FAILED");
    assert!(t["message"].as_str().unwrap().contains("failed to launch"));
    assert_eq!(emu.wait_exit(Duration::from_secs(4)).code(), Some(0));
}

#[test]
fn rejects_bad_app_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "cmd": "true", "args": ["true"]}),
    );
    let mut emu = Emu::start(&app, &[]);
    let e = emu.wait_event("error", Duration::from_secs(4));
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("mutually exclusive")
    );
    assert_eq!(emu.wait_exit(Duration::from_secs(4)).code(), Some(2));
}

#[test]
fn inherit_stdio_passes_task_output_through() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sb");
    let app = write_app(
        dir.path(),
        &json!({"id": "/t", "cmd": "echo hello-from-task"}),
    );
    let mut emu = Emu::start(
        &app,
        &["--sandbox", sandbox.to_str().unwrap(), "--inherit-stdio"],
    );
    emu.wait_event("terminal", Duration::from_secs(4));
    emu.wait_exit(Duration::from_secs(4));
    let raw: Vec<_> = emu.seen("_raw");
    assert_eq!(raw.len(), 1, "{raw:#?}");
    assert_eq!(raw[0]["line"], "hello-from-task");
    assert!(!sandbox.join("stdout").exists());
}
