//! Java's `Double.toString(double)` (which Scala's `Double.toString` is), as Marathon uses it for
//! `MARATHON_APP_RESOURCE_CPUS/_MEM/_DISK`.
//!
//! Java's rules (JDK 19+ specification, shortest-digits algorithm by R. Giulietti):
//! * NaN → `NaN`, ±∞ → `Infinity` / `-Infinity`, ±0 → `0.0` / `-0.0`;
//! * 10⁻³ ≤ |d| < 10⁷: plain decimal, with at least one digit after the point (`2.0`, `0.5`, `4196.0`);
//! * otherwise "computerized scientific notation": one digit, a point, at least one more digit, `E`,
//!   the exponent (`1.0E7`, `1.23456789E7`, `1.0E-4`);
//! * as few digits as uniquely distinguish the value from its neighbouring doubles (with Java's
//!   one-or-two-digit tie rule, see below).
//!
//! Rust's `{:e}` formatting also prints the shortest round-trip digits, so we take the digits and
//! exponent from it and lay them out the Java way.

/// Formats `d` exactly like Java's `Double.toString(d)`.
pub fn java_double_to_string(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_string();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    let sign = if d < 0.0 { "-" } else { "" };
    let a = d.abs();
    // e.g. "1.2345678e7", "5e-1", "1e7"
    let mut sci = format!("{a:e}");
    if !sci.contains('.') {
        // Java: when the shortest decimal has one digit, the closest decimal of length 1 *or 2*
        // that rounds to the value wins (Double.MIN_VALUE is "4.9E-324", not "5.0E-324").
        // `{:.1e}` is the correctly rounded 2-digit decimal, i.e. the closest one.
        let two = format!("{a:.1e}");
        if two.parse::<f64>() == Ok(a) {
            sci = two;
        }
    }
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };

    if (1e-3..1e7).contains(&a) {
        // Plain notation. The value is digits[0].digits[1..] × 10^exp.
        let n = digits.len() as i32;
        let mut out = String::from(sign);
        if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                out.push_str(digits);
                out.extend(std::iter::repeat_n('0', (int_len - n) as usize));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len as usize]);
                out.push('.');
                out.push_str(&digits[int_len as usize..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(digits);
        }
        out
    } else {
        let frac = if digits.len() > 1 { &digits[1..] } else { "0" };
        format!("{sign}{}.{frac}E{exp}", &digits[..1])
    }
}

#[cfg(test)]
mod tests {
    use super::java_double_to_string as j;

    #[test]
    fn marathon_examples() {
        assert_eq!(j(2.0), "2.0");
        assert_eq!(j(0.5), "0.5");
        assert_eq!(j(10.0), "10.0");
        assert_eq!(j(256.0), "256.0");
        assert_eq!(j(4196.0), "4196.0");
        assert_eq!(j(8192.0), "8192.0");
        assert_eq!(j(128.0), "128.0");
        assert_eq!(j(0.0), "0.0");
    }

    #[test]
    fn plain_range_boundaries() {
        assert_eq!(j(0.001), "0.001");
        assert_eq!(j(0.0015), "0.0015");
        assert_eq!(j(0.1), "0.1");
        assert_eq!(j(0.25), "0.25");
        assert_eq!(j(1.5), "1.5");
        assert_eq!(j(9999999.0), "9999999.0");
        assert_eq!(j(9999999.5), "9999999.5");
        assert_eq!(j(1234567.125), "1234567.125");
        assert_eq!(j(100.0), "100.0");
        assert_eq!(j(4196.5), "4196.5");
    }

    #[test]
    fn scientific_outside_range() {
        assert_eq!(j(1e7), "1.0E7");
        assert_eq!(j(1.0e7 + 1.0), "1.0000001E7");
        assert_eq!(j(12345678.9), "1.23456789E7");
        assert_eq!(j(1e-4), "1.0E-4");
        assert_eq!(j(0.00099), "9.9E-4");
        assert_eq!(j(1.5e-10), "1.5E-10");
        assert_eq!(j(1e21), "1.0E21");
        assert_eq!(j(1e100), "1.0E100");
        assert_eq!(j(f64::MAX), "1.7976931348623157E308");
        assert_eq!(j(f64::MIN_POSITIVE), "2.2250738585072014E-308");
        assert_eq!(j(4.9e-324), "4.9E-324");
    }

    #[test]
    fn shortest_digits() {
        assert_eq!(j(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(j(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(j(2.0 / 3.0), "0.6666666666666666");
        assert_eq!(j(100.0 / 3.0), "33.333333333333336");
    }

    #[test]
    fn specials_and_negatives() {
        assert_eq!(j(f64::NAN), "NaN");
        assert_eq!(j(f64::INFINITY), "Infinity");
        assert_eq!(j(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(j(-0.0), "-0.0");
        assert_eq!(j(-2.0), "-2.0");
        assert_eq!(j(-1e7), "-1.0E7");
        assert_eq!(j(-0.5), "-0.5");
    }

    #[test]
    fn round_trips() {
        for v in [
            0.001,
            0.3,
            2.5e-5,
            7.0e9,
            123.456,
            6.02214076e23,
            9.999999e6,
        ] {
            assert_eq!(j(v).parse::<f64>().unwrap(), v, "{v}");
        }
    }
}
