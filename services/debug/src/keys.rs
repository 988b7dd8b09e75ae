//! SSH keys: loading or creating our own Ed25519 key, parsing and
//! fingerprinting the public keys people give us.

use std::io::Read;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{HashAlg, PrivateKey, PublicKey};

/// Errors from key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file or string did not parse.
    #[error("invalid SSH key {what}: {message}")]
    Invalid {
        /// Which key.
        what: String,
        /// Why.
        message: String,
    },
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
pub fn parse_public(text: &str) -> Result<PublicKey, KeyError> {
    if text.trim_start().starts_with("ssh-rsa ") {
        return Err(KeyError::Invalid {
            what: "public key".into(),
            message: "RSA keys are not supported; use ssh-keygen -t ed25519 (or ecdsa)".into(),
        });
    }
    PublicKey::from_openssh(text.trim()).map_err(|e| KeyError::Invalid {
        what: "public key".into(),
        message: e.to_string(),
    })
}

/// The OpenSSH `SHA256:...` fingerprint of a public key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The key as one OpenSSH line without comment.
pub fn public_line(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().unwrap_or_default().trim().to_string()
}

/// Loads the private key at `path`, or creates a new Ed25519 key there
/// (mode 0600) with its public half in `path.pub`.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    let io = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { op, path, source }
    };
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(&text).map_err(|e| KeyError::Invalid {
            what: path.display().to_string(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating directory for"))?;
            }
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| KeyError::Invalid {
                    what: "generated key".into(),
                    message: e.to_string(),
                })?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io("creating"))?;
                f.write_all(text.as_bytes()).map_err(io("writing"))?;
            }
            std::fs::rename(&tmp, path).map_err(io("renaming into"))?;
            let mut pub_path = path.as_os_str().to_owned();
            pub_path.push(".pub");
            std::fs::write(&pub_path, public_line(key.public_key()) + "\n")
                .map_err(io("writing public key for"))?;
            Ok(key)
        }
        Err(e) => Err(io("reading")(e)),
    }
}

/// A fresh Ed25519 key from the kernel's random source.
pub fn generate() -> Result<PrivateKey, KeyError> {
    let mut seed = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|source| KeyError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), "").map_err(|e| KeyError::Invalid {
        what: "generated key".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_gives_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let line = std::fs::read_to_string(dir.path().join("k.pub")).unwrap();
        assert_eq!(parse_public(&line).unwrap(), *a.public_key());
        assert!(fingerprint(a.public_key()).starts_with("SHA256:"));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse_public("ssh-ed25519 notbase64!").is_err());
        assert!(parse_public("").is_err());
        let rsa = parse_public("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ x").unwrap_err();
        assert!(rsa.to_string().contains("ed25519"), "{rsa}");
    }
}
