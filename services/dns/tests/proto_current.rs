//! The committed generated gRPC code (`src/proto/runtime.v1.rs`) must be
//! what `tonic-prost-build` makes from `proto/cri_runtime_v1.proto` today.
//! Set `SMARTER_UPDATE_PROTO=1` to rewrite it.

use std::path::Path;

#[test]
fn generated_code_is_current() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = root.join("proto/cri_runtime_v1.proto");
    let committed = root.join("src/proto/runtime.v1.rs");
    if !Path::new("/usr/bin/protoc").exists() && std::env::var_os("PROTOC").is_none() {
        println!("SKIP: protoc not installed (Debian protobuf-compiler); cannot regenerate");
        return Ok(());
    }
    let out = tempfile::tempdir()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_protos(&[&proto], &[&root.join("proto")])?;
    let fresh = std::fs::read_to_string(out.path().join("runtime.v1.rs"))?;
    if std::env::var_os("SMARTER_UPDATE_PROTO").is_some() {
        std::fs::write(&committed, &fresh)?;
        return Ok(());
    }
    let old = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        old == fresh,
        "{} is stale; run SMARTER_UPDATE_PROTO=1 cargo test -p smarter-dns --test proto_current",
        committed.display()
    );
    Ok(())
}
