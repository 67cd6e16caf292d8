//! The crate's error type: a kind (which maps to a C ABI error code) and a
//! message that names what is wrong.

use std::fmt;

/// What went wrong, coarsely; each kind has a stable C ABI code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A NULL pointer where one is required.
    Null,
    /// An argument out of range (size, count, shape, name).
    InvalidArgument,
    /// A handle that is not live: freed, foreign, or from before a shutdown.
    BadHandle,
    /// Memory could not be allocated.
    OutOfMemory,
    /// The CPU or build lacks what was asked for.
    Unsupported,
    /// A file is malformed or not what was expected.
    Format,
    /// An operating-system I/O error.
    Io,
    /// An internal panic caught at the ABI boundary.
    Internal,
}

impl ErrorKind {
    /// The C ABI error code (`GGML_BITNET_STFMA_ERR_*`).
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Null => -1,
            ErrorKind::InvalidArgument => -2,
            ErrorKind::BadHandle => -3,
            ErrorKind::OutOfMemory => -4,
            ErrorKind::Unsupported => -5,
            ErrorKind::Format => -6,
            ErrorKind::Io => -7,
            ErrorKind::Internal => -8,
        }
    }
}

/// An error with a readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Format, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}
