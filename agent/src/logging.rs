//! The agent's log on stderr: `tracing` events filtered by `DCOS_EXEC_LOG`, as text or as one JSON object per
//! line (`log_format`). Colour codes only go to a terminal, never into a file or a journal.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber; called once, by `run`.
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
