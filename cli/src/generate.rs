//! What is generated from the clap definitions: shell completion scripts and man pages.

use crate::failure::Failure;
use dcos_exec_proto::exit;
use std::path::Path;

/// Prints the completion script for `shell` on stdout.
pub fn completion(mut cmd: clap::Command, shell: clap_complete::Shell) -> Result<(), Failure> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    std::io::Write::write_all(&mut std::io::stdout(), &out)
        .map_err(|e| Failure::new(exit::FAILED, format!("writing the completion script: {e}")))
}

/// Writes one man page per command (`dcos.1`, `dcos-task.1`, `dcos-task-exec.1`, ...) into `dir`.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::new(exit::FAILED, format!("writing man pages into {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    clap_mangen::generate_to(cmd, dir).map_err(fail)
}
