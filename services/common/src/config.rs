//! TOML configuration loading and validation.
//!
//! Every service describes its config as a `serde` struct with
//! `#[serde(deny_unknown_fields)]` and defaults, and implements [`Validate`]
//! for the checks serde cannot express (ranges, paths, CIDRs). [`load`] then
//! turns any failure into a [`ConfigError`] whose `Display` is one line naming
//! the file, the line and column where known, the field path and the value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A value that failed a semantic check after it parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the field, e.g. `rules[2].name`.
    pub field: String,
    /// The offending value as the user wrote it (or its Display form).
    pub value: String,
    /// Why it is wrong, phrased so the user knows what to write instead.
    pub reason: String,
}

impl Invalid {
    /// Build an [`Invalid`] from anything printable.
    pub fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field `{}`: invalid value {:?}: {}",
            self.field, self.value, self.reason
        )
    }
}

/// Semantic checks run after a config parses. The default accepts anything.
pub trait Validate {
    /// Return the first problem found, naming its field.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// Why a config could not be used. `Display` is a single line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, a directory...).
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not match the schema.
    #[error("config {path}{location}: {field}{message}", location = fmt_location(*line, *column), field = fmt_field(field))]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// 1-based line of the problem, when the parser knows it.
        line: Option<usize>,
        /// 1-based column of the problem, when the parser knows it.
        column: Option<usize>,
        /// Dotted path of the field involved, when known.
        field: Option<String>,
        /// The parser's message, flattened to one line.
        message: String,
    },
    /// The file parsed but a value is not acceptable.
    #[error("config {path}: {invalid}")]
    Invalid {
        /// The file being checked.
        path: PathBuf,
        /// What is wrong and where.
        invalid: Invalid,
    },
}

fn fmt_location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn fmt_field(field: &Option<String>) -> String {
    match field {
        Some(f) if !f.is_empty() && f != "." => format!("field `{f}`: "),
        _ => String::new(),
    }
}

/// Read, parse and validate the TOML config at `path`.
pub fn load<T>(path: &Path) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Load `path` when given; otherwise load `default_path` if that file exists,
/// else use `T::default()`. An explicitly given file must exist.
pub fn load_or_default<T>(path: Option<&Path>, default_path: &Path) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate + Default,
{
    match path {
        Some(p) => load(p),
        None if default_path.exists() => load(default_path),
        None => {
            let value = T::default();
            value.validate().map_err(|invalid| ConfigError::Invalid {
                path: PathBuf::from("<built-in defaults>"),
                invalid,
            })?;
            Ok(value)
        }
    }
}

/// Parse and validate TOML text; `path` is only used in error messages.
pub fn parse<T>(path: &Path, text: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let de = toml::Deserializer::parse(text).map_err(|e| parse_error(path, text, &e, None))?;
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        parse_error(path, text, e.inner(), Some(field))
    })?;
    value.validate().map_err(|invalid| ConfigError::Invalid {
        path: path.to_path_buf(),
        invalid,
    })?;
    Ok(value)
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error, field: Option<String>) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    // toml's messages are multi-line with a source excerpt; keep the first line.
    let message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .to_string();
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        port: u16,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        name: String,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), Invalid> {
            if self.port == 1 {
                return Err(Invalid::new("port", self.port, "must not be 1"));
            }
            Ok(())
        }
    }

    fn err(text: &str) -> String {
        match parse::<Sample>(Path::new("/etc/x.toml"), text) {
            Ok(v) => format!("unexpectedly parsed: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = err("port = 5\n[inner]\nnmae = \"x\"\n");
        assert!(e.starts_with("config /etc/x.toml:3:1: "), "{e}");
        assert!(e.contains("nmae"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn wrong_type_names_field() {
        let e = err("port = \"eighty\"\n");
        assert!(e.contains("/etc/x.toml:1:8"), "{e}");
        assert!(e.contains("field `port`"), "{e}");
    }

    #[test]
    fn bad_syntax_names_line() {
        let e = err("port = 5\nport = = 6\n");
        assert!(e.starts_with("config /etc/x.toml:2:"), "{e}");
    }

    #[test]
    fn out_of_range_names_field() {
        let e = err("port = 70000\n");
        assert!(e.contains("field `port`"), "{e}");
    }

    #[test]
    fn validation_names_field_and_value() {
        let e = err("port = 1\n");
        assert_eq!(
            e,
            "config /etc/x.toml: field `port`: invalid value \"1\": must not be 1"
        );
    }

    #[test]
    fn missing_file_is_read_error() {
        let e = load::<Sample>(Path::new("/nonexistent/smarter.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("config /nonexistent/smarter.toml: cannot read:"),
            "{e}"
        );
    }

    #[test]
    fn defaults_when_no_file() {
        let v: Sample = load_or_default(None, Path::new("/nonexistent/default.toml"))
            .unwrap_or_else(|e| Sample {
                port: 99,
                inner: Inner {
                    name: e.to_string(),
                },
            });
        assert_eq!(v.port, 0);
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
