//! Keys, signatures and trust.
//!
//! Keys are ed25519 in PEM, as `openssl genpkey -algorithm ed25519` writes
//! them (PKCS#8 private key, SPKI public key). A key id is the hex SHA-256 of
//! the raw 32-byte public key. Signatures are checked with `verify_strict`, and
//! a threshold counts each trusted key id once, however often it signed.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The hex SHA-256 of a raw ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(crate::canonical::sha256_hex(key.as_bytes()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key is trusted to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Signs bundles and channel pointers (CI).
    Publisher,
    /// Signs region pins (region operators).
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Publisher => "publisher",
            Role::Operator => "operator",
        })
    }
}

/// One detached signature: who signed and the 64-byte signature in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// The signer's key id.
    pub key_id: KeyId,
    /// The ed25519 signature, 128 lower-case hex digits.
    pub sig: String,
}

/// Signs `message` with every key, in order.
pub fn sign(keys: &[SigningKey], message: &[u8]) -> Vec<SignatureEntry> {
    keys.iter()
        .map(|k| SignatureEntry {
            key_id: KeyId::of(&k.verifying_key()),
            sig: hex::encode(k.sign(message).to_bytes()),
        })
        .collect()
}

/// Why signatures were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A trusted key's signature is malformed or does not match: the signed
    /// bytes were altered.
    #[error(
        "signature by trusted {role} key {key_id} does not verify: the signed bytes were altered or the signature is corrupt"
    )]
    BadSignature {
        /// The role being checked.
        role: Role,
        /// The key whose signature failed.
        key_id: KeyId,
    },
    /// Too few distinct trusted keys signed.
    #[error(
        "{valid} valid signature(s) by trusted {role} keys, {required} required ({untrusted} signature(s) by keys not trusted as {role}); sign with a trusted key, or trust its public key (an agent's trusted_keys, a publisher's --trusted-key); a snapshot that only a retired key signed comes back with `rollback --to N`, which signs its content again"
    )]
    ThresholdNotMet {
        /// The role being checked.
        role: Role,
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// The role's threshold.
        required: usize,
        /// Signatures by keys not trusted for this role.
        untrusted: usize,
    },
}

/// The public keys an agent trusts, by role, and each role's threshold.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<(Role, KeyId, VerifyingKey)>,
    publisher_threshold: usize,
    operator_threshold: usize,
}

impl TrustedKeys {
    /// An empty trust set with the given thresholds (each at least 1).
    pub fn new(publisher_threshold: usize, operator_threshold: usize) -> Self {
        Self {
            keys: Vec::new(),
            publisher_threshold: publisher_threshold.max(1),
            operator_threshold: operator_threshold.max(1),
        }
    }

    /// The trust a publisher command reads the channel with: the signing
    /// keys' public halves and any other trusted publisher keys (the
    /// previous key, during a rotation), thresholds 1.
    pub fn for_publisher(keys: &[SigningKey], trusted: &[VerifyingKey]) -> Self {
        let mut trust = Self::new(1, 1);
        for key in keys
            .iter()
            .map(SigningKey::verifying_key)
            .chain(trusted.iter().copied())
        {
            trust.add(Role::Publisher, key);
        }
        trust
    }

    /// Trusts `key` for `role`.
    pub fn add(&mut self, role: Role, key: VerifyingKey) {
        self.keys.push((role, KeyId::of(&key), key));
    }

    /// Number of distinct keys trusted for `role` (a key listed twice
    /// counts once, as it does in a threshold).
    pub fn count(&self, role: Role) -> usize {
        self.keys
            .iter()
            .filter(|(r, ..)| *r == role)
            .map(|(_, id, _)| id)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// A key id trusted for both roles, if any.
    pub fn in_both_roles(&self) -> Option<&KeyId> {
        self.keys.iter().find_map(|(role, id, _)| {
            (*role == Role::Publisher
                && self
                    .keys
                    .iter()
                    .any(|(r, other, _)| *r == Role::Operator && other == id))
            .then_some(id)
        })
    }

    /// Every trusted (role, key id) and the thresholds, in a stable order:
    /// what tells a changed trust set from the same one read again.
    pub fn summary(&self) -> (Vec<(Role, KeyId)>, usize, usize) {
        let mut keys: Vec<_> = self
            .keys
            .iter()
            .map(|(r, id, _)| (*r, id.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        (keys, self.publisher_threshold, self.operator_threshold)
    }

    /// The threshold of `role`.
    pub fn threshold(&self, role: Role) -> usize {
        match role {
            Role::Publisher => self.publisher_threshold,
            Role::Operator => self.operator_threshold,
        }
    }

    /// Checks that a threshold of distinct keys trusted for `role` signed
    /// `message`; returns the ids that did. A bad signature by a trusted key
    /// refuses the whole document.
    pub fn verify(
        &self,
        role: Role,
        message: &[u8],
        sigs: &[SignatureEntry],
    ) -> Result<Vec<KeyId>, SignatureError> {
        let required = match role {
            Role::Publisher => self.publisher_threshold,
            Role::Operator => self.operator_threshold,
        };
        let mut valid = BTreeSet::new();
        let mut untrusted = 0;
        for entry in sigs {
            let Some((_, id, key)) = self
                .keys
                .iter()
                .find(|(r, id, _)| *r == role && *id == entry.key_id)
            else {
                untrusted += 1;
                continue;
            };
            let bad = || SignatureError::BadSignature {
                role,
                key_id: id.clone(),
            };
            let bytes: [u8; 64] = hex::decode(&entry.sig)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            key.verify_strict(message, &Signature::from_bytes(&bytes))
                .map_err(|_| bad())?;
            valid.insert(id.clone());
        }
        if valid.len() < required {
            return Err(SignatureError::ThresholdNotMet {
                role,
                valid: valid.len(),
                required,
                untrusted,
            });
        }
        Ok(valid.into_iter().collect())
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A private key readable by group or others.
    #[error(
        "{path}: private key is readable by group or others (mode {mode:o}); run chmod 600 {path}"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not an ed25519 key in the expected PEM form.
    #[error(
        "{path}: not an ed25519 {what} in PEM ({reason}); generate one with `strata-publisher keygen --out KEY` or `openssl genpkey -algorithm ed25519`"
    )]
    Pem {
        /// The key file.
        path: PathBuf,
        /// "private key (PKCS#8)" or "public key (SPKI)".
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A key of the other kind: a public key where a private one is
    /// needed, or the reverse.
    #[error("{path}: {found}; {expected}")]
    WrongKind {
        /// The key file.
        path: PathBuf,
        /// What the file holds.
        found: &'static str,
        /// What was asked for, and which file that is.
        expected: &'static str,
    },
    /// keygen refuses to overwrite a key.
    #[error("{path} already exists; keygen never overwrites a key, choose another --out")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
}

/// Loads a private key, refusing one readable by group or others.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::WrongKind {
            path: path.to_owned(),
            found: "not a file",
            expected: "give the private key file `strata-publisher keygen --out KEY` wrote",
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    let public = || KeyError::WrongKind {
        path: path.to_owned(),
        found: "this is a public key",
        expected: "signing takes the private key (KEY, not KEY.pub)",
    };
    if mode & 0o077 != 0 {
        // A public key is readable by anyone, and `chmod 600` is not
        // the fix for it.
        if read_key_file(path).is_ok_and(|t| is_public_only(&t)) {
            return Err(public());
        }
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = read_key_file(path).map_err(io)?;
    if is_public_only(&pem) {
        return Err(public());
    }
    SigningKey::from_pkcs8_pem(private_block(&pem))
        .map_err(|e| pem_error(path, "private key (PKCS#8)", &pem, e))
}

/// The private key's PEM block of `pem`, as openssl reads it: a file may
/// also hold the public half (`cat KEY KEY.pub`).
fn private_block(pem: &str) -> &str {
    const END: &str = "-----END PRIVATE KEY-----";
    pem.find(PRIVATE_PEM)
        .and_then(|start| {
            let end = start + pem[start..].find(END)? + END.len();
            pem.get(start..end)
        })
        .unwrap_or(pem)
}

/// The first line of an SPKI public key in PEM.
const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----";
/// The first line of a PKCS#8 private key in PEM.
const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----";

/// Whether PEM text holds a public key and no private one.
fn is_public_only(pem: &str) -> bool {
    pem.contains(PUBLIC_PEM) && !pem.contains(PRIVATE_PEM)
}

/// A key file that did not parse: a file that is no PEM at all is said
/// so, rather than with the parser's view of its first bytes.
fn pem_error(path: &Path, what: &'static str, text: &str, e: impl std::fmt::Display) -> KeyError {
    let reason = if text.contains("-----BEGIN ") {
        e.to_string()
    } else {
        "no -----BEGIN line: not a PEM file".to_owned()
    };
    KeyError::Pem {
        path: path.to_owned(),
        what,
        reason,
    }
}

/// Reads a private key from the environment variable `name`, which holds
/// its PEM text (a CI secret, so that it is never written to disk).
pub fn signing_key_from_env(name: &str) -> Result<SigningKey, KeyError> {
    let path = PathBuf::from(format!("${name}"));
    let pem = std::env::var(name).map_err(|e| KeyError::Io {
        path: path.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{e}; set it to the key's PEM text (-----BEGIN PRIVATE KEY-----…)"),
        ),
    })?;
    if is_public_only(&pem) {
        return Err(KeyError::WrongKind {
            path,
            found: "this is a public key",
            expected: "signing takes the private key's PEM text (KEY, not KEY.pub)",
        });
    }
    SigningKey::from_pkcs8_pem(private_block(&pem))
        .map_err(|e| pem_error(&path, "private key (PKCS#8)", &pem, e))
}

/// A PEM key file's text: a regular file, read non-blocking, at most
/// [`crate::localfile::MAX_KEY_BYTES`] (a 2 GB file is refused before it is read).
fn read_key_file(path: &Path) -> std::io::Result<String> {
    crate::localfile::read_text(path, crate::localfile::MAX_KEY_BYTES)
}

/// Loads a public key.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read_key_file(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    if pem.contains(PRIVATE_PEM) {
        return Err(KeyError::WrongKind {
            path: path.to_owned(),
            found: "this is a private key",
            expected: "trust takes the public key (KEY.pub); keep the private key off the nodes",
        });
    }
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| pem_error(path, "public key (SPKI)", &pem, e))
}

/// Generates a key pair: `out` (mode 0600) and `out.pub`. Never overwrites.
pub fn generate_key(out: &Path) -> Result<KeyId, KeyError> {
    let key = SigningKey::generate(&mut rand::rng());
    write_key_pair(out, &key)?;
    Ok(KeyId::of(&key.verifying_key()))
}

/// Writes `key` to `out` (0600, created exclusively) and its public half to `out.pub`.
pub fn write_key_pair(out: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let pub_path = public_path(out);
    for p in [out, pub_path.as_path()] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.to_owned() });
        }
    }
    let pem_err = |what, e: &dyn fmt::Display| KeyError::Pem {
        path: out.to_owned(),
        what,
        reason: e.to_string(),
    };
    // PKCS#8 v1 without the optional public key: what openssl writes, and
    // what OpenSSL 3.0 reads back.
    let keypair = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private = keypair
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| pem_err("private key (PKCS#8)", &e))?;
    let public = public_pem(&key.verifying_key()).map_err(|e| pem_err("public key (SPKI)", &e))?;
    let write = |path: &Path, mode: u32, text: &str| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write(out, 0o600, private.as_str()).map_err(|source| KeyError::Io {
        path: out.to_owned(),
        source,
    })?;
    write(&pub_path, 0o644, &public).map_err(|source| KeyError::Io {
        path: pub_path.clone(),
        source,
    })
}

/// A public key as an SPKI PEM file holds it (`-----BEGIN PUBLIC KEY-----`).
pub fn public_pem(key: &VerifyingKey) -> Result<String, impl std::error::Error + use<>> {
    key.to_public_key_pem(LineEnding::LF)
}

/// `KEY` → `KEY.pub`.
pub fn public_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn threshold_counts_distinct_keys_once() {
        let (a, b) = (key(1), key(2));
        let mut trust = TrustedKeys::new(2, 1);
        trust.add(Role::Publisher, a.verifying_key());
        trust.add(Role::Publisher, b.verifying_key());
        let twice_a = sign(&[a.clone(), a.clone()], b"m");
        assert!(matches!(
            trust.verify(Role::Publisher, b"m", &twice_a),
            Err(SignatureError::ThresholdNotMet {
                valid: 1,
                required: 2,
                ..
            })
        ));
        let both = sign(&[a, b], b"m");
        assert_eq!(
            trust.verify(Role::Publisher, b"m", &both).map(|v| v.len()),
            Ok(2)
        );
    }

    #[test]
    fn roles_are_separate_and_tampering_is_caught() {
        let a = key(1);
        let mut trust = TrustedKeys::new(1, 1);
        trust.add(Role::Operator, a.verifying_key());
        let sigs = sign(std::slice::from_ref(&a), b"m");
        assert!(matches!(
            trust.verify(Role::Publisher, b"m", &sigs),
            Err(SignatureError::ThresholdNotMet { untrusted: 1, .. })
        ));
        assert!(matches!(
            trust.verify(Role::Operator, b"M", &sigs),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn keygen_writes_0600_and_refuses_open_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ci.key");
        let id = generate_key(&path).expect("keygen");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sk = load_signing_key(&path).expect("load private");
        let pk = load_verifying_key(&public_path(&path)).expect("load public");
        assert_eq!(KeyId::of(&pk), id);
        assert_eq!(sk.verifying_key(), pk);
        assert!(matches!(generate_key(&path), Err(KeyError::Exists { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            load_signing_key(&path),
            Err(KeyError::TooOpen { mode: 0o640, .. })
        ));
    }

    #[test]
    fn a_key_of_the_other_kind_or_no_pem_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ci.key");
        generate_key(&path).expect("keygen");
        let public = public_path(&path);
        // Readable by all, as public keys are: still "a public key", not "chmod 600".
        for mode in [0o644, 0o600] {
            fs::set_permissions(&public, fs::Permissions::from_mode(mode)).expect("chmod");
            let e = load_signing_key(&public).expect_err("a public key");
            assert!(e.to_string().contains("this is a public key"), "{e}");
        }
        let e = load_verifying_key(&path).expect_err("a private key");
        assert!(e.to_string().contains("this is a private key"), "{e}");
        // Both halves in one file, as `cat KEY KEY.pub` makes: the private key.
        let both = dir.path().join("both.pem");
        let text =
            fs::read_to_string(&path).expect("key") + &fs::read_to_string(&public).expect("pub");
        fs::write(&both, text).expect("write");
        fs::set_permissions(&both, fs::Permissions::from_mode(0o600)).expect("chmod");
        load_signing_key(&both).expect("the private key of both halves");
        let e = load_signing_key(dir.path()).expect_err("a directory");
        assert!(e.to_string().contains("not a file"), "{e}");
        let junk = dir.path().join("junk.pub");
        fs::write(&junk, "not a key\n").expect("write");
        let e = load_verifying_key(&junk).expect_err("junk");
        assert!(e.to_string().contains("not a PEM file"), "{e}");
    }
}
