//! Ed25519 release keys: secret keys as PKCS#8 PEM (mode 0600), public keys as SPKI PEM, so that
//! `openssl pkey` can read both and a bundle can be verified by hand (see docs/bundle-format.md).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// An Ed25519 secret key that signs bundles.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

/// An Ed25519 public key that a device trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

// Never print secret material, even in debug logs.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public().fingerprint())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl SigningKey {
    /// Generates a fresh key from the OS random number generator.
    pub fn generate() -> Self {
        SigningKey(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Loads a PKCS#8 PEM secret key.
    pub fn load(path: &Path) -> Result<Self> {
        let pem = fs::read_to_string(path).map_err(|e| Error::io("cannot read key", path, e))?;
        ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map(SigningKey)
            .map_err(|e| Error::KeyParse {
                path: path.to_owned(),
                reason: format!("not an Ed25519 PKCS#8 PEM secret key ({e})"),
            })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign_digest(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.0.sign(digest).to_bytes()
    }

    /// Signs exact manifest bytes, giving an entry for a bundle's signature block (for re-signing
    /// or adding a signature to an existing bundle with [`crate::format::encode_header`]).
    pub fn sign_manifest(&self, manifest_bytes: &[u8]) -> crate::format::SignatureEntry {
        crate::format::SignatureEntry {
            public_key: self.public().to_bytes(),
            signature: self.sign_digest(&crate::format::manifest_digest(manifest_bytes)),
        }
    }
}

impl PublicKey {
    /// Loads an SPKI PEM public key.
    pub fn load(path: &Path) -> Result<Self> {
        let pem = fs::read_to_string(path).map_err(|e| Error::io("cannot read key", path, e))?;
        ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
            .map(PublicKey)
            .map_err(|e| Error::KeyParse {
                path: path.to_owned(),
                reason: format!("not an Ed25519 SPKI PEM public key ({e})"),
            })
    }

    /// From the 32 raw key bytes as stored in a bundle's signature block.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .ok()
            .map(PublicKey)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// SPKI PEM text of the public key.
    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::Internal(format!("cannot encode public key as SPKI: {e}")))
    }

    /// First 16 hex characters of SHA-256 over the 32 raw public key bytes.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.0.to_bytes())
    }

    /// Strict verification rejects malleable and small-order signatures, so one valid signature
    /// cannot be turned into another valid-looking one.
    pub(crate) fn verify_digest(&self, digest: &[u8; 32], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(digest, &sig).is_ok()
    }
}

pub(crate) fn fingerprint_of(raw_public_key: &[u8; 32]) -> String {
    let mut hex = hex::encode(Sha256::digest(raw_public_key));
    hex.truncate(16);
    hex
}

/// Key names become file names: keep them to a safe character set.
fn check_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "key name",
            value: name.to_owned(),
            reason: "use letters, digits, '.', '_' and '-' only, not starting with '.'",
        })
    }
}

/// Writes a new key pair `<dir>/<name>.key` (PKCS#8 PEM, mode 0600) and `<dir>/<name>.pub` (SPKI PEM).
/// Refuses to overwrite either file: losing a release key is not recoverable.
pub fn generate_keypair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    check_key_name(name)?;
    fs::create_dir_all(dir).map_err(|e| Error::io("cannot create key directory", dir, e))?;
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::KeyExists(p.clone()));
        }
    }
    let key = SigningKey::generate();
    // PKCS#8 v1 (RFC 5208: the seed only, no public key). ed25519-dalek writes v2 (RFC 5958)
    // by default, which OpenSSL 3.0 and Python's `cryptography` refuse; every tool reads v1, and
    // the public key follows from the seed. Stays in a zeroizing buffer so the secret does not
    // linger in freed memory.
    let secret_pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.0.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| Error::Internal(format!("cannot encode secret key as PKCS#8: {e}")))?;
    let public_pem = key.public().to_pem()?;

    write_new(&secret_path, secret_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, public_pem.as_bytes(), 0o644) {
        // Do not leave half a key pair behind: the next attempt would refuse to run.
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok((secret_path, public_path))
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::KeyExists(path.to_owned())
            } else {
                Error::io("cannot create key file", path, e)
            }
        })?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("cannot write key file", path, e))
}

/// Loads every `*.pub` file in `dir` (sorted by name). A file that does not parse is an error rather
/// than skipped, so a broken key ships loudly instead of silently shrinking the trusted set.
pub fn load_trusted_keys(dir: &Path) -> Result<Vec<PublicKey>> {
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io("cannot list trusted key directory", dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot list trusted key directory", dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "pub") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let keys = paths
        .iter()
        .map(|p| PublicKey::load(p))
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        return Err(Error::NoTrustedKeys(dir.to_owned()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_load_roundtrip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = generate_keypair(dir.path(), "release").unwrap();
        assert_eq!(sk, dir.path().join("release.key"));
        assert_eq!(pk, dir.path().join("release.pub"));
        let mode = fs::metadata(&sk).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            fs::read_to_string(&sk)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert!(
            fs::read_to_string(&pk)
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        let s = SigningKey::load(&sk).unwrap();
        let p = PublicKey::load(&pk).unwrap();
        assert_eq!(s.public(), p);
        assert_eq!(p.fingerprint().len(), 16);
        assert!(p.fingerprint().bytes().all(|b| b.is_ascii_hexdigit()));
        // Debug must not leak the secret.
        assert!(!format!("{s:?}").contains(&hex::encode(s.0.to_bytes())));
    }

    /// The secret key is PKCS#8 v1 (what OpenSSL 3.0 and Python's `cryptography` read): DER
    /// `SEQUENCE { INTEGER 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING { seed } }`, 48
    /// bytes; and OpenSSL, where installed, derives the same public key from it.
    #[test]
    fn secret_key_is_pkcs8_v1_that_openssl_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = generate_keypair(dir.path(), "k").unwrap();
        let pem = fs::read_to_string(&sk).unwrap();
        let (label, der) =
            ed25519_dalek::pkcs8::spki::der::pem::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        assert_eq!(der.len(), 48, "v2 would carry the public key too");
        assert_eq!(
            &der[..16],
            &[
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20
            ]
        );
        let Ok(out) = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&sk)
            .output()
        else {
            eprintln!("openssl not installed: its half of the check skipped");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            fs::read_to_string(&pk).unwrap()
        );
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        generate_keypair(dir.path(), "k").unwrap();
        let before = fs::read(dir.path().join("k.key")).unwrap();
        assert!(matches!(
            generate_keypair(dir.path(), "k"),
            Err(Error::KeyExists(_))
        ));
        assert_eq!(fs::read(dir.path().join("k.key")).unwrap(), before);
        // Only the .pub existing also refuses, and creates no .key.
        fs::write(dir.path().join("j.pub"), "x").unwrap();
        assert!(matches!(
            generate_keypair(dir.path(), "j"),
            Err(Error::KeyExists(_))
        ));
        assert!(!dir.path().join("j.key").exists());
    }

    #[test]
    fn bad_names_and_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(generate_keypair(dir.path(), "../x").is_err());
        assert!(generate_keypair(dir.path(), "").is_err());
        let p = dir.path().join("bad.pub");
        fs::write(&p, "hello").unwrap();
        assert!(matches!(PublicKey::load(&p), Err(Error::KeyParse { .. })));
        assert!(matches!(SigningKey::load(&p), Err(Error::KeyParse { .. })));
    }

    #[test]
    fn trusted_keys_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_trusted_keys(dir.path()),
            Err(Error::NoTrustedKeys(_))
        ));
        assert!(load_trusted_keys(&dir.path().join("missing")).is_err());
        generate_keypair(dir.path(), "a").unwrap();
        generate_keypair(dir.path(), "b").unwrap();
        let keys = load_trusted_keys(dir.path()).unwrap();
        assert_eq!(keys.len(), 2, "only .pub files, not .key files");
        fs::write(dir.path().join("broken.pub"), "nope").unwrap();
        assert!(load_trusted_keys(dir.path()).is_err());
    }

    #[test]
    fn sign_verify_digest() {
        let k = SigningKey::generate();
        let d = [7u8; 32];
        let sig = k.sign_digest(&d);
        assert!(k.public().verify_digest(&d, &sig));
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(!k.public().verify_digest(&d, &bad));
        assert!(!k.public().verify_digest(&[8u8; 32], &sig));
    }
}
