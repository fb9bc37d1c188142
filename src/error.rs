//! The one error type of credfs: every failure carries the errno a filesystem
//! caller sees, and a message that is safe to log (never a secret).

use std::fmt;
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidInput,
    TooBig,
    ReadOnly,
    PermissionDenied,
    NotPermitted,
    CrossDevice,
    Busy,
    /// A per-user limit is reached.
    QuotaExceeded,
    NotADirectory,
    IsADirectory,
    NotSupported,
    /// The provider (registry, object store, helper) failed.
    Provider,
}

impl ErrorKind {
    /// The errno's symbolic name, as the audit log records it.
    pub fn errno_name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "ENOENT",
            ErrorKind::AlreadyExists => "EEXIST",
            ErrorKind::InvalidInput => "EINVAL",
            ErrorKind::TooBig => "EFBIG",
            ErrorKind::ReadOnly => "EROFS",
            ErrorKind::PermissionDenied => "EACCES",
            ErrorKind::NotPermitted => "EPERM",
            ErrorKind::CrossDevice => "EXDEV",
            ErrorKind::Busy => "EBUSY",
            ErrorKind::QuotaExceeded => "EDQUOT",
            ErrorKind::NotADirectory => "ENOTDIR",
            ErrorKind::IsADirectory => "EISDIR",
            ErrorKind::NotSupported => "EOPNOTSUPP",
            ErrorKind::Provider => "EIO",
        }
    }

    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::InvalidInput => libc::EINVAL,
            ErrorKind::TooBig => libc::EFBIG,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::PermissionDenied => libc::EACCES,
            ErrorKind::NotPermitted => libc::EPERM,
            ErrorKind::CrossDevice => libc::EXDEV,
            ErrorKind::Busy => libc::EBUSY,
            ErrorKind::QuotaExceeded => libc::EDQUOT,
            ErrorKind::NotADirectory => libc::ENOTDIR,
            ErrorKind::IsADirectory => libc::EISDIR,
            ErrorKind::NotSupported => libc::EOPNOTSUPP,
            ErrorKind::Provider => libc::EIO,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Control characters in `message` (a file name with a newline, a
    /// helper's multi-line stderr) are escaped: no message can forge a log
    /// line.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match message.contains(needs_escape) {
            true => message
                .chars()
                .map(|c| match needs_escape(c) {
                    true => c.escape_default().to_string(),
                    false => c.to_string(),
                })
                .collect(),
            false => message,
        };
        Error { kind, message }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn errno(&self) -> i32 {
        self.kind.errno()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn provider(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Provider, message)
    }

    pub fn read_only(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    /// Wraps an I/O error from a provider's backend, keeping the errno that
    /// matters to a caller (missing, denied) and mapping the rest to EIO.
    pub fn from_io(context: impl fmt::Display, err: &io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ if err.raw_os_error() == Some(libc::EFBIG) => ErrorKind::TooBig,
            _ if err.raw_os_error() == Some(libc::EROFS) => ErrorKind::ReadOnly,
            _ => ErrorKind::Provider,
        };
        Self::new(kind, format!("{context}: {err}"))
    }
}

/// What could make a message look like something else in a log: control
/// characters, line and paragraph separators, bidi overrides, and the
/// backslash itself (so a name spelled `a\nb` differs from one with a
/// newline in it).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let e = Error::invalid("projects/b/x\nFAKE line\u{1b}[31m");
        assert_eq!(e.message(), "projects/b/x\\nFAKE line\\u{1b}[31m");
        let spelled = Error::invalid("projects/b/x\\nFAKE");
        assert_eq!(spelled.message(), "projects/b/x\\\\nFAKE");
        assert_ne!(
            spelled.message(),
            e.message().split(' ').next().unwrap_or("")
        );
        let bidi = Error::invalid("a\u{202E}b\u{2028}c");
        assert_eq!(bidi.message(), "a\\u{202e}b\\u{2028}c");
    }

    #[test]
    fn io_errors_keep_the_errno_callers_act_on() {
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(Error::from_io("x", &missing).errno(), libc::ENOENT);
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Error::from_io("x", &full).errno(), libc::EIO);
        assert_eq!(
            Error::from_io("ctx", &full).message(),
            format!("ctx: {full}")
        );
    }
}
