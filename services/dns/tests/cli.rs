//! What a new user sees from the real binary when the config file is not
//! there or is not a file: one line naming the file, the OS reason once.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smarter-dns");

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn stderr_of(args: &[&str]) -> Result<(Option<i32>, String), std::io::Error> {
    let out = Command::new(BIN).args(args).output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn missing_config_file_names_it_and_the_os_reason_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("dns.toml");
    let missing = missing.to_string_lossy();
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    let want = format!("smarter-dns: error: config {missing}: cannot read: {enoent}\n");
    for args in [
        vec!["--config", &*missing],
        vec!["--check-config", "--config", &*missing],
        vec!["--config", &*missing, "records"],
    ] {
        let (code, err) = stderr_of(&args)?;
        eprintln!("{args:?} -> {err}");
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err, want, "{args:?}");
    }

    let as_dir = dir.path().to_string_lossy();
    let eisdir = std::io::Error::from_raw_os_error(libc::EISDIR).to_string();
    let (code, err) = stderr_of(&["--config", &as_dir])?;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!("smarter-dns: error: config {as_dir}: cannot read: {eisdir}\n")
    );
    Ok(())
}
