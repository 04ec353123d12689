//! An independent implementation of Kubernetes `resource.ParseQuantity`.
//!
//! Grammar (k8s.io/apimachinery/pkg/api/resource/quantity.go):
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <plusminus><number>
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>
//! ```
//! Values are exact (mantissa × 10^dec_exp × 2^bin_exp). `value()` and `milli_value()`
//! round up away from zero, as `Quantity.Value()` / `Quantity.MilliValue()` do.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub String);

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Go's `resource.ErrFormatWrong` text.
const FORMAT_WRONG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    dec_exp: i32,
    bin_exp: u32,
}

impl Quantity {
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let err = || QuantityError(FORMAT_WRONG.to_string());
        if s.is_empty() {
            return Err(QuantityError("quantities must not be empty".into()));
        }
        let b = s.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if b[0] == b'+' || b[0] == b'-' {
            negative = b[0] == b'-';
            i = 1;
        }
        let mut mantissa: u128 = 0;
        let mut dec_exp: i32 = 0;
        let mut digits = 0usize;
        let mut seen_dot = false;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_digit() {
                digits += 1;
                if mantissa == 0 && c == b'0' {
                    // leading zeros do not grow the mantissa
                } else {
                    mantissa = mantissa
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(u128::from(c - b'0')))
                        .ok_or_else(|| QuantityError("quantity has too many digits".into()))?;
                }
                if seen_dot {
                    dec_exp -= 1;
                }
            } else if c == b'.' && !seen_dot {
                seen_dot = true;
            } else {
                break;
            }
            i += 1;
        }
        if digits == 0 {
            return Err(err());
        }
        let suffix = &s[i..];
        let mut bin_exp = 0u32;
        match suffix {
            "" => {}
            "n" => dec_exp -= 9,
            "u" => dec_exp -= 6,
            "m" => dec_exp -= 3,
            "k" => dec_exp += 3,
            "M" => dec_exp += 6,
            "G" => dec_exp += 9,
            "T" => dec_exp += 12,
            "P" => dec_exp += 15,
            "E" => dec_exp += 18,
            "Ki" => bin_exp = 10,
            "Mi" => bin_exp = 20,
            "Gi" => bin_exp = 30,
            "Ti" => bin_exp = 40,
            "Pi" => bin_exp = 50,
            "Ei" => bin_exp = 60,
            _ => {
                let sb = suffix.as_bytes();
                if sb.len() > 1 && (sb[0] == b'e' || sb[0] == b'E') {
                    let rest = &suffix[1..];
                    let digits_part = rest.strip_prefix(['+', '-']).unwrap_or(rest);
                    if digits_part.is_empty() || !digits_part.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(QuantityError("unable to parse quantity's suffix".into()));
                    }
                    let e: i32 = rest
                        .parse()
                        .map_err(|_| QuantityError("unable to parse quantity's suffix".into()))?;
                    if e.abs() > 1000 {
                        return Err(QuantityError("quantity exponent out of range".into()));
                    }
                    dec_exp += e;
                } else {
                    return Err(QuantityError("unable to parse quantity's suffix".into()));
                }
            }
        }
        if mantissa == 0 {
            negative = false;
        }
        Ok(Quantity {
            negative,
            mantissa,
            dec_exp,
            bin_exp,
        })
    }

    pub fn is_negative(&self) -> bool {
        self.negative && self.mantissa != 0
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// ceil(|q| × 10^-scale) with the sign of q, saturating at i64 bounds.
    fn scaled(&self, scale: i32) -> i64 {
        let mag = self.scaled_magnitude(scale);
        let v = i64::try_from(mag).unwrap_or(i64::MAX);
        if self.negative { -v } else { v }
    }

    fn scaled_magnitude(&self, scale: i32) -> u128 {
        if self.mantissa == 0 {
            return 0;
        }
        // mantissa × 2^bin × 10^(dec_exp - scale), rounded up.
        let Some(m) = self.mantissa.checked_mul(1u128 << self.bin_exp) else {
            return u128::MAX;
        };
        let e = self.dec_exp - scale;
        if e >= 0 {
            let mut v = m;
            for _ in 0..e {
                match v.checked_mul(10) {
                    Some(n) => v = n,
                    None => return u128::MAX,
                }
            }
            v
        } else {
            let mut div: u128 = 1;
            for _ in 0..(-e) {
                match div.checked_mul(10) {
                    Some(n) => div = n,
                    // divisor larger than any u128 mantissa: a tiny positive value rounds up to 1
                    None => return 1,
                }
            }
            m.div_ceil(div)
        }
    }

    /// `Quantity.Value()`: integer units, rounded up away from zero.
    pub fn value(&self) -> i64 {
        self.scaled(0)
    }

    /// `Quantity.MilliValue()`: thousandths, rounded up away from zero.
    pub fn milli_value(&self) -> i64 {
        self.scaled(-3)
    }
}

/// Canonical DecimalSI rendering of a millicore count, as the API shows CPU ("2", "1500m").
pub fn format_cpu_millis(m: i64) -> String {
    if m % 1000 == 0 {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> i64 {
        Quantity::parse(s).unwrap().value()
    }
    fn mv(s: &str) -> i64 {
        Quantity::parse(s).unwrap().milli_value()
    }

    #[test]
    fn decimal_and_binary_suffixes() {
        assert_eq!(v("1Gi"), 1 << 30);
        assert_eq!(v("500Mi"), 500 << 20);
        assert_eq!(v("1G"), 1_000_000_000);
        assert_eq!(v("1k"), 1000);
        assert_eq!(v("1073741824"), 1073741824);
        assert_eq!(v("1.5Gi"), 3 << 29);
        assert_eq!(v("1Ei"), 1 << 60);
        assert_eq!(v("2E"), 2_000_000_000_000_000_000);
        assert_eq!(mv("500m"), 500);
        assert_eq!(mv("1"), 1000);
        assert_eq!(mv("1.5"), 1500);
        assert_eq!(mv("0.1"), 100);
        assert_eq!(mv(".5"), 500);
        assert_eq!(mv("5."), 5000);
        assert_eq!(mv("100u"), 1); // 0.1m rounds up
        assert_eq!(mv("1n"), 1);
        assert_eq!(v("1m"), 1); // Value rounds up
        assert_eq!(mv("0.0001"), 1);
        assert_eq!(mv("+2"), 2000);
    }

    #[test]
    fn exponents() {
        assert_eq!(v("1e3"), 1000);
        assert_eq!(v("1E3"), 1000);
        assert_eq!(v("12e+2"), 1200);
        assert_eq!(mv("1e-3"), 1);
        assert_eq!(v("1.5e1"), 15);
    }

    #[test]
    fn signs_and_errors() {
        assert!(Quantity::parse("-1Gi").unwrap().is_negative());
        assert_eq!(Quantity::parse("-1").unwrap().milli_value(), -1000);
        assert!(!Quantity::parse("-0").unwrap().is_negative());
        for bad in [
            "", "abc", "1Gb", "1 Gi", "1e", "e3", ".", "1.2.3", "1KI", "1K", "--1", "1i", "Mi",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn cpu_format() {
        assert_eq!(format_cpu_millis(2000), "2");
        assert_eq!(format_cpu_millis(1500), "1500m");
        assert_eq!(format_cpu_millis(0), "0");
    }
}
