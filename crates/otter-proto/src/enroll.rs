//! Proof of key possession at enrollment: the device signs the server's challenge together with
//! its public key, `compatible`, name, OS version and enrollment key (hashed), so a captured
//! signature cannot enroll another key or board nor change what the server records.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::EnrollRequest;

/// The bytes a device signs (v2): every field the server stores from an enrollment request.
///
/// ```text
/// otter-enroll-v2
/// {challenge}
/// {public_key_hex}
/// {compatible}
/// {name}
/// {os_version}
/// {enrollment_key}
/// ```
///
/// `compatible` is as sent; each optional field is `-` when absent and `+{len}:{value}` when
/// present (so no value can pass for another, newlines included); the enrollment key is
/// signed as the hex SHA-256 of the key, not the key itself.
pub fn enroll_message(
    challenge: &str,
    public_key_hex: &str,
    compatible: &str,
    name: Option<&str>,
    os_version: Option<&str>,
    enrollment_key: Option<&str>,
) -> Vec<u8> {
    let opt = |v: Option<&str>| match v {
        None => "-".to_owned(),
        Some(v) => format!("+{}:{v}", v.len()),
    };
    let key_hash = enrollment_key.map(|k| hex::encode(Sha256::digest(k.as_bytes())));
    format!(
        "otter-enroll-v2\n{challenge}\n{public_key_hex}\n{}\n{}\n{}\n{}",
        opt(Some(compatible)),
        opt(name),
        opt(os_version),
        opt(key_hash.as_deref()),
    )
    .into_bytes()
}

impl EnrollRequest {
    /// The message this request's signature covers.
    pub fn message(&self) -> Vec<u8> {
        enroll_message(
            &self.challenge,
            &self.public_key,
            &self.compatible,
            self.name.as_deref(),
            self.os_version.as_deref(),
            self.enrollment_key.as_deref(),
        )
    }
}

/// The device id: the first 16 hex characters of SHA-256 over the 32 raw public key bytes (the
/// same fingerprint `otter keys` prints for release keys).
pub fn device_id_of(public_key: &[u8; 32]) -> String {
    let mut h = hex::encode(Sha256::digest(public_key));
    h.truncate(16);
    h
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollProofError {
    /// `public_key` is not 64 hex characters of a valid Ed25519 point.
    BadPublicKey(String),
    /// `signature` is not 128 hex characters.
    BadSignature(String),
    /// The signature does not verify.
    WrongSignature,
}

impl std::fmt::Display for EnrollProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollProofError::BadPublicKey(r) => write!(f, "public_key: {r}"),
            EnrollProofError::BadSignature(r) => write!(f, "signature: {r}"),
            EnrollProofError::WrongSignature => f.write_str(
                "signature does not verify with public_key over the request (sign otter_proto::enroll_message v2: challenge, public_key, compatible, name, os_version and the enrollment key's SHA-256; an agent older than this server signs v1: update it)",
            ),
        }
    }
}

impl std::error::Error for EnrollProofError {}

impl EnrollRequest {
    /// Builds a signed request (device side).
    pub fn signed(
        key: &SigningKey,
        challenge: &str,
        compatible: &str,
        name: Option<String>,
        enrollment_key: Option<String>,
        os_version: Option<String>,
    ) -> EnrollRequest {
        let mut req = EnrollRequest {
            public_key: hex::encode(key.verifying_key().to_bytes()),
            compatible: compatible.to_owned(),
            name,
            enrollment_key,
            os_version,
            challenge: challenge.to_owned(),
            signature: String::new(),
        };
        req.signature = hex::encode(key.sign(&req.message()).to_bytes());
        req
    }

    /// Checks the proof (server side); gives the raw public key.
    pub fn verify_proof(&self) -> Result<[u8; 32], EnrollProofError> {
        let raw: [u8; 32] = hex::decode(&self.public_key)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                EnrollProofError::BadPublicKey("expected 64 hex characters (32 bytes)".into())
            })?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| EnrollProofError::BadPublicKey("not a valid Ed25519 public key".into()))?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                EnrollProofError::BadSignature("expected 128 hex characters (64 bytes)".into())
            })?;
        key.verify_strict(&self.message(), &Signature::from_bytes(&sig))
            .map_err(|_| EnrollProofError::WrongSignature)?;
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn signed_request_verifies() {
        let r = EnrollRequest::signed(&key(1), "c1", "qemu-x86_64", None, None, None);
        let raw = r.verify_proof().unwrap();
        assert_eq!(raw, key(1).verifying_key().to_bytes());
        assert_eq!(device_id_of(&raw).len(), 16);
    }

    #[test]
    fn tampering_is_refused() {
        let r = EnrollRequest::signed(&key(1), "c1", "qemu-x86_64", None, None, None);
        let mut other_board = r.clone();
        other_board.compatible = "rpi4".into();
        assert_eq!(
            other_board.verify_proof(),
            Err(EnrollProofError::WrongSignature)
        );
        let mut other_challenge = r.clone();
        other_challenge.challenge = "c2".into();
        assert_eq!(
            other_challenge.verify_proof(),
            Err(EnrollProofError::WrongSignature)
        );
        // Someone else's key with this signature.
        let mut other_key = r.clone();
        other_key.public_key = hex::encode(key(2).verifying_key().to_bytes());
        assert_eq!(
            other_key.verify_proof(),
            Err(EnrollProofError::WrongSignature)
        );
        // What the server stores is signed too.
        let r = EnrollRequest::signed(
            &key(1),
            "c1",
            "b",
            Some("gw".into()),
            Some("k".into()),
            Some("1.0".into()),
        );
        r.verify_proof().unwrap();
        let changes: [fn(&mut EnrollRequest); 5] = [
            |r: &mut EnrollRequest| r.name = Some("other".into()),
            |r: &mut EnrollRequest| r.name = None,
            |r: &mut EnrollRequest| r.os_version = Some("9.9".into()),
            |r: &mut EnrollRequest| r.enrollment_key = Some("k2".into()),
            |r: &mut EnrollRequest| r.enrollment_key = None,
        ];
        for change in changes {
            let mut t = r.clone();
            change(&mut t);
            assert_eq!(t.verify_proof(), Err(EnrollProofError::WrongSignature));
        }
        let mut garbage = r;
        garbage.signature = "zz".into();
        assert!(matches!(
            garbage.verify_proof(),
            Err(EnrollProofError::BadSignature(_))
        ));
    }
}
