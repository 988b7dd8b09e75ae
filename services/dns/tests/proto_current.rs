//! The committed generated gRPC code (`src/proto/runtime.v1.rs`) must be
//! what `tonic-prost-build` makes from `proto/cri_runtime_v1.proto` today.
//! Set `SMARTER_UPDATE_PROTO=1` to rewrite it.

use std::path::Path;

#[test]
fn generated_code_is_current() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    smarter_test_support::generated::check_current(
        &root.join("proto/cri_runtime_v1.proto"),
        &root.join("proto"),
        "runtime.v1.rs",
        &root.join("src/proto/runtime.v1.rs"),
    )?;
    Ok(())
}
