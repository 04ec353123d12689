//! No byte sequence makes any input parser panic (issue 8, finding 5): property tests over
//! arbitrary bytes, and over text shaped like each format, for every parser that sees input
//! from outside the agent. With `panic = "abort"` in release, a panic here would be a node
//! outage. The case count is bounded (`PROPTEST_CASES` overrides it) so CI stays fast.

use std::path::Path;

use kubelet_resource_wrapper::capacity::{parse_cpu_list, parse_mem_total};
use kubelet_resource_wrapper::envfile;
use kubelet_resource_wrapper::fsread;
use kubelet_resource_wrapper::kubelet_args::{check_user_args, parse_args_text, user_flag_value};
use kubelet_resource_wrapper::kubelet_config;
use kubelet_resource_wrapper::lease::{self, LeaseField, LeaseInputs, LegacyFile};
use kubelet_resource_wrapper::lock::{parse_record, parse_start_time};
use kubelet_resource_wrapper::quantity::{Quantity, parse_bytes, parse_cpu_millicores};
use kubelet_resource_wrapper::reservation::{EvictionHard, parse_kube_reserved};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes as the agent sees a file's content: the bounded reader's text check first (NUL and
/// invalid UTF-8 refused), then the parser on what passes.
fn as_text(bytes: Vec<u8>) -> Option<String> {
    fsread::text(Path::new("/input"), bytes).ok()
}

/// Text made of the characters each format cares about, so the parsers' deeper paths run.
fn shaped(alphabet: &'static str) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    proptest::collection::vec(proptest::sample::select(chars), 0..300)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lease_values_and_legacy_file(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                    shaped in shaped("0123456789.,-+eE xINFaNcpumemory\n\t")) {
        for text in [as_text(bytes).unwrap_or_default(), shaped] {
            let _ = lease::parse_amount("x", &text, LeaseField::Cpus);
            let _ = lease::parse_amount("x", &text, LeaseField::MemMib);
            let _ = lease::resolve(&LeaseInputs {
                env_cpus: Some(text.clone()),
                env_mem: Some(text.clone()),
                ..LeaseInputs::default()
            });
            let _ = lease::resolve(&LeaseInputs {
                legacy: Some(LegacyFile { path: "/l".into(), content: Some(Ok(text.clone())) }),
                ..LeaseInputs::default()
            });
        }
    }

    #[test]
    fn quantities_and_policies(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                               shaped in shaped("0123456789.eE+-kKMGTPEimun%<=,cpumemory.available ")) {
        for text in [String::from_utf8_lossy(&bytes).into_owned(), shaped] {
            let _ = Quantity::parse(&text).map(|q| (q.value(&text), q.milli_value(&text)));
            let _ = parse_bytes(&text);
            let _ = parse_cpu_millicores(&text);
            let _ = parse_kube_reserved(&text);
            if let Ok(e) = EvictionHard::parse(&text) {
                let _ = e.memory_reservation(u64::MAX);
                let _ = e.memory_reservation(0);
                let _ = e.to_flag_value();
            }
        }
    }

    #[test]
    fn settings_file(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                     shaped in shaped("KRW_A=\"'\\\\ \t\r\n#;$`exportx\u{feff}\u{7}")) {
        for text in [as_text(bytes), Some(shaped)].into_iter().flatten() {
            if let Ok(vars) = envfile::parse_all(&text) {
                // Whatever is accepted can be put into the environment (no NUL, valid names).
                for (k, v) in vars {
                    prop_assert!(!k.is_empty() && !k.contains('=') && !k.contains('\0'));
                    prop_assert!(!v.contains('\0'));
                }
            }
        }
    }

    #[test]
    fn kubelet_args_file_and_flags(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                   shaped in shaped("-_=systemreservdkubehalzpotcfig \n#")) {
        for text in [as_text(bytes).unwrap_or_default(), shaped] {
            let args = parse_args_text(&text);
            let _ = check_user_args(&args);
            let _ = user_flag_value(&args, "--config");
        }
    }

    #[test]
    fn cpu_online_meminfo_and_proc_stat(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                        shaped in shaped("0123456789-,\n MemTotal:kB()")) {
        for text in [as_text(bytes).unwrap_or_default(), shaped] {
            if let Some(set) = parse_cpu_list(text.trim()) {
                let _ = (set.len(), set.contains(0), set.contains(u64::MAX));
            }
            let _ = parse_mem_total(&text);
            let _ = parse_start_time(&text);
            let _ = parse_record(&text);
        }
    }

    #[test]
    fn kubelet_configuration(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                             shaped in shaped("{}[]:,\"' \n-&*!|>reservedSystemCPUsapiVersionkind01")) {
        for text in [as_text(bytes).unwrap_or_default(), shaped] {
            let path = Path::new("/k.yaml");
            if let Ok(map) = kubelet_config::parse(path, &text) {
                let _ = kubelet_config::check(path, &map);
            }
        }
    }
}

/// Deep nesting and alias bombs are errors, not stack overflows or unbounded memory.
#[test]
fn nested_and_aliased_configs_are_bounded() {
    let path = Path::new("/k.yaml");
    let deep = "[".repeat(100_000);
    assert!(kubelet_config::parse(path, &deep).is_err());
    let deep_json = format!("{{\"a\":{}", "[".repeat(100_000));
    assert!(kubelet_config::parse(path, &deep_json).is_err());
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for i in 0..20 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("l{}", i - 1)
        };
        bomb.push_str(&format!(
            "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    assert!(kubelet_config::parse(path, &bomb).is_err());
}
