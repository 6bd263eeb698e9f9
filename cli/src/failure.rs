//! A failure of the CLI: one line for the user and the exit code.

use dcos_exec_proto::exit;

/// A failure with the exit code the CLI should use.
#[derive(Debug)]
pub struct Failure {
    pub exit: i32,
    pub message: String,
}

impl Failure {
    pub fn new(exit: i32, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }

    /// Prints the one line on stderr and returns the exit code.
    pub fn report(&self) -> i32 {
        eprintln!("dcos: {}", printable(&self.message));
        self.exit
    }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), and the invisible characters that reorder or hide
/// text (bidi controls, line separators, zero-width characters: `\u{202e}`): what a server or a container said
/// must not drive the terminal (ESC sequences), make one line look like several, or read as something else.
/// The same set as the agent's logs ([`dcos_exec_proto::must_escape`]).
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if dcos_exec_proto::must_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl From<dcos_exec::Error> for Failure {
    fn from(e: dcos_exec::Error) -> Failure {
        Failure::new(e.exit_code(), e.to_string())
    }
}

impl From<dcos_exec::config::ConfigError> for Failure {
    fn from(e: dcos_exec::config::ConfigError) -> Failure {
        Failure::new(exit::FAILED, e.to_string())
    }
}
