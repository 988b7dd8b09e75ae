//! Flags shared by every SMARTER binary, flattened into each service's clap
//! parser with `#[command(flatten)]`.

use std::path::{Path, PathBuf};

/// `--config`, `--check-config` and `--log-level`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Path of the TOML config file. Without it the service's default path is
    /// read when it exists, else the built-in defaults apply.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the config (file, syntax, fields, values), print the result
    /// and exit: 0 when it is usable, 1 when it is not.
    #[arg(long)]
    pub check_config: bool,

    /// Log filter, e.g. `info` or `debug`; RUST_LOG overrides it.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
}

impl CommonArgs {
    /// The config path given on the command line, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

/// What `main` should do after the config was handled.
#[derive(Debug)]
pub enum Startup<T> {
    /// `--check-config` was given and the config is valid: exit 0.
    Checked,
    /// Run the service with this config.
    Run(T),
}

/// Load the config named by `args` (or `default_path`, or built-in
/// defaults), and handle `--check-config` by printing one line to stdout.
pub fn startup<T>(
    args: &CommonArgs,
    default_path: &Path,
) -> Result<Startup<T>, crate::config::ConfigError>
where
    T: serde::de::DeserializeOwned + crate::config::Validate + Default,
{
    let config = crate::config::load_or_default(args.config_path(), default_path)?;
    if args.check_config {
        let shown = args.config_path().unwrap_or(default_path);
        if args.config_path().is_none() && !default_path.exists() {
            println!(
                "config OK (built-in defaults; {} does not exist)",
                shown.display()
            );
        } else {
            println!("config OK: {}", shown.display());
        }
        return Ok(Startup::Checked);
    }
    Ok(Startup::Run(config))
}

/// SIGHUP: load the config again as [`startup`] did. A config that does not
/// load is logged with its reason (`new config rejected`) and `None` is
/// returned, so the caller keeps running the old one.
pub fn reload<T>(args: &CommonArgs, default_path: &Path) -> Option<T>
where
    T: serde::de::DeserializeOwned + crate::config::Validate + Default,
{
    match crate::config::load_or_default(args.config_path(), default_path) {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::error!(
                error = %error_line(&e),
                "SIGHUP: new config rejected; still running the old one"
            );
            None
        }
    }
}

/// Turn `main`'s result into an exit code, printing the error chain on one
/// line prefixed by the program name (see [`error_line`]).
pub fn exit_code<E>(program: &str, result: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {}", error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: root cause`.
///
/// Many of our error types name their source in their own message
/// (`config X: cannot read: No such file`) so that `Display` alone is useful;
/// a cause whose text already ends the line is therefore not repeated.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let read = ConfigError::Read {
            path: "/etc/smarter/dns.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let line = error_line(&read);
        assert_eq!(
            line,
            format!(
                "config /etc/smarter/dns.toml: cannot read: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )
        );
        assert_eq!(line.matches("not found").count(), 1, "{line}");
    }

    #[test]
    fn causes_not_in_the_message_are_appended() {
        #[derive(Debug, thiserror::Error)]
        #[error("starting the server")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("address in use"));
        assert_eq!(error_line(&e), "starting the server: address in use");
    }
}
