//! Golden files under testdata/: every `*.toml` either renders to its
//! `<name>.config.yaml` or (for `bad-*.toml`) fails with the message in
//! `<name>.error`. `SMARTER_BLESS=1 cargo test -p smarter-provision --test
//! golden` rewrites the expected files after a deliberate change.

// Helpers outside #[test] functions may panic too: this file is test code.
#![cfg(test)]

use std::path::{Path, PathBuf};

use smarter_provision::{apply, file, render};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn compare(expected_path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("SMARTER_BLESS").is_some() {
        if let Err(e) = std::fs::write(expected_path, actual) {
            failures.push(format!("cannot write {}: {e}", expected_path.display()));
        }
        return;
    }
    match std::fs::read_to_string(expected_path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs:\n--- expected\n{expected}\n--- actual\n{actual}",
            expected_path.display()
        )),
        Err(e) => failures.push(format!("{}: {e}", expected_path.display())),
    }
}

#[test]
fn golden_files() {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(testdata())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    inputs.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    inputs.sort();
    assert!(
        inputs.len() >= 10,
        "testdata has too few inputs: {inputs:?}"
    );
    let mut failures = Vec::new();
    for input in &inputs {
        let name = input
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let bytes = std::fs::read(input).unwrap_or_default();
        // Messages name the file as the gateway sees it.
        let shown = Path::new("/boot").join(file::FILE_NAME);
        let parsed = file::parse(&shown, &String::from_utf8_lossy(&bytes));
        match (name.starts_with("bad-"), parsed) {
            (true, Err(e)) => {
                let msg = format!("{e}\n");
                assert!(
                    !msg.contains("K10x::server:y"),
                    "{name}: token leaked: {msg}"
                );
                compare(
                    &testdata().join(format!("{name}.error")),
                    &msg,
                    &mut failures,
                );
            }
            (true, Ok(p)) => failures.push(format!("{name}: unexpectedly valid: {p:?}")),
            (false, Ok(p)) => {
                let yaml = render::k3s_config(&p, &apply::sha256_hex(&bytes));
                compare(
                    &testdata().join(format!("{name}.config.yaml")),
                    &yaml,
                    &mut failures,
                );
            }
            (false, Err(e)) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
