//! The lease: how much CPU and memory Marathon granted this task, from the first source found
//! (operator flags, Marathon's task variables, Nokia's legacy services file).

use std::fmt;
use std::path::Path;

use serde::Serialize;
use thiserror::Error;

/// Marathon's variable for the granted CPUs (a Scala `Double`, e.g. `2.0`).
pub const ENV_CPUS: &str = "MARATHON_APP_RESOURCE_CPUS";
/// Marathon's variable for the granted memory in MiB (a Scala `Double`, e.g. `4096.0`, `1.0E7`).
pub const ENV_MEM: &str = "MARATHON_APP_RESOURCE_MEM";
/// Where Nokia's original Marathon `cmd` wrote the lease (`cpu 2.0, memory 4196.0`).
pub const DEFAULT_LEGACY_FILE: &str = "/etc/kube-resources/services";

const MIB: u128 = 1 << 20;
/// Largest lease accepted before the host comparison: 1,048,576 cores / 1 EiB. Anything above is
/// a typo or a unit mistake, not a host.
const MAX_CPU_MILLICORES: u128 = 1_048_576_000;
const MAX_MEMORY_BYTES: u128 = 1 << 60;

/// Where the lease came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseSource {
    /// `--cpus`/`--mem` (or `KRW_CPUS`/`KRW_MEM`): an operator override.
    Flags,
    /// `MARATHON_APP_RESOURCE_CPUS`/`_MEM`, set by Marathon for the task.
    Env,
    /// The legacy services file.
    LegacyFile,
}

impl LeaseSource {
    /// The name used in `plan` output (`flags`, `env`, `legacy-file`).
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseSource::Flags => "flags",
            LeaseSource::Env => "env",
            LeaseSource::LegacyFile => "legacy-file",
        }
    }
}

/// The resources Marathon granted, in kubelet's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Granted CPU in millicores (fractions of a millicore are truncated).
    pub cpu_millicores: u64,
    /// Granted memory in bytes (MiB × 1,048,576, fractions of a byte truncated).
    pub memory_bytes: u64,
    /// Which source provided the values.
    pub source: LeaseSource,
}

impl Lease {
    /// A lease of nothing: the node stays registered but admits no pod that requests resources.
    pub fn zero(source: LeaseSource) -> Lease {
        Lease {
            cpu_millicores: 0,
            memory_bytes: 0,
            source,
        }
    }
}

/// Which quantity a value stands for; decides the unit and the wording of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseField {
    /// CPU cores.
    Cpus,
    /// Memory in MiB.
    MemMib,
}

impl LeaseField {
    fn accepted(self) -> &'static str {
        match self {
            LeaseField::Cpus => {
                "a non-negative decimal number of cores such as 2, 0.5, 2.0 or 1.0E1 (digits, one '.', optional E exponent)"
            }
            LeaseField::MemMib => {
                "a non-negative decimal number of MiB such as 4096, 4096.0 or 1.0E7 (digits, one '.', optional E exponent)"
            }
        }
    }
}

/// Why a lease could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseError {
    /// A value was present but malformed.
    #[error("{origin}={value:?} {problem}; expected {accepted}")]
    Invalid {
        /// The flag, variable or file field the value came from.
        origin: String,
        /// The raw value.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// What is accepted instead.
        accepted: &'static str,
    },
    /// Only one half of a lease was given by a source.
    #[error("{present} is set but {missing} is not; give both or neither")]
    Incomplete {
        /// The name that was found.
        present: String,
        /// The name that is missing.
        missing: String,
    },
    /// The legacy file exists but cannot be read or parsed.
    #[error(
        "legacy lease file {path}: {problem}; expected one line like \"cpu 2.0, memory 4096.0\""
    )]
    LegacyFile {
        /// The file's path.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// No source provided a lease.
    #[error(
        "no lease found: pass --cpus and --mem, run as a Marathon task ({ENV_CPUS}/{ENV_MEM}), or write {legacy}"
    )]
    Missing {
        /// The legacy file path that was looked at.
        legacy: String,
    },
}

/// Parses one lease number exactly as Marathon prints it (Java `Double.toString`: `2.0`, `0.5`,
/// `1.0E7`) or as an operator writes it (`2`, `4096`), and converts it to the field's unit
/// (millicores or bytes) with integer arithmetic.
pub fn parse_amount(origin: &str, raw: &str, field: LeaseField) -> Result<u64, LeaseError> {
    let invalid = |problem: &str| LeaseError::Invalid {
        origin: origin.to_string(),
        value: raw.to_string(),
        problem: problem.to_string(),
        accepted: field.accepted(),
    };
    let text = raw.trim();
    if text.is_empty() {
        return Err(invalid("is empty"));
    }
    if text.starts_with('-') {
        return Err(invalid("is negative"));
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("0x") {
        return Err(invalid("is hexadecimal"));
    }
    if ["nan", "inf", "+inf", "infinity", "+infinity"].contains(&lower.as_str()) {
        return Err(invalid("is not a finite number"));
    }
    if text.contains(',') {
        return Err(invalid("uses ',' (use '.' as the decimal separator)"));
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty()
        || !all_digits(int_part)
        || !all_digits(frac_part)
        || (mantissa.contains('.') && frac_part.is_empty())
    {
        return Err(invalid("is not a number"));
    }
    let exp10: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !all_digits(digits) {
                return Err(invalid("is not a number"));
            }
            if digits.len() > 4 {
                return Err(invalid("is out of range"));
            }
            e.parse().map_err(|_| invalid("is not a number"))?
        }
    };
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    // Trailing zeros in the fraction carry no value; drop them to keep the mantissa small.
    let frac_len = frac_part.len() as i64;
    let significant = digits.trim_end_matches('0');
    let dropped = (digits.len() - significant.len()) as i64;
    if significant.len() > 30 {
        return Err(invalid("has more digits than any lease needs"));
    }
    let mantissa: u128 = if significant.is_empty() {
        0
    } else {
        significant
            .parse()
            .map_err(|_| invalid("is not a number"))?
    };
    let (unit_scale, limit) = match field {
        LeaseField::Cpus => (1000u128, MAX_CPU_MILLICORES),
        LeaseField::MemMib => (MIB, MAX_MEMORY_BYTES),
    };
    let exp = exp10 - frac_len + dropped;
    let too_large = || invalid("is out of range (too large for any host)");
    let value = if mantissa == 0 {
        0
    } else if exp >= 0 {
        let factor = u32::try_from(exp)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .ok_or_else(too_large)?;
        mantissa
            .checked_mul(factor)
            .and_then(|v| v.checked_mul(unit_scale))
            .ok_or_else(too_large)?
    } else {
        let scaled = mantissa.checked_mul(unit_scale).ok_or_else(too_large)?;
        match u32::try_from(-exp).ok().and_then(|e| 10u128.checked_pow(e)) {
            Some(divisor) => scaled / divisor,
            None => 0,
        }
    };
    if value > limit {
        return Err(too_large());
    }
    u64::try_from(value).map_err(|_| too_large())
}

/// The raw inputs a lease can come from; gathered at the edge so resolution stays pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseInputs {
    /// `--cpus` / `KRW_CPUS`.
    pub flag_cpus: Option<String>,
    /// `--mem` / `KRW_MEM`.
    pub flag_mem: Option<String>,
    /// `MARATHON_APP_RESOURCE_CPUS`.
    pub env_cpus: Option<String>,
    /// `MARATHON_APP_RESOURCE_MEM`.
    pub env_mem: Option<String>,
    /// The legacy file's path and, if it exists, its content or the error reading it.
    pub legacy: Option<LegacyFile>,
}

/// The legacy services file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyFile {
    /// The file's path (for messages).
    pub path: String,
    /// `Ok(content)`, `Err(reason)` if it exists but cannot be read, or `Ok` of nothing if absent.
    pub content: Option<Result<String, String>>,
}

impl LegacyFile {
    /// Reads the legacy file; a missing file is not an error (the source is simply absent).
    /// The file is opened without blocking, must be a regular text file and is read up to 4 KiB
    /// (Nokia's file is one short line).
    pub fn read(path: &Path) -> LegacyFile {
        let content = match crate::fsread::read_text_if_present(path, LEGACY_FILE_CAP) {
            Ok(Some(text)) => Some(Ok(text)),
            Ok(None) => None,
            Err(e) => Some(Err(e.to_string())),
        };
        LegacyFile {
            path: path.display().to_string(),
            content,
        }
    }
}

/// Largest legacy lease file read.
pub const LEGACY_FILE_CAP: u64 = 4096;

impl LeaseInputs {
    /// Whether resolution reaches the legacy file: only when neither flags nor Marathon
    /// variables give any part of a lease. The edge opens the file only then.
    pub fn needs_legacy(&self) -> bool {
        self.flag_cpus.is_none()
            && self.flag_mem.is_none()
            && self.env_cpus.is_none()
            && self.env_mem.is_none()
    }
}

/// Picks the first source that is present and parses it. A present-but-bad source is an error;
/// it never falls through to the next source.
pub fn resolve(inputs: &LeaseInputs) -> Result<Lease, LeaseError> {
    if let Some(lease) = pair(
        ("--cpus", inputs.flag_cpus.as_deref()),
        ("--mem", inputs.flag_mem.as_deref()),
        LeaseSource::Flags,
    )? {
        return Ok(lease);
    }
    if let Some(lease) = pair(
        (ENV_CPUS, inputs.env_cpus.as_deref()),
        (ENV_MEM, inputs.env_mem.as_deref()),
        LeaseSource::Env,
    )? {
        return Ok(lease);
    }
    let legacy_path = inputs
        .legacy
        .as_ref()
        .map_or(DEFAULT_LEGACY_FILE.to_string(), |l| l.path.clone());
    if let Some(LegacyFile {
        path,
        content: Some(content),
    }) = &inputs.legacy
    {
        let text = content.as_ref().map_err(|problem| LeaseError::LegacyFile {
            path: path.clone(),
            problem: format!("cannot be read ({problem})"),
        })?;
        return parse_legacy(path, text);
    }
    Err(LeaseError::Missing {
        legacy: legacy_path,
    })
}

fn pair(
    cpus: (&str, Option<&str>),
    mem: (&str, Option<&str>),
    source: LeaseSource,
) -> Result<Option<Lease>, LeaseError> {
    match (cpus.1, mem.1) {
        (None, None) => Ok(None),
        (Some(c), Some(m)) => Ok(Some(Lease {
            cpu_millicores: parse_amount(cpus.0, c, LeaseField::Cpus)?,
            memory_bytes: parse_amount(mem.0, m, LeaseField::MemMib)?,
            source,
        })),
        (Some(_), None) => Err(LeaseError::Incomplete {
            present: cpus.0.to_string(),
            missing: mem.0.to_string(),
        }),
        (None, Some(_)) => Err(LeaseError::Incomplete {
            present: mem.0.to_string(),
            missing: cpus.0.to_string(),
        }),
    }
}

/// Parses Nokia's `cpu <CPUS>, memory <MEM>` line.
fn parse_legacy(path: &str, text: &str) -> Result<Lease, LeaseError> {
    let bad = |problem: &str| LeaseError::LegacyFile {
        path: path.to_string(),
        problem: problem.to_string(),
    };
    let line = text.trim();
    if line.is_empty() {
        return Err(bad("is empty"));
    }
    if line.lines().count() > 1 {
        return Err(bad("has more than one line"));
    }
    let (cpu_part, mem_part) = line
        .split_once(',')
        .ok_or_else(|| bad("has no ',' between the cpu and memory fields"))?;
    let field = |part: &str, key: &str| -> Result<String, LeaseError> {
        let mut words = part.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(k), Some(v), None) if k == key => Ok(v.to_string()),
            (Some(k), None, None) if k == key => Err(bad(&format!("field '{key}' has no value"))),
            _ => Err(bad(&format!("expected '{key} <number>', found {part:?}"))),
        }
    };
    let cpus = field(cpu_part, "cpu")?;
    let mem = field(mem_part, "memory")?;
    Ok(Lease {
        cpu_millicores: parse_amount(
            &format!("legacy lease file {path}: cpu"),
            &cpus,
            LeaseField::Cpus,
        )?,
        memory_bytes: parse_amount(
            &format!("legacy lease file {path}: memory"),
            &mem,
            LeaseField::MemMib,
        )?,
        source: LeaseSource::LegacyFile,
    })
}

impl fmt::Display for LeaseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(raw: &str) -> Result<u64, LeaseError> {
        parse_amount(ENV_CPUS, raw, LeaseField::Cpus)
    }
    fn mem(raw: &str) -> Result<u64, LeaseError> {
        parse_amount(ENV_MEM, raw, LeaseField::MemMib)
    }

    #[test]
    fn marathon_double_formats() {
        assert_eq!(cpus("2.0"), Ok(2000));
        assert_eq!(cpus("0.5"), Ok(500));
        assert_eq!(cpus("4.35"), Ok(4350));
        assert_eq!(cpus("0.001"), Ok(1));
        assert_eq!(cpus("0.0015"), Ok(1));
        assert_eq!(cpus("1.0E1"), Ok(10_000));
        assert_eq!(cpus("2"), Ok(2000));
        assert_eq!(mem("4196.0"), Ok(4196 << 20));
        assert_eq!(mem("1.0E7"), Ok(10_000_000u64 << 20));
        assert_eq!(mem("1.2345678E7"), Ok(12_345_678u64 << 20));
        assert_eq!(mem("0.5"), Ok(512 << 10));
        assert_eq!(mem("0"), Ok(0));
        assert_eq!(mem("1.0E-4"), Ok(104));
    }

    #[test]
    fn bad_numbers_name_the_problem() {
        for (raw, problem) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("-1", "is negative"),
            ("-0.5", "is negative"),
            ("abc", "is not a number"),
            ("NaN", "is not a finite number"),
            ("Infinity", "is not a finite number"),
            ("inf", "is not a finite number"),
            ("1,5", "uses ','"),
            ("0x10", "is hexadecimal"),
            ("1e400", "out of range"),
            ("2.", "is not a number"),
            (".5", "is not a number"),
            ("1.2.3", "is not a number"),
            ("2 cores", "is not a number"),
            ("1E", "is not a number"),
            ("9999999999", "out of range"),
        ] {
            let err = cpus(raw).expect_err(raw).to_string();
            assert!(err.contains(problem), "{raw:?}: {err}");
            assert!(err.contains(ENV_CPUS), "{err}");
        }
    }

    #[test]
    fn first_source_wins_and_bad_sources_do_not_fall_through() {
        let legacy = LegacyFile {
            path: "/etc/kube-resources/services".into(),
            content: Some(Ok("cpu 1.0, memory 1024.0\n".into())),
        };
        let mut inputs = LeaseInputs {
            flag_cpus: Some("3".into()),
            flag_mem: Some("3072".into()),
            env_cpus: Some("2.0".into()),
            env_mem: Some("2048.0".into()),
            legacy: Some(legacy),
        };
        assert_eq!(resolve(&inputs).map(|l| l.source), Ok(LeaseSource::Flags));
        inputs.flag_cpus = None;
        inputs.flag_mem = None;
        assert_eq!(resolve(&inputs).map(|l| l.cpu_millicores), Ok(2000));
        inputs.env_cpus = None;
        assert!(matches!(
            resolve(&inputs),
            Err(LeaseError::Incomplete { .. })
        ));
        inputs.env_mem = None;
        let lease = resolve(&inputs).expect("legacy");
        assert_eq!(lease.source, LeaseSource::LegacyFile);
        assert_eq!(lease.memory_bytes, 1024 << 20);
        inputs.legacy = None;
        assert!(matches!(resolve(&inputs), Err(LeaseError::Missing { .. })));
    }

    #[test]
    fn legacy_file_forms() {
        let parse = |text: &str| parse_legacy("f", text);
        assert_eq!(
            parse("cpu 2.0, memory 4196.0").map(|l| (l.cpu_millicores, l.memory_bytes)),
            Ok((2000, 4196 << 20))
        );
        assert!(parse("cpu 2, memory 4196\n").is_ok());
        for bad in [
            "",
            "cpu 2.0 memory 4196.0",
            "cpu , memory 1",
            "memory 1, cpu 2",
            "cpu 2.0, memory abc",
            "cpu 2.0, memory",
            "cpu 1, memory 1\ncpu 2, memory 2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
