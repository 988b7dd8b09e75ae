//! The desired bundle: which OS version the fleet owner wants on this gateway.
//!
//! It is a small TOML file, the one key of a ConfigMap mounted into the
//! update agent's pod (default `/etc/smarter/update/desired.toml`):
//!
//! ```toml
//! version = "2026.12.1"
//! url = "https://updates.example.com/smarter-qemuarm64-2026.12.1.raucb"
//! size = 73400320
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! TOML like every other SMARTER file, with `deny_unknown_fields`, so a typo
//! (`sha265 = ...`) is an error naming the file and field instead of a
//! silently ignored key. All four keys are required: the agent never fetches
//! or installs a bundle whose size and hash it was not told.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use smarter_common::config::{ConfigError, Invalid, Validate};

/// Default path of the desired-bundle file (the ConfigMap's mount).
pub const DEFAULT_DESIRED_PATH: &str = "/etc/smarter/update/desired.toml";

/// A SHA-256 digest, parsed from and shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parse 64 hex digits (either case).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| format!("{text:?} is not 64 hex digits (a SHA-256)"))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::try_from(text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The bundle the gateway should run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// The bundle's version, as RAUC reports it for the installed slot
    /// (the bundle manifest's `version`).
    pub version: String,
    /// Where to fetch the bundle: `http://` or `https://`.
    pub url: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The bundle's SHA-256.
    pub sha256: Sha256Digest,
}

/// The largest bundle accepted (64 GiB): a size above it is a typo.
pub const MAX_BUNDLE_SIZE: u64 = 64 << 30;

impl Validate for Desired {
    fn validate(&self) -> Result<(), Invalid> {
        if self.version.is_empty()
            || self.version.len() > 128
            || self
                .version
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Invalid::new(
                "version",
                &self.version,
                "must be 1 to 128 characters without spaces, as in the bundle's manifest",
            ));
        }
        if let Err(reason) = check_url(&self.url) {
            return Err(Invalid::new("url", &self.url, reason));
        }
        if self.size == 0 || self.size > MAX_BUNDLE_SIZE {
            return Err(Invalid::new(
                "size",
                self.size,
                "must be the bundle's size in bytes, 1 to 64 GiB",
            ));
        }
        Ok(())
    }
}

/// Whether `url` is one the downloader can fetch: `http://` or `https://`,
/// a host, no spaces.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err("must name a host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces (percent-encode them)");
    }
    Ok(())
}

impl Desired {
    /// Read and check the desired-bundle file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        smarter_common::config::load(path)
    }

    /// Parse and check the text of a desired-bundle file; `path` is only
    /// used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        smarter_common::config::parse(path, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<Desired, String> {
        Desired::parse(Path::new("/etc/smarter/update/desired.toml"), text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_complete_file_parses() {
        let d = parse(&format!(
            "version = \"2026.12.1\"\nurl = \"http://10.0.0.1:8000/b.raucb\"\nsize = 1234\nsha256 = \"{}\"\n",
            SHA.to_uppercase()
        ));
        let d = d.ok();
        assert_eq!(
            d.as_ref().map(|d| d.sha256.to_string()),
            Some(SHA.to_string())
        );
        assert_eq!(d.map(|d| d.size), Some(1234));
    }

    #[test]
    fn bad_values_name_file_field_and_value() {
        let base =
            format!("version = \"1\"\nurl = \"http://h/b\"\nsize = 10\nsha256 = \"{SHA}\"\n");
        let e = parse(&base.replace(SHA, "abc")).err().unwrap_or_default();
        assert!(e.contains("/etc/smarter/update/desired.toml"), "{e}");
        assert!(e.contains("sha256") && e.contains("\"abc\""), "{e}");
        let e = parse(&base.replace("http://h/b", "ftp://h/b"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("field `url`") && e.contains("ftp://h/b"), "{e}");
        let e = parse(&base.replace("size = 10", "size = 0"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("field `size`"), "{e}");
        let e = parse(&base.replace("version = \"1\"", "version = \"a b\""))
            .err()
            .unwrap_or_default();
        assert!(e.contains("field `version`"), "{e}");
        let e = parse(&format!("{base}sha265 = \"x\"\n"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("sha265"), "{e}");
        let e = parse("version = \"1\"\n").err().unwrap_or_default();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn urls() {
        assert!(check_url("https://u.example.com/x.raucb").is_ok());
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http:///x").is_err());
        assert!(check_url("http://:80/x").is_err());
        assert!(check_url("file:///x").is_err());
        assert!(check_url("http://h/a b").is_err());
    }
}
