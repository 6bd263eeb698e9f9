//! OCI debug images for `--debug-image`: references, registry pulls, a verified content-addressed cache and
//! safe layer unpacking. Filled in by the debug-image work; the exec spine does not depend on it yet.
