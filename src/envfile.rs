//! The host's settings file (`/etc/default/kubelet-resource-wrapper`, written by the Ansible
//! role): `KRW_*` variables read by both `standby` (systemd `EnvironmentFile=`) and `run`
//! (Mesos passes a task only the Marathon app's `env`, so `run` reads the file itself).
//! Variables already in the environment win; the file only fills gaps.
//!
//! # Grammar
//! The file is parsed with the state machine of systemd's `parse_env_file_internal`
//! (`src/basic/env-file.c`), so `run` sees exactly what systemd gives `standby`:
//! - `\n` and `\r` end a line (so CRLF files work); blank lines are skipped; a line whose first
//!   non-blank character is `#` or `;` is a comment.
//! - `KEY=VALUE`; blanks around the key and before the value are dropped.
//! - Unquoted values: trailing blanks dropped; `\c` is `c`; `\` at the end of a line continues
//!   the value on the next line.
//! - `'…'`: literal up to the closing quote. `"…"`: `\"`, `\\`, `` \` ``, `\$` unescape, a
//!   backslash-newline is dropped, any other `\c` stays `\c`. Quoted and unquoted parts
//!   concatenate (`"a"'b'` is `ab`); the last assignment of a key wins.
//!
//! # What is refused (one line naming the file and line, exit 78)
//! Everything systemd would drop, ignore or fail on, so the two readers never disagree:
//! a NUL byte (systemd stops reading there), invalid UTF-8 (the unit fails), a UTF-8 byte-order
//! mark or `export KEY=…` (systemd reads them as part of an invalid key and ignores the line), a
//! line without `=`, a key that is not a valid variable name, an unterminated quote, and control
//! characters in a value other than tab and newline (systemd's `env_value_is_valid`).

use std::path::Path;

use thiserror::Error;

use crate::fsread;

/// Default location of the settings file; `KRW_ENV_FILE` names another.
pub const DEFAULT_PATH: &str = "/etc/default/kubelet-resource-wrapper";

/// Largest settings file read.
pub const CAP: u64 = fsread::SMALL_CAP;

/// Why a settings file is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {problem}")]
pub struct SyntaxError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to write instead.
    pub problem: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
    CommentEscape,
}

fn is_newline(c: char) -> bool {
    c == '\n' || c == '\r'
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// systemd's `env_name_is_valid`: ASCII letters, digits and `_`, not starting with a digit.
fn valid_name(key: &str) -> bool {
    key.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

struct Parser {
    out: Vec<(String, String)>,
    key: String,
    value: String,
    key_ws: Option<usize>,
    value_ws: Option<usize>,
    line: usize,
    key_line: usize,
}

impl Parser {
    fn push(&mut self, chomp_value: bool) -> Result<(), SyntaxError> {
        if let Some(at) = self.key_ws.take() {
            self.key.truncate(at);
        }
        if let Some(at) = self.value_ws.take().filter(|_| chomp_value) {
            self.value.truncate(at);
        }
        let key = std::mem::take(&mut self.key);
        let value = std::mem::take(&mut self.value);
        let err = |problem: String| SyntaxError {
            line: self.key_line,
            problem,
        };
        if let Some(rest) = key
            .strip_prefix("export")
            .filter(|r| r.starts_with(is_blank))
        {
            return Err(err(format!(
                "\"export {}=…\" is shell syntax; systemd's EnvironmentFile= ignores it; write {}=… without export",
                rest.trim(),
                rest.trim()
            )));
        }
        if !valid_name(&key) {
            return Err(err(format!(
                "{key:?} is not a variable name (letters, digits and _, not starting with a digit); systemd would ignore this line"
            )));
        }
        if let Some(c) = value
            .chars()
            .find(|c| c.is_control() && *c != '\t' && *c != '\n')
        {
            return Err(err(format!(
                "the value of {key} contains the control character {c:?}; systemd would ignore it"
            )));
        }
        self.out.retain(|(k, _)| *k != key);
        self.out.push((key, value));
        Ok(())
    }
}

/// Parses a settings file's text with systemd's `EnvironmentFile=` grammar (see the module
/// docs) and returns every assignment, the last one of each key winning.
pub fn parse_all(text: &str) -> Result<Vec<(String, String)>, SyntaxError> {
    if text.starts_with('\u{feff}') {
        return Err(SyntaxError {
            line: 1,
            problem: "the file starts with a UTF-8 byte-order mark, which systemd reads as part of the first key; save it without BOM".into(),
        });
    }
    let mut p = Parser {
        out: Vec::new(),
        key: String::new(),
        value: String::new(),
        key_ws: None,
        value_ws: None,
        line: 1,
        key_line: 1,
    };
    let mut state = State::PreKey;
    for c in text.chars() {
        let newline = is_newline(c);
        state = match state {
            State::PreKey if c == '#' || c == ';' => State::Comment,
            State::PreKey if is_blank(c) => State::PreKey,
            State::PreKey if c == '=' => {
                return Err(SyntaxError {
                    line: p.line,
                    problem: "the line starts with '=': the variable name is missing".into(),
                });
            }
            State::PreKey => {
                p.key.clear();
                p.key.push(c);
                p.key_ws = None;
                p.key_line = p.line;
                State::Key
            }
            State::Key if newline => {
                return Err(SyntaxError {
                    line: p.line,
                    problem: format!(
                        "{:?} has no '='; write KEY=VALUE (systemd would ignore this line)",
                        p.key.trim()
                    ),
                });
            }
            State::Key if c == '=' => {
                p.value_ws = None;
                State::PreValue
            }
            State::Key => {
                if !is_blank(c) {
                    p.key_ws = None;
                } else if p.key_ws.is_none() {
                    p.key_ws = Some(p.key.len());
                }
                p.key.push(c);
                State::Key
            }
            State::PreValue | State::Value if newline => {
                p.push(state == State::Value)?;
                State::PreKey
            }
            State::PreValue if c == '\'' => State::SingleQuote,
            State::PreValue if c == '"' => State::DoubleQuote,
            State::PreValue if c == '\\' => State::ValueEscape,
            State::PreValue if is_blank(c) => State::PreValue,
            State::PreValue => {
                p.value.push(c);
                State::Value
            }
            State::Value if c == '\\' => {
                p.value_ws = None;
                State::ValueEscape
            }
            State::Value => {
                if !is_blank(c) {
                    p.value_ws = None;
                } else if p.value_ws.is_none() {
                    p.value_ws = Some(p.value.len());
                }
                p.value.push(c);
                State::Value
            }
            State::ValueEscape => {
                if !newline {
                    p.value.push(c);
                }
                State::Value
            }
            State::SingleQuote if c == '\'' => State::PreValue,
            State::SingleQuote => {
                p.value.push(c);
                State::SingleQuote
            }
            State::DoubleQuote if c == '"' => State::PreValue,
            State::DoubleQuote if c == '\\' => State::DoubleQuoteEscape,
            State::DoubleQuote => {
                p.value.push(c);
                State::DoubleQuote
            }
            State::DoubleQuoteEscape => {
                if matches!(c, '"' | '\\' | '`' | '$') {
                    p.value.push(c);
                } else if c != '\n' {
                    p.value.push('\\');
                    p.value.push(c);
                }
                State::DoubleQuote
            }
            State::Comment if c == '\\' => State::CommentEscape,
            State::Comment if newline => State::PreKey,
            State::Comment => State::Comment,
            State::CommentEscape if newline => State::PreKey,
            State::CommentEscape => State::Comment,
        };
        if newline {
            p.line = p.line.saturating_add(1);
        }
    }
    match state {
        State::SingleQuote | State::DoubleQuote | State::DoubleQuoteEscape => Err(SyntaxError {
            line: p.key_line,
            problem: format!("the value of {:?} has no closing quote", p.key.trim()),
        }),
        State::Key => Err(SyntaxError {
            line: p.line,
            problem: format!(
                "{:?} has no '='; write KEY=VALUE (systemd would ignore this line)",
                p.key.trim()
            ),
        }),
        State::PreValue | State::Value | State::ValueEscape => {
            p.push(state == State::Value)?;
            Ok(p.out)
        }
        State::PreKey | State::Comment | State::CommentEscape => Ok(p.out),
    }
}

/// The `KRW_*` assignments of a settings file's text (other variables are for `standby`'s
/// environment only and are not taken by `run`).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, SyntaxError> {
    Ok(parse_all(text)?
        .into_iter()
        .filter(|(k, _)| k.starts_with("KRW_"))
        .collect())
}

/// Reads the settings file, if present, and returns the variables not already set. The file
/// is opened without blocking, must be a regular UTF-8 file without NUL of at most 64 KiB.
pub fn missing_vars(
    path: &Path,
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, String> {
    let text = match fsread::read_text_if_present(path, CAP) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(format!("settings file: {e}")),
    };
    let vars = parse(&text).map_err(|e| format!("settings file {}: {e}", path.display()))?;
    Ok(vars.into_iter().filter(|(k, _)| !is_set(k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn systemd_environment_file_lines() {
        let text = "# comment\n; other\nKRW_DRAIN_TIMEOUT=50\nKRW_KUBE_RESERVED=\"cpu=100m,memory=256Mi\"\n\
                    KRW_EVICTION_HARD='memory.available<200Mi'\nPATH=/evil\n\n  KRW_NO_DRAIN = true \n";
        assert_eq!(
            ok(text),
            pairs(&[
                ("KRW_DRAIN_TIMEOUT", "50"),
                ("KRW_KUBE_RESERVED", "cpu=100m,memory=256Mi"),
                ("KRW_EVICTION_HARD", "memory.available<200Mi"),
                ("KRW_NO_DRAIN", "true"),
            ])
        );
    }

    #[test]
    fn quotes_escapes_continuations_and_crlf_as_systemd_reads_them() {
        assert_eq!(
            ok("KRW_A=1\r\nKRW_B=2\r\n"),
            pairs(&[("KRW_A", "1"), ("KRW_B", "2")])
        );
        assert_eq!(ok("KRW_A=a\\\nb\n"), pairs(&[("KRW_A", "ab")]));
        assert_eq!(
            ok("KRW_A=\"x\\\"y\\$z\\n\"\n"),
            pairs(&[("KRW_A", "x\"y$z\\n")])
        );
        assert_eq!(ok("KRW_A='a b'\"c\"  d\n"), pairs(&[("KRW_A", "a bcd")]));
        assert_eq!(
            ok("KRW_A=a # not a comment\n"),
            pairs(&[("KRW_A", "a # not a comment")])
        );
        assert_eq!(ok("KRW_A=1\nKRW_A=2"), pairs(&[("KRW_A", "2")]));
        assert_eq!(ok("KRW_A="), pairs(&[("KRW_A", "")]));
        assert_eq!(ok("# c \\\nKRW_A=1\n"), pairs(&[("KRW_A", "1")]));
    }

    #[test]
    fn what_systemd_would_drop_is_refused_with_the_line() {
        for (text, line, needle) in [
            ("\u{feff}KRW_A=1\n", 1, "byte-order mark"),
            ("KRW_A=1\nexport KRW_B=2\n", 2, "without export"),
            ("KRW_A=1\n\nKRW_B\n", 3, "has no '='"),
            ("KRW BAD=1\n", 1, "not a variable name"),
            ("1KRW=1\n", 1, "not a variable name"),
            ("=1\n", 1, "name is missing"),
            ("KRW_A=\"open\n", 1, "no closing quote"),
            ("KRW_A='x\ry'\n", 1, "control character"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn environment_wins_and_a_missing_file_is_fine() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("krw");
        assert_eq!(missing_vars(&path, |_| false), Ok(Vec::new()));
        std::fs::write(&path, "KRW_A=1\nKRW_B=2\n").expect("write");
        assert_eq!(
            missing_vars(&path, |k| k == "KRW_A"),
            Ok(pairs(&[("KRW_B", "2")]))
        );
        assert!(missing_vars(dir.path(), |_| false).is_err());
        std::fs::write(&path, b"KRW_A=1\0\n").expect("write");
        assert!(
            missing_vars(&path, |_| false)
                .expect_err("nul")
                .contains("NUL")
        );
    }
}
