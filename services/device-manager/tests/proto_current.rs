//! The committed generated gRPC code (`src/proto/v1beta1.rs`) must be what
//! `tonic-prost-build` makes from `proto/deviceplugin_v1beta1.proto` today.
//! Set `SMARTER_UPDATE_PROTO=1` to rewrite it.

use std::path::Path;

#[test]
fn generated_code_is_current() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    smarter_common::generated::check_current_with(
        &root.join("proto/deviceplugin_v1beta1.proto"),
        &root.join("proto"),
        "v1beta1.rs",
        &root.join("src/proto/v1beta1.rs"),
        // Small message buffers: see `SmallCodec`.
        |b| b.codec_path("crate::proto::SmallCodec"),
    )?;
    Ok(())
}
