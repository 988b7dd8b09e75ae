//! The committed generated gRPC code must be what `tonic-prost-build` makes
//! from `proto/deviceplugin_v1beta1.proto` today: the messages
//! (`src/proto/v1beta1.rs`, prost only: the service is served by
//! smarter-h2, so the library needs no tonic), and the tonic client and
//! server the kubelet double uses (`tests/support/v1beta1_grpc.rs`, over
//! the library's messages). Set `SMARTER_UPDATE_PROTO=1` to rewrite them.

use std::path::Path;

#[test]
fn generated_messages_are_current() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    smarter_test_support::generated::check_current_with(
        &root.join("proto/deviceplugin_v1beta1.proto"),
        &root.join("proto"),
        "v1beta1.rs",
        &root.join("src/proto/v1beta1.rs"),
        |b| b.build_client(false).build_server(false),
    )?;
    Ok(())
}

#[test]
fn generated_test_services_are_current() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    smarter_test_support::generated::check_current_with(
        &root.join("proto/deviceplugin_v1beta1.proto"),
        &root.join("proto"),
        "v1beta1.rs",
        &root.join("tests/support/v1beta1_grpc.rs"),
        |b| b.extern_path(".v1beta1", "::smarter_device_manager::proto::v1beta1"),
    )?;
    Ok(())
}
