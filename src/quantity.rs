//! Kubernetes resource quantities (`500m`, `1.5`, `2Gi`, `1e3`), parsed exactly as
//! `resource.ParseQuantity` reads them and converted with integer arithmetic, so no value is
//! ever rounded through a float.

use thiserror::Error;

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    /// The text is not a Kubernetes quantity at all.
    #[error("{0:?} is not a Kubernetes quantity (expected e.g. 500m, 2, 1.5Gi, 512Mi, 1e9)")]
    Syntax(String),
    /// The quantity is below zero.
    #[error("{0:?} is negative")]
    Negative(String),
    /// The quantity does not fit in 64 bits once scaled.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// A parsed quantity: `mantissa × 10^exp10 × 2^exp2`, always non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    /// Parses a quantity with Kubernetes' grammar: `[+-]digits[.digits][suffix]`, where the suffix
    /// is a binary one (`Ki` … `Ei`), a decimal one (`n u m k M G T P E`) or an exponent (`e3`, `E-2`).
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_string());
        let (negative, body) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
            return Err(syntax());
        }
        let (exp10_suffix, exp2) = parse_suffix(suffix).ok_or_else(syntax)?;
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(QuantityError::Overflow(text.to_string()));
        }
        let mantissa: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| syntax())?
        };
        if negative && mantissa != 0 {
            return Err(QuantityError::Negative(text.to_string()));
        }
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| syntax())?;
        Ok(Quantity {
            mantissa,
            exp10: exp10_suffix.checked_sub(frac_len).ok_or_else(syntax)?,
            exp2,
        })
    }

    /// The value in thousandths, rounded up like `Quantity.MilliValue()` (CPU millicores).
    pub fn milli_value(&self, original: &str) -> Result<u64, QuantityError> {
        self.scaled(3, original)
    }

    /// The value in units, rounded up like `Quantity.Value()` (memory bytes).
    pub fn value(&self, original: &str) -> Result<u64, QuantityError> {
        self.scaled(0, original)
    }

    fn scaled(&self, extra_exp10: i32, original: &str) -> Result<u64, QuantityError> {
        let overflow = || QuantityError::Overflow(original.to_string());
        let exp10 = self.exp10.checked_add(extra_exp10).ok_or_else(overflow)?;
        let mut numerator = self.mantissa;
        for _ in 0..self.exp2 {
            numerator = numerator.checked_mul(2).ok_or_else(overflow)?;
        }
        let result = if exp10 >= 0 {
            let factor = 10u128.checked_pow(exp10 as u32).ok_or_else(overflow)?;
            numerator.checked_mul(factor).ok_or_else(overflow)?
        } else {
            match 10u128.checked_pow(exp10.unsigned_abs()) {
                Some(divisor) => numerator.div_ceil(divisor),
                // The divisor exceeds any u128 numerator: a non-zero value rounds up to 1.
                None => u128::from(numerator != 0),
            }
        };
        u64::try_from(result).map_err(|_| overflow())
    }
}

/// Returns (decimal exponent, binary exponent) for a suffix, or `None` if unknown.
fn parse_suffix(suffix: &str) -> Option<(i32, u32)> {
    let decimal = |e: i32| Some((e, 0));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        _ => {
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 4
            {
                return None;
            }
            decimal(rest.parse().ok()?)
        }
    }
}

/// Parses a CPU quantity into millicores (rounded up, as kubelet does).
pub fn parse_cpu_millicores(text: &str) -> Result<u64, QuantityError> {
    Quantity::parse(text)?.milli_value(text)
}

/// Parses a memory quantity into bytes (rounded up, as kubelet does).
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    Quantity::parse(text)?.value(text)
}

/// Formats millicores the way the agent passes them to kubelet: `1500m`.
pub fn format_millicores(millicores: u64) -> String {
    format!("{millicores}m")
}

/// Formats bytes for humans: exact binary units when they divide evenly (`4Gi`), else bytes.
pub fn format_bytes_human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}")
}

/// Formats millicores for humans: whole cores when even (`2`), else millicores (`1500m`).
pub fn format_cpu_human(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) {
        format!("{}", millicores / 1000)
    } else {
        format!("{millicores}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_in_millicores() {
        for (text, want) in [
            ("0", 0),
            ("1", 1000),
            ("500m", 500),
            ("1.5", 1500),
            ("0.1", 100),
            ("4.35", 4350),
            ("1e3", 1_000_000),
            ("2k", 2_000_000),
            ("100u", 1),
            ("1n", 1),
            ("+2", 2000),
            (".5", 500),
            ("5.", 5000),
            ("1E-3", 1),
        ] {
            assert_eq!(parse_cpu_millicores(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn memory_quantities_in_bytes() {
        for (text, want) in [
            ("100Mi", 100 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1073741824", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("500Mi", 500 << 20),
            ("1Ki", 1024),
            ("1m", 1),
            ("16Ei", 0),
        ] {
            if text == "16Ei" {
                assert!(matches!(parse_bytes(text), Err(QuantityError::Overflow(_))));
            } else {
                assert_eq!(parse_bytes(text), Ok(want), "{text}");
            }
        }
    }

    #[test]
    fn refuses_malformed_and_negative() {
        for text in [
            "", "abc", "1.2.3", "1Gb", "Mi", "1 Gi", "0x10", "1,5", "e3", "1e", "--1",
        ] {
            assert!(
                matches!(Quantity::parse(text), Err(QuantityError::Syntax(_))),
                "{text}"
            );
        }
        assert!(matches!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Negative(_))
        ));
        assert_eq!(parse_bytes("-0"), Ok(0));
    }

    #[test]
    fn human_formats() {
        assert_eq!(format_bytes_human(4 << 30), "4Gi");
        assert_eq!(format_bytes_human(100 << 20), "100Mi");
        assert_eq!(format_bytes_human(1000), "1000");
        assert_eq!(format_cpu_human(2000), "2");
        assert_eq!(format_cpu_human(1500), "1500m");
        assert_eq!(format_millicores(250), "250m");
    }
}
