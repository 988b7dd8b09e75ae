//! Committed generated gRPC code must match its `.proto` (DESIGN house rule
//! 8: Yocto builds need no protoc, and CI proves the code is current).
//!
//! Each crate with a `.proto` has a `tests/proto_current.rs` that calls
//! [`check_current`]. Set `SMARTER_UPDATE_PROTO=1` to rewrite the committed
//! file instead of comparing.

use std::path::Path;

/// Regenerate `proto` (client and server) into a temp dir and compare the
/// module file `generated` (e.g. `v1beta1.rs`) with `committed`.
///
/// Returns `Ok(false)` when protoc is not installed, after printing why the
/// check was skipped; `Err` describes a stale file or a failed generation.
pub fn check_current(
    proto: &Path,
    include: &Path,
    generated: &str,
    committed: &Path,
) -> Result<bool, Box<dyn std::error::Error>> {
    check_current_with(proto, include, generated, committed, |b| b)
}

/// [`check_current`] with extra generator settings (e.g. a `codec_path`),
/// applied on top of client + server generation.
pub fn check_current_with(
    proto: &Path,
    include: &Path,
    generated: &str,
    committed: &Path,
    configure: impl FnOnce(tonic_prost_build::Builder) -> tonic_prost_build::Builder,
) -> Result<bool, Box<dyn std::error::Error>> {
    if !Path::new("/usr/bin/protoc").exists() && std::env::var_os("PROTOC").is_none() {
        crate::require::skip("protoc not installed (Debian protobuf-compiler); cannot regenerate");
        return Ok(false);
    }
    let out = tempfile::tempdir()?;
    configure(
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true),
    )
    .out_dir(out.path())
    .compile_protos(&[proto], &[include])?;
    let fresh = std::fs::read_to_string(out.path().join(generated))?;
    if std::env::var_os("SMARTER_UPDATE_PROTO").is_some() {
        std::fs::write(committed, &fresh)?;
        return Ok(true);
    }
    let old = std::fs::read_to_string(committed).unwrap_or_default();
    if old != fresh {
        return Err(format!(
            "{} is stale: rerun this test with SMARTER_UPDATE_PROTO=1 to regenerate it",
            committed.display()
        )
        .into());
    }
    Ok(true)
}
