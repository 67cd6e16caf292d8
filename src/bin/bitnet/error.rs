//! How a command fails: [`CliError`], one kind per exit status.

/// A failure of a command, by kind: each kind has its own exit status.
#[derive(Debug)]
pub enum CliError {
    /// The command line itself (exit 2, as clap's own usage errors).
    Usage(String),
    /// The model file: unreadable, not a GGUF, not a supported model (exit 3).
    Model(String),
    /// The input: an empty or over-long prompt, an unreadable prompt or text
    /// file, token ids outside the vocabulary (exit 4).
    Input(String),
    /// Anything else, such as a failed write (exit 1).
    Other(String),
    /// Standard output was closed by its reader: the program ends quietly,
    /// by SIGPIPE, as `head`'s writer does.
    StdoutClosed,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Other(_) | CliError::StdoutClosed => 1,
            CliError::Usage(_) => 2,
            CliError::Model(_) => 3,
            CliError::Input(_) => 4,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Model(m) | CliError::Input(m) | CliError::Other(m) => m,
            CliError::StdoutClosed => "standard output closed",
        }
    }
}

impl From<String> for CliError {
    fn from(m: String) -> Self {
        CliError::Other(m)
    }
}

pub fn model_err(e: impl std::fmt::Display) -> CliError {
    CliError::Model(e.to_string())
}

pub fn input_err(e: impl std::fmt::Display) -> CliError {
    CliError::Input(e.to_string())
}

pub type CliResult<T = ()> = Result<T, CliError>;
