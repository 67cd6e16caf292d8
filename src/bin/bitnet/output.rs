//! Standard output as the command line writes it: every write checked, a
//! closed pipe ending the program as it ends `head`, `grep` or llama.cpp's
//! tools (quietly, killed by SIGPIPE), any other failure an error with its
//! message and exit status 1 (`CliError::Other`).

use std::fmt;
use std::io::{self, Write};

use crate::error::{CliError, CliResult};

/// Writes formatted text to stdout and flushes it (so streamed text and
/// progress appear at once); `?` it like any other fallible step.
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write(format_args!($($t)*)) };
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {out, outln};

pub fn write(args: fmt::Arguments) -> CliResult {
    let mut o = io::stdout().lock();
    o.write_fmt(args)
        .and_then(|()| o.flush())
        .map_err(stdout_err)
}

/// Writes raw bytes to stdout and flushes them.
pub fn write_bytes(b: &[u8]) -> CliResult {
    let mut o = io::stdout().lock();
    o.write_all(b).and_then(|()| o.flush()).map_err(stdout_err)
}

/// The error of a failed write to stdout.
pub fn stdout_err(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Other(format!("writing to standard output: {e}"))
    }
}

/// From here on a write to a closed pipe kills the process with SIGPIPE, as
/// it does a C program (Rust's runtime ignores the signal, so that such a
/// write is an error, and `println!` panics on that error). For the commands
/// that neither serve nor open sockets: every write of theirs to stdout or
/// stderr then ends as a C tool's does.
pub fn die_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: signal() with a valid signal number and SIG_DFL has no memory
    // effects; it is called before any thread of ours starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ends the program as a closed stdout ends a C tool: by SIGPIPE, no message.
/// (For the commands that keep the signal ignored, where the write returned
/// an error instead.)
pub fn exit_closed_pipe() -> std::process::ExitCode {
    #[cfg(unix)]
    // SAFETY: as in die_on_closed_pipe; raise() then delivers the signal to
    // this thread and, with the default action, ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached on Unix; elsewhere the status a shell shows for SIGPIPE.
    std::process::ExitCode::from(141)
}
