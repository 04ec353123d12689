//! Metrics by the book (issue 8, finding 6): the agent's real `/metrics` output passes
//! `promtool check metrics`, the classic text format is the default and OpenMetrics is served
//! only when asked for, base units, every series present from the start; and the shipped
//! alerting rules pass `promtool check rules` and their unit tests (`promtool test rules`).
//! promtool comes from Debian's `prometheus` package (scripts/test.sh installs it); these tests
//! fail, not skip, without it.

mod common;
mod running_agent;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::repo;
use running_agent::{RunningAgent, Stderr, get_raw};

const RULES: &str = "monitoring/kubelet-resource-wrapper.rules.yml";
const RULE_TESTS: &str = "monitoring/kubelet-resource-wrapper.rules.test.yml";

fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}): install Debian's `prometheus` package (scripts/test.sh does)")
        });
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write to promtool");
    }
    child.wait_with_output().expect("promtool output")
}

fn split(raw: &str) -> (String, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn metrics_pass_promtool_in_base_units_with_every_series_from_the_start() {
    let agent = RunningAgent::start(&[], Stderr::File);
    agent.wait_healthy();
    let raw = get_raw(agent.metrics_port, "/metrics", "");
    let (head, body) = split(&raw);
    assert!(head.starts_with("http/1.1 200"), "{raw}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(!body.contains("# EOF"), "OpenMetrics sent by default");

    let check = promtool(&["check", "metrics"], Some(&body));
    assert!(
        check.status.success()
            && check.stdout.is_empty()
            && String::from_utf8_lossy(&check.stderr).trim().is_empty(),
        "promtool check metrics: {}\n{}{}\n--- metrics:\n{body}",
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Base units: cores (fractional), not millicores.
    assert!(!body.contains("millicores"), "{body}");
    for line in ["krw_lease_cpu_cores 1.5", "krw_allocatable_cpu_cores 1.5"] {
        assert!(body.lines().any(|l| l == line), "missing {line:?}:\n{body}");
    }
    // Labelled series exist before they first count (the readiness polls above may have
    // counted some failures already).
    for series in [
        "krw_kubelet_probes_total{result=\"fail\"} ",
        "krw_health_checks_total{result=\"fail\"} ",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(series)),
            "missing {series:?}:\n{body}"
        );
    }
    // Every series exists from the start, at zero.
    for series in [
        "krw_kubelet_restarts_total",
        "krw_evictions_total{outcome=\"evicted\"}",
        "krw_evictions_total{outcome=\"blocked\"}",
        "krw_evictions_total{outcome=\"failed\"}",
        "krw_evictions_total{outcome=\"left\"}",
        "krw_http_connections_shed_total{server=\"healthz\",reason=\"capacity\"}",
        "krw_http_connections_shed_total{server=\"healthz\",reason=\"head_timeout\"}",
        "krw_http_connections_shed_total{server=\"metrics\",reason=\"descriptors\"}",
        "krw_log_lines_dropped_total",
        "krw_drain_seconds",
        "krw_allocatable_mismatch",
    ] {
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(value, Some(0.0), "{series}:\n{body}");
    }
}

#[test]
fn openmetrics_only_when_the_client_asks_for_it() {
    let agent = RunningAgent::start(&[], Stderr::File);
    agent.wait_healthy();
    // Prometheus' own scrape Accept header.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let (head, body) = split(&get_raw(agent.metrics_port, "/metrics", accept));
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE krw_kubelet_restarts counter\n"),
        "{body}"
    );
    for accept in [
        "",
        "Accept: */*\r\n",
        "Accept: text/plain;version=0.0.4\r\n",
    ] {
        let (head, body) = split(&get_raw(agent.metrics_port, "/metrics", accept));
        assert!(head.contains("version=0.0.4"), "{accept:?}: {head}");
        assert!(
            body.contains("# TYPE krw_kubelet_restarts_total counter\n"),
            "{body}"
        );
    }
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = promtool(&args, None);
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rules_use_only_metrics_the_agent_exports() {
    let agent = RunningAgent::start(&[], Stderr::File);
    agent.wait_healthy();
    let (_, body) = split(&get_raw(agent.metrics_port, "/metrics", ""));
    let exported: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let rules = std::fs::read_to_string(repo().join(RULES)).expect("read rules");
    let mut used: Vec<&str> = rules
        .match_indices("krw_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 5, "{used:?}");
    let unknown: Vec<&&str> = used.iter().filter(|m| !exported.contains(m)).collect();
    assert!(
        unknown.is_empty(),
        "rules use metrics nobody exports: {unknown:?}"
    );
}
