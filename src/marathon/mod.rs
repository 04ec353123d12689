//! `kubelet-resource-wrapper marathon deploy | scale N | status`: the Marathon REST API client
//! (DESIGN §2; research/marathon.md §5–§6).
//!
//! * `deploy [--app FILE] [--wait] [--force]` — create-or-update the app with `PUT /v2/apps/{id}`
//!   (Marathon's default `partialUpdate=true`: fields in the file replace the running ones). Warns when
//!   the file's `upgradeStrategy` would stall (or kill every node at once) under `hostname UNIQUE`, and
//!   names the one-host-at-a-time value `(N−1.5)/N` with `maximumOverCapacity 0`.
//! * `scale N [--wait] [--force] [--max-hosts H]` — `PUT {"instances": N}`. Before that it counts the
//!   hosts that can take an instance (hosts running one, plus Marathon's queue: instances already waiting
//!   with offers rejected for `UnfulfilledConstraint` mean there is no other host), or takes `--max-hosts`,
//!   and warns when N exceeds them: Marathon would leave the extra instances waiting forever and every
//!   later deployment would get 409 until forced.
//! * `status [--output text|json]` — the app's tasks: id, host, state, health, lease cpus/mem, plus
//!   waiting instances and running deployments.
//!
//! `--wait` follows the deployment (`GET /v2/deployments` until its id disappears), bounded by
//! `--timeout`, which also bounds each HTTP request.
//!
//! Options shared by all three (before or after the subcommand), each also from the environment:
//! `--marathon-url` (`MARATHON_URL`, default `http://127.0.0.1:8080`; a DC/OS path prefix such as
//! `https://master/service/marathon` is kept), `--user USER:PASS` (`MARATHON_CREDENTIALS`, HTTP Basic),
//! `--token T` (`MARATHON_TOKEN`, header `Authorization: token=T`), `--app-id` (`KRW_APP_ID`, default
//! `/k8s/kubelet`), `--timeout SECONDS` (`KRW_MARATHON_TIMEOUT`, default 30).
//!
//! Exit codes (every failure is one line naming the URL and Marathon's message):
//!
//! | code | when |
//! | --- | --- |
//! | 0 | done (warnings go to stderr and do not change the code) |
//! | 64 | usage: bad option value, unreadable `--app` file, both `--user` and `--token` |
//! | 65 | the app definition is not JSON, or Marathon rejected it (400 invalid JSON, 422 invalid app) |
//! | 69 | Marathon unreachable: connection refused, DNS, TLS, or no answer within `--timeout` |
//! | 70 | any other Marathon answer (404 app missing, 5xx, unexpected body), or stdout unwritable |
//! | 75 | 409: the app is locked by a running deployment (retry later or `--force`); also `--wait` ran out of time with the deployment still running |
//! | 78 | 401/403: authentication rejected (wrong `--user`/`--token`) |

pub mod client;
pub mod status;
pub mod strategy;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::exit::{ExitStatus, Failure};
use client::{Client, app_url, auth_header, normalize_app_id, parse_base_url};

/// Default location of the app definition, relative to the working directory.
pub const DEFAULT_APP_FILE: &str = "marathon/kubelet-resource-wrapper.json";

/// Longest `--timeout` accepted (one day).
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// How often `--wait` polls `/v2/deployments`.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// `kubelet-resource-wrapper marathon ...` options and subcommands.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit codes: 0 ok, 64 usage, 65 app definition invalid (local JSON or Marathon 400/422), \
        69 Marathon unreachable or no answer within --timeout, 70 other Marathon error (404, 5xx), \
        75 app locked by a running deployment (409) or --wait timed out, 78 authentication rejected (401/403)."
)]
pub struct MarathonArgs {
    /// Connection options shared by every subcommand.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: MarathonCommand,
}

/// Where Marathon is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Marathon base URL (on DC/OS: https://<master>/service/marathon).
    #[arg(
        long,
        global = true,
        env = "MARATHON_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub marathon_url: String,
    /// HTTP Basic credentials, as given to Marathon's --http_credentials.
    #[arg(
        long,
        global = true,
        env = "MARATHON_CREDENTIALS",
        hide_env_values = true,
        value_name = "USER:PASS"
    )]
    pub user: Option<String>,
    /// DC/OS ACS token, sent as `Authorization: token=<T>`.
    #[arg(
        long,
        global = true,
        env = "MARATHON_TOKEN",
        hide_env_values = true,
        value_name = "T"
    )]
    pub token: Option<String>,
    /// Marathon app id of the kubelet app.
    #[arg(
        long,
        global = true,
        env = "KRW_APP_ID",
        default_value = "/k8s/kubelet",
        value_name = "ID"
    )]
    pub app_id: String,
    /// Seconds allowed for each request, and for `--wait` as a whole.
    #[arg(
        long,
        global = true,
        env = "KRW_MARATHON_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_timeout
    )]
    pub timeout: f64,
}

/// `marathon` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MarathonCommand {
    /// Create or update the app from its JSON definition (PUT /v2/apps/{id}).
    Deploy(DeployArgs),
    /// Set the number of instances, i.e. of Kubernetes nodes (PUT {"instances": N}).
    Scale(ScaleArgs),
    /// Show the app's tasks: id, host, state, health, lease cpus/mem.
    Status(StatusArgs),
}

/// `marathon deploy` options.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The Marathon app definition (JSON).
    #[arg(long, env = "KRW_APP_FILE", default_value = DEFAULT_APP_FILE, value_name = "FILE")]
    pub app: PathBuf,
    /// Wait until the deployment has finished (bounded by --timeout).
    #[arg(long)]
    pub wait: bool,
    /// Override a running deployment (`?force=true`); only to repair a stuck one.
    #[arg(long)]
    pub force: bool,
}

/// `marathon scale` options.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Number of instances (Kubernetes nodes).
    #[arg(value_name = "N")]
    pub instances: u32,
    /// Wait until the deployment has finished (bounded by --timeout).
    #[arg(long)]
    pub wait: bool,
    /// Override a running deployment (`?force=true`), e.g. to scale down a stuck over-scale.
    #[arg(long)]
    pub force: bool,
    /// Number of hosts that can run an instance (hostname UNIQUE); default: counted from Marathon.
    #[arg(long, env = "KRW_MAX_HOSTS", value_name = "N")]
    pub max_hosts: Option<u32>,
}

/// `marathon status` options.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Output format of `marathon status`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A summary line and a table.
    Text,
    /// One JSON object.
    Json,
}

fn parse_timeout(raw: &str) -> Result<f64, String> {
    let v: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > MAX_TIMEOUT_SECS {
        return Err(format!(
            "{raw:?} is out of range; expected seconds > 0 and <= {MAX_TIMEOUT_SECS}"
        ));
    }
    Ok(v)
}

/// A connected session: the client plus the checked app id.
struct Session {
    client: Client,
    app_id: String,
    timeout: Duration,
}

impl Session {
    fn open(c: &ConnectionArgs) -> Result<Session, Failure> {
        let base = parse_base_url(&c.marathon_url)?;
        let app_id = normalize_app_id(&c.app_id)?;
        let auth = auth_header(
            c.user.as_deref(),
            c.token.as_deref(),
            base.userinfo.as_deref(),
        )?;
        if !(c.timeout.is_finite() && c.timeout > 0.0 && c.timeout <= MAX_TIMEOUT_SECS) {
            return Err(Failure::new(
                ExitStatus::Usage,
                format!(
                    "marathon: --timeout (KRW_MARATHON_TIMEOUT) {} is out of range; expected seconds > 0 and <= {MAX_TIMEOUT_SECS}",
                    c.timeout
                ),
            ));
        }
        let timeout = Duration::from_secs_f64(c.timeout);
        let client = Client::new(base.url, auth, timeout)?;
        Ok(Session {
            client,
            app_id,
            timeout,
        })
    }

    fn app_path(&self) -> String {
        format!("/v2/apps{}", self.app_id)
    }

    fn app_url(&self) -> String {
        app_url(&self.client.base, &self.app_id)
    }
}

/// Runs the marathon subcommand; prints results to stdout.
pub async fn run(args: MarathonArgs) -> Result<(), Failure> {
    let session = Session::open(&args.connection)?;
    match args.command {
        MarathonCommand::Deploy(d) => deploy(&session, &d).await,
        MarathonCommand::Scale(s) => scale(&session, &s).await,
        MarathonCommand::Status(s) => show_status(&session, &s).await,
    }
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(ExitStatus::Software, format!("cannot write to stdout: {e}")))
}

fn warn(text: &str) {
    tracing::debug!(warning = text, "marathon warning");
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "warning: {}", client::one_line(text));
}

/// Reads and checks the app definition file; sets its `id` to the session's app id.
/// Returns the object and, when the file named another id, a warning saying which id is used.
fn load_app(
    path: &std::path::Path,
    app_id: &str,
) -> Result<(serde_json::Map<String, Value>, Option<String>), Failure> {
    let text = crate::fsread::read_text(path, crate::fsread::CONFIG_CAP).map_err(|e| {
        Failure::new(
            ExitStatus::Usage,
            format!(
                "marathon deploy: cannot read app definition {}: {e} (--app / KRW_APP_FILE)",
                path.display()
            ),
        )
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            ExitStatus::DataErr,
            format!("marathon deploy: {} is not valid JSON: {e}", path.display()),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Failure::new(
            ExitStatus::DataErr,
            format!(
                "marathon deploy: {} must hold one JSON object (a Marathon app definition)",
                path.display()
            ),
        ));
    };
    let mut note = None;
    if let Some(file_id) = obj.get("id").and_then(Value::as_str) {
        let normalized = normalize_app_id(file_id).ok();
        if normalized.as_deref() != Some(app_id) {
            note = Some(format!(
                "{} has id {file_id:?}; deploying it as {app_id} (--app-id / KRW_APP_ID)",
                path.display()
            ));
        }
    }
    obj.insert("id".into(), Value::String(app_id.to_string()));
    Ok((obj, note))
}

fn deployment_of(answer: &client::Answer) -> (Option<String>, Option<String>) {
    let id = answer
        .body
        .get("deploymentId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| answer.deployment_header.clone());
    let version = answer
        .body
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_string);
    (id, version)
}

async fn deploy(s: &Session, args: &DeployArgs) -> Result<(), Failure> {
    let (app, note) = load_app(&args.app, &s.app_id)?;
    if let Some(n) = note {
        warn(&n);
    }
    let app_value = Value::Object(app);
    let instances = app_value
        .get("instances")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let (m, o) = strategy::app_strategy(&app_value);
    for w in strategy::strategy_warnings(
        &s.app_id,
        instances,
        m,
        o,
        strategy::has_unique_hostname(&app_value),
    ) {
        warn(&w);
    }
    let path = if args.force {
        format!("{}?force=true", s.app_path())
    } else {
        s.app_path()
    };
    let started = Instant::now();
    let answer = s.client.send(Method::PUT, &path, Some(&app_value)).await?;
    let verb = if answer.status == 201 {
        "created"
    } else {
        "updated"
    };
    announce_and_wait(
        s,
        &answer,
        &format!("{verb} {}", s.app_id),
        args.wait,
        started,
    )
    .await
}

/// Prints what Marathon accepted (version, deployment) and, with `--wait`, follows the deployment.
async fn announce_and_wait(
    s: &Session,
    answer: &client::Answer,
    what: &str,
    wait: bool,
    started: Instant,
) -> Result<(), Failure> {
    let (dep, version) = deployment_of(answer);
    print(&format!(
        "{what} at {} (version {}); deployment {}\n",
        s.app_url(),
        version.as_deref().unwrap_or("?"),
        dep.as_deref().unwrap_or("none")
    ))?;
    if wait && let Some(dep) = dep {
        wait_for(s, &dep, started).await?;
    }
    Ok(())
}

async fn scale(s: &Session, args: &ScaleArgs) -> Result<(), Failure> {
    let target = u64::from(args.instances);
    let app = s
        .client
        .get(&format!(
            "{}?embed=app.counts&embed=app.deployments",
            s.app_path()
        ))
        .await?;
    let app = app.get("app").cloned().unwrap_or(Value::Null);
    let current = app.get("instances").and_then(Value::as_u64);
    if strategy::has_unique_hostname(&app) {
        let count = match args.max_hosts {
            Some(h) => strategy::HostCount {
                hosts: h as usize,
                exact: true,
                source: "--max-hosts".to_string(),
            },
            None => {
                let tasks = s.client.get(&format!("{}/tasks", s.app_path())).await?;
                let queue = s.client.get("/v2/queue?embed=lastUnusedOffers").await?;
                strategy::count_hosts(&s.app_id, &tasks, &queue)
            }
        };
        if let Some(w) = strategy::scale_warning(&s.app_id, target, &count) {
            warn(&w);
        }
        let (m, o) = strategy::app_strategy(&app);
        for w in strategy::strategy_warnings(&s.app_id, target, m, o, true) {
            warn(&format!("after this scale, the next restart: {w}"));
        }
    }
    let path = if args.force {
        format!("{}?force=true", s.app_path())
    } else {
        s.app_path()
    };
    let started = Instant::now();
    let answer = s
        .client
        .send(Method::PUT, &path, Some(&json!({ "instances": target })))
        .await?;
    let from = current.map_or_else(|| "?".to_string(), |c| c.to_string());
    let what = format!("scaling {} from {from} to {target} instance(s)", s.app_id);
    announce_and_wait(s, &answer, &what, args.wait, started).await
}

/// Polls `GET /v2/deployments` until `dep` is gone or `--timeout` has passed since `started`.
async fn wait_for(s: &Session, dep: &str, started: Instant) -> Result<(), Failure> {
    let deadline = started + s.timeout;
    loop {
        let list = s.client.get("/v2/deployments").await?;
        let running = list.as_array().is_some_and(|ds| {
            ds.iter()
                .any(|d| d.get("id").and_then(Value::as_str) == Some(dep))
        });
        if !running {
            return print(&format!(
                "deployment {dep} finished after {:.1}s\n",
                started.elapsed().as_secs_f64()
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(wait_timeout(s, dep).await);
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

async fn wait_timeout(s: &Session, dep: &str) -> Failure {
    let mut why = String::new();
    if let Ok(queue) = s.client.get("/v2/queue").await {
        let st = status::build(
            &s.app_id,
            &s.client.base,
            &Value::Null,
            &Value::Null,
            &queue,
        );
        if st.waiting > 0 {
            why = format!(
                "; {} instance(s) waiting for an offer{}",
                st.waiting,
                if st
                    .waiting_reasons
                    .iter()
                    .any(|r| r == "UnfulfilledConstraint")
                {
                    " rejected for UnfulfilledConstraint (hostname UNIQUE, no free host): it will never finish; scale down with --force"
                } else {
                    ""
                }
            );
        }
    }
    Failure::new(
        ExitStatus::TempFail,
        format!(
            "marathon: deployment {dep} of {} still running at {}/v2/deployments after {}s (--timeout){why}",
            s.app_id,
            s.client.base,
            s.timeout.as_secs_f64()
        ),
    )
}

async fn show_status(s: &Session, args: &StatusArgs) -> Result<(), Failure> {
    let app = s
        .client
        .get(&format!(
            "{}?embed=app.counts&embed=app.deployments",
            s.app_path()
        ))
        .await?;
    let app = app.get("app").cloned().unwrap_or(Value::Null);
    let tasks = s.client.get(&format!("{}/tasks", s.app_path())).await?;
    let queue = s.client.get("/v2/queue").await?;
    let st = status::build(&s.app_id, &s.client.base, &app, &tasks, &queue);
    match args.output {
        Output::Text => print(&status::render_text(&st)),
        Output::Json => print(&format!("{:#}\n", status::render_json(&st))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Top {
        #[command(subcommand)]
        cmd: TopCmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum TopCmd {
        Marathon(MarathonArgs),
    }

    fn parse(args: &[&str]) -> Result<MarathonArgs, clap::Error> {
        let mut argv = vec!["krw", "marathon"];
        argv.extend_from_slice(args);
        Top::try_parse_from(argv).map(|t| match t.cmd {
            TopCmd::Marathon(m) => m,
        })
    }

    #[test]
    fn common_options_go_before_or_after_the_subcommand() {
        let a = parse(&[
            "--marathon-url",
            "http://m:1",
            "scale",
            "3",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        assert_eq!(a.connection.marathon_url, "http://m:1");
        assert_eq!(a.connection.timeout, 2.5);
        match a.command {
            MarathonCommand::Scale(s) => assert_eq!(s.instances, 3),
            other => panic!("{other:?}"),
        }
        let a = parse(&["status", "--app-id", "/x/y", "--output", "json"]).unwrap();
        assert_eq!(a.connection.app_id, "/x/y");
        assert!(matches!(
            a.command,
            MarathonCommand::Status(StatusArgs {
                output: Output::Json
            })
        ));
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        assert!(parse(&["scale", "-1"]).is_err());
        assert!(parse(&["scale", "three"]).is_err());
        assert!(parse(&["status", "--timeout", "0"]).is_err());
        assert!(parse(&["status", "--timeout", "NaN"]).is_err());
        assert!(parse(&["status", "--output", "yaml"]).is_err());
    }

    #[test]
    fn timeout_parser_bounds() {
        assert_eq!(parse_timeout("30"), Ok(30.0));
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("inf").is_err());
        assert!(parse_timeout("100000").is_err());
    }

    #[test]
    fn app_file_errors_have_documented_codes() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        assert_eq!(
            load_app(&missing, "/k8s/kubelet").unwrap_err().status,
            ExitStatus::Usage
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{ nope").unwrap();
        assert_eq!(
            load_app(&bad, "/k8s/kubelet").unwrap_err().status,
            ExitStatus::DataErr
        );
        std::fs::write(&bad, "[1]").unwrap();
        assert_eq!(
            load_app(&bad, "/k8s/kubelet").unwrap_err().status,
            ExitStatus::DataErr
        );
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"id": "/other", "instances": 2}"#).unwrap();
        let (app, note) = load_app(&good, "/k8s/kubelet").unwrap();
        assert!(note.unwrap().contains("deploying it as /k8s/kubelet"));
        assert_eq!(app["id"], "/k8s/kubelet");
        assert_eq!(app["instances"], 2);
    }
}
