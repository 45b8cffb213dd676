//! The private keys the server holds, loaded from one directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::SigningKey;

use crate::cert::KeyKind;
use crate::wire::KeyId;

/// One loaded private key. The key material stays inside `signer` and is never serialized.
pub struct KeyEntry {
    /// SHA-256 of the public key's SPKI DER.
    pub id: KeyId,
    /// File name (without directory) it was loaded from.
    pub file_name: String,
    /// Algorithm.
    pub kind: KeyKind,
    /// The rustls signing key.
    pub signer: Arc<dyn SigningKey>,
    /// Signatures made with this key.
    pub signed: AtomicU64,
    /// Sign requests for this key that were refused or failed.
    pub refused: AtomicU64,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("file", &self.file_name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The set of loaded keys, by id.
#[derive(Debug, Default)]
pub struct KeyStore {
    keys: HashMap<KeyId, Arc<KeyEntry>>,
}

/// A file in the keys directory that could not be loaded.
#[derive(Debug)]
pub struct KeyLoadError {
    /// The file.
    pub path: PathBuf,
    /// Why, in words a user can act on.
    pub reason: String,
}

impl std::fmt::Display for KeyLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl KeyStore {
    /// Loads every `*.pem` / `*.key` file of `dir` (PKCS#8, SEC1 EC or PKCS#1 RSA).
    /// Files that fail are returned with the reason; the others still load. When
    /// `previous` is given, per-key counters carry over for keys still present.
    pub fn load_dir(dir: &Path, previous: Option<&KeyStore>) -> anyhow::Result<(KeyStore, Vec<KeyLoadError>)> {
        let provider = rustls::crypto::ring::default_provider();
        let mut store = KeyStore::default();
        let mut errors = Vec::new();
        let read = std::fs::read_dir(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot read keys_dir {}: {e} (check the path and permissions)",
                dir.display()
            )
        })?;
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("pem" | "key")))
            .collect();
        paths.sort();
        for path in paths {
            match load_key(&provider, &path) {
                Ok((id, kind, signer)) => {
                    let file_name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    if let Some(other) = store.keys.get(&id) {
                        errors.push(KeyLoadError {
                            path,
                            reason: format!("same key as {} (key id {}); skipped", other.file_name, id.short()),
                        });
                        continue;
                    }
                    let old = previous.and_then(|p| p.keys.get(&id));
                    let counter = |f: fn(&KeyEntry) -> &AtomicU64| {
                        AtomicU64::new(old.map(|o| f(o).load(Ordering::Relaxed)).unwrap_or(0))
                    };
                    let entry = KeyEntry {
                        id,
                        file_name,
                        kind,
                        signer,
                        signed: counter(|e| &e.signed),
                        refused: counter(|e| &e.refused),
                    };
                    store.keys.insert(id, Arc::new(entry));
                }
                Err(reason) => errors.push(KeyLoadError { path, reason }),
            }
        }
        Ok((store, errors))
    }

    /// The key with that id.
    pub fn get(&self, id: &KeyId) -> Option<&Arc<KeyEntry>> {
        self.keys.get(id)
    }

    /// All keys, sorted by file name.
    pub fn entries(&self) -> Vec<Arc<KeyEntry>> {
        let mut v: Vec<_> = self.keys.values().cloned().collect();
        v.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        v
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn load_key(provider: &CryptoProvider, path: &Path) -> Result<(KeyId, KeyKind, Arc<dyn SigningKey>), String> {
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!("no usable private key PEM block ({e}); expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY")
    })?;
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("private key rejected: {e} (supported: RSA, ECDSA P-256/P-384, Ed25519)"))?;
    let spki = signer.public_key().ok_or("the key does not expose its public key")?;
    let kind = KeyKind::from_spki(spki.as_ref()).ok_or("unrecognised public key algorithm")?;
    Ok((KeyId::from_spki(spki.as_ref()), kind, signer))
}
