//! Message authentication: HMAC-SHA256 with a key shared by every node of the sync group.
//!
//! The trailer of every [`SyncMessage`](super::wire::SyncMessage) is the HMAC of all bytes before it. Receivers
//! verify it before looking at anything but the framing, and compare in constant time (`hmac`'s
//! `verify_slice`), so a forger learns nothing from how fast a guess is refused.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the trailer (a full, untruncated HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// Shortest accepted key: as long as the hash output, so the key is never the weak point.
pub const MIN_KEY_LEN: usize = 32;

/// The key is unusable.
#[derive(Debug)]
pub enum KeyError {
    /// The key file could not be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The key is shorter than [`MIN_KEY_LEN`] bytes (after trailing whitespace is stripped).
    TooShort {
        /// Where the key came from.
        source: String,
        /// Its length.
        len: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read { path, error } => write!(f, "ha.sync.auth_key_file {path}: cannot read: {error}"),
            KeyError::TooShort { source, len } => write!(
                f,
                "{source}: key is {len} bytes, at least {MIN_KEY_LEN} are required \
                 (e.g. `head -c 48 /dev/urandom | base64 > FILE`)"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// The shared key, ready to sign and verify (the keyed HMAC state is computed once and cloned per message).
#[derive(Clone)]
pub struct AuthKey {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

impl AuthKey {
    /// A key from raw bytes; at least [`MIN_KEY_LEN`] of them.
    pub fn from_bytes(key: &[u8]) -> Result<AuthKey, KeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                source: "ha.sync key".into(),
                len: key.len(),
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Ok(AuthKey { mac })
    }

    /// The key in the file at `path` (config `auth_key_file`): its bytes with trailing whitespace (a final
    /// newline) stripped, at least [`MIN_KEY_LEN`] of them. Any content works; random bytes, base64 or hex
    /// text all do, as long as every node reads the same file.
    pub fn load(path: &Path) -> Result<AuthKey, KeyError> {
        let data = std::fs::read(path).map_err(|error| KeyError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let end = data.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        AuthKey::from_bytes(&data[..end]).map_err(|e| match e {
            KeyError::TooShort { len, .. } => KeyError::TooShort {
                source: format!("ha.sync.auth_key_file {}", path.display()),
                len,
            },
            other => other,
        })
    }

    /// The HMAC of `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the HMAC of `data` (constant-time comparison).
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_6_long_key() {
        // RFC 4231 case 6 (131-byte key of 0xaa): exercises the hashed-key path.
        let key = AuthKey::from_bytes(&[0xaa; 131]).unwrap();
        let tag = key.sign(b"Test Using Larger Than Block-Size Key - Hash Key First");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        assert!(key.verify(b"Test Using Larger Than Block-Size Key - Hash Key First", &tag));
        assert!(!key.verify(b"Test Using Larger Than Block-Size Key - Hash Key Firsu", &tag));
        assert!(!key.verify(b"Test Using Larger Than Block-Size Key - Hash Key First", &tag[..31]));
    }

    #[test]
    fn short_keys_are_refused_and_files_are_trimmed() {
        assert!(matches!(
            AuthKey::from_bytes(&[1; 31]),
            Err(KeyError::TooShort { len: 31, .. })
        ));
        let dir = std::env::temp_dir().join(format!("xlb-ha-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, format!("{}\n", "k".repeat(32))).unwrap();
        let from_file = AuthKey::load(&path).unwrap();
        let direct = AuthKey::from_bytes("k".repeat(32).as_bytes()).unwrap();
        assert_eq!(from_file.sign(b"x"), direct.sign(b"x"));
        std::fs::write(&path, format!("{}\n\n", "k".repeat(31))).unwrap();
        let err = AuthKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("auth_key_file") && err.contains("31 bytes"), "{err}");
        let err = AuthKey::load(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
