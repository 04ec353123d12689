//! `kubelet-resource-wrapper` binary: parses the command line, sets up logging and maps every
//! outcome to a documented exit code (DESIGN §8).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kubelet_resource_wrapper::cli::{Cli, Command, LogFormat, OutputFormat, PlanArgs};
use kubelet_resource_wrapper::exit::{ExitStatus, Failure};
use kubelet_resource_wrapper::setup::{self, LeaseMode};
use kubelet_resource_wrapper::{envfile, logging, marathon, report, runner};

fn main() -> ExitCode {
    let code = agent_main();
    // Lines still queued reach stderr now, unless nobody reads it (then they are dropped).
    logging::flush(std::time::Duration::from_millis(250));
    code
}

fn agent_main() -> ExitCode {
    if let Err(message) = load_settings_file() {
        logging::line(&format!("kubelet-resource-wrapper: {message}"));
        return ExitCode::from(ExitStatus::Config.code());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let status = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitStatus::Ok,
                _ => ExitStatus::Usage,
            };
            if status == ExitStatus::Ok {
                let _ = e.print();
            } else if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                logging::line(
                    "kubelet-resource-wrapper: a subcommand is required: plan, run, standby or marathon (see --help)",
                );
            } else {
                // One line: clap's message and the accepted values, without the usage block.
                logging::line(&format!(
                    "kubelet-resource-wrapper: {}",
                    one_line(&e.to_string())
                ));
            }
            return ExitCode::from(status.code());
        }
    };
    logging::init(cli.log_format, &cli.log_level);
    let log_format = cli.log_format;
    let result = match cli.command {
        Command::Plan(args) => plan(&args),
        Command::Run(args) => runner::run(args),
        Command::Standby(args) => runner::standby(args),
        Command::Marathon(args) => runner::block_on(marathon::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Exactly one line: a JSON event for machines, or a plain line for people.
            match log_format {
                LogFormat::Json => {
                    tracing::error!(exit_code = failure.status.code(), "{}", failure.message)
                }
                LogFormat::Text => {
                    logging::line(&format!("kubelet-resource-wrapper: {}", failure.message));
                }
            }
            ExitCode::from(failure.status.code())
        }
    }
}

fn plan(args: &PlanArgs) -> Result<(), Failure> {
    let setup = setup::prepare(&args.node, LeaseMode::FromSources)?;
    let port = setup.kubelet_healthz_port;
    let argv = setup.argv(port);
    let text = match args.output {
        OutputFormat::Json => format!("{:#}\n", report::plan_json(&setup, &argv)),
        OutputFormat::Text => report::plan_text(&setup, &argv),
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::new(ExitStatus::Software, format!("cannot write to stdout: {e}")))?;
    if setup::check_kubelet_binary(&setup.kubelet).is_err() {
        tracing::warn!(kubelet = %setup.kubelet.display(), "kubelet binary not found here; `run` would exit 69");
    }
    Ok(())
}

/// Folds clap's multi-line error into one line: the message and any "possible values" or tip,
/// dropping the usage block.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
        + " (see --help)"
}

/// Fills unset `KRW_*` variables from the host's settings file (see `envfile`), before the
/// command line is parsed so that every option sees them.
fn load_settings_file() -> Result<(), String> {
    let path = std::env::var_os("KRW_ENV_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| envfile::DEFAULT_PATH.into());
    let vars = envfile::missing_vars(&path, |k| std::env::var_os(k).is_some())?;
    for (key, value) in vars {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var(key, value) };
    }
    Ok(())
}
