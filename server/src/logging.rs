//! A server's log on stderr: `tracing` events filtered by `DCOS_EXEC_LOG`, as text or as one JSON object per
//! line (`log_format`). Colour codes only go to a terminal, never into a file or a journal.

use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How a server writes its log to stderr (`log_format` in its config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (for journald, Fluent Bit, Loki and the like).
    Json,
}

/// Installs the process's subscriber; called once, before the server starts.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("DCOS_EXEC_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(ansi).init();
        }
        // Fields at the top level next to `timestamp`, `level`, `message` and `target`, as log shippers expect.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}
