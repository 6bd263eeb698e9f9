//! `--version` carries the git revision: see build-support/revision.rs.
include!("../build-support/revision.rs");
