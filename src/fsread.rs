//! Bounded reads of the files the agent reads: the settings file, the legacy lease file, the
//! kubelet arguments and config files, the lock record and the host's `/proc` and `/sys` files.
//!
//! Every path is first checked to name a regular file (a FIFO or device is not even opened),
//! then opened `O_RDONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC`, so opening never waits; `fstat` on the
//! open descriptor must say *regular file* as well (procfs and sysfs files are regular files
//! too), and at most `cap` bytes are read, so `/dev/zero`, a FIFO, a socket or a huge file is
//! one clear error instead of a hang or unbounded memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Cap for small configuration and record files (settings, legacy lease, lock record).
pub const SMALL_CAP: u64 = 64 * 1024;
/// Cap for the kubelet arguments file and KubeletConfiguration.
pub const CONFIG_CAP: u64 = 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The path names something other than a regular file (FIFO, device, socket, directory).
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file is larger than the cap.
    #[error("{path} is larger than {cap} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap in bytes.
        cap: u64,
    },
    /// The file is not UTF-8 text or contains a NUL byte.
    #[error("{path} is not text ({problem})")]
    NotText {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
    /// Any other I/O error.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl ReadError {
    /// Whether the file is simply absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::NotFound { .. })
    }
}

/// Names a non-regular file type for messages.
pub fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` for reading without blocking and checks it is a regular file: first by path
/// (so a device or FIFO is not even opened), then on the open descriptor (what was opened).
pub fn open_regular(path: &Path) -> Result<File, ReadError> {
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.file_type().is_file()
    {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound {
                path: path.to_path_buf(),
            },
            _ => ReadError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok(file)
}

/// Reads at most `cap` bytes of an open file; more is an error.
pub fn read_open(mut file: File, path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    (&mut file)
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(bytes)
}

/// Reads a regular file of at most `cap` bytes.
pub fn read_bytes(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    read_open(open_regular(path)?, path, cap)
}

/// Reads a regular UTF-8 text file of at most `cap` bytes with no NUL byte.
pub fn read_text(path: &Path, cap: u64) -> Result<String, ReadError> {
    let bytes = read_bytes(path, cap)?;
    text(path, bytes)
}

/// Checks that `bytes` are UTF-8 without NUL.
pub fn text(path: &Path, bytes: Vec<u8>) -> Result<String, ReadError> {
    if bytes.contains(&0) {
        return Err(ReadError::NotText {
            path: path.to_path_buf(),
            problem: "it contains a NUL byte",
        });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText {
        path: path.to_path_buf(),
        problem: "it is not valid UTF-8",
    })
}

/// [`read_text`], with an absent file as `Ok(None)`.
pub fn read_text_if_present(path: &Path, cap: u64) -> Result<Option<String>, ReadError> {
    match read_text(path, cap) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_capped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").expect("write");
        assert_eq!(read_text(&path, 5).expect("read"), "hello");
        assert!(matches!(
            read_text(&path, 4),
            Err(ReadError::TooLarge { cap: 4, .. })
        ));
        assert!(matches!(
            read_text_if_present(&dir.path().join("none"), 4),
            Ok(None)
        ));
        std::fs::write(&path, b"a\0b").expect("write");
        assert!(matches!(
            read_text(&path, 10),
            Err(ReadError::NotText { .. })
        ));
        std::fs::write(&path, b"\xff").expect("write");
        assert!(matches!(
            read_text(&path, 10),
            Err(ReadError::NotText { .. })
        ));
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let err = read_text(&fifo, 10).expect_err("fifo");
        assert_eq!(
            err.to_string(),
            format!("{} is a FIFO, not a regular file", fifo.display())
        );
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular {
                kind: "character device",
                ..
            })
        ));
        assert!(matches!(
            read_text(dir.path(), 10),
            Err(ReadError::NotRegular {
                kind: "directory",
                ..
            })
        ));
    }

    #[test]
    fn procfs_files_are_regular() {
        assert!(
            read_text(Path::new("/proc/meminfo"), SMALL_CAP)
                .expect("meminfo")
                .contains("MemTotal:")
        );
    }
}
