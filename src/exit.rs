//! Exit codes (DESIGN §8) and the one-line failure every command ends with.

use std::fmt;

/// The documented process exit codes. Values follow BSD `sysexits.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success.
    Ok,
    /// 64: the command line was wrong (unknown option, bad option value, agent-owned kubelet flag).
    Usage,
    /// 65: the lease data (flags, Marathon variables, legacy file) was malformed.
    DataErr,
    /// 69: the kubelet binary is missing or not executable.
    Unavailable,
    /// 70: an internal error (a bug, or an I/O failure the agent cannot attribute to input).
    Software,
    /// 73: the host lock is held by another instance.
    CantCreate,
    /// 75: kubelet failed too often within the restart window.
    TempFail,
    /// 78: the configuration is impossible on this host (lease exceeds capacity, unreadable host files).
    Config,
}

impl ExitStatus {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Usage => 64,
            ExitStatus::DataErr => 65,
            ExitStatus::Unavailable => 69,
            ExitStatus::Software => 70,
            ExitStatus::CantCreate => 73,
            ExitStatus::TempFail => 75,
            ExitStatus::Config => 78,
        }
    }
}

/// A command's failure: the exit status and the one line printed to stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which documented exit code the process ends with.
    pub status: ExitStatus,
    /// One line: what was wrong and, for bad input, what is accepted.
    pub message: String,
}

impl Failure {
    /// Builds a failure with the given status and message.
    pub fn new(status: ExitStatus, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
