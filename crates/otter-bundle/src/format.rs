//! The binary container: fixed header, manifest, signature block, payload.
//! Byte-by-byte description: docs/bundle-format.md.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::FORMAT_VERSION;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"OTTERBND";
/// magic (8) + format version (4) + manifest length (4).
pub const FIXED_HEADER_LEN: u64 = 16;
/// 32-byte Ed25519 public key + 64-byte signature.
pub const SIGNATURE_ENTRY_LEN: u64 = 96;
/// Upper bound on the manifest, so a corrupt length field cannot make a reader allocate gigabytes.
/// Chunks take ~2-10 bytes each in the manifest, so this is far beyond any real image.
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024 * 1024;
/// Enough for key rotation with a few overlapping keys.
pub const MAX_SIGNATURES: u32 = 16;
/// Prefix of every signed message. Includes the format version so a signature made for this
/// format cannot be replayed as a signature over anything else (another format version, another
/// Otter object or any other protocol that signs SHA-256 digests with the same key).
pub const SIGNATURE_DOMAIN: &[u8; 16] = b"otter-bundle-v2\0";

/// One entry of the signature block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// Everything before the payload, as read from a bundle's first bytes (nothing verified yet but
/// its framing).
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
    pub payload_start: u64,
}

/// The 32 bytes that are signed: SHA-256(SIGNATURE_DOMAIN || manifest bytes).
pub fn manifest_digest(manifest_bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SIGNATURE_DOMAIN);
    h.update(manifest_bytes);
    h.finalize().into()
}

/// Offset of the payload for a manifest of `manifest_len` bytes and `n_sigs` signatures.
pub fn payload_start(manifest_len: u64, n_sigs: u64) -> u64 {
    FIXED_HEADER_LEN + manifest_len + 4 + n_sigs * SIGNATURE_ENTRY_LEN
}

/// Encodes everything before the payload: fixed header, manifest, signature block.
pub fn encode_header(manifest_bytes: &[u8], signatures: &[SignatureEntry]) -> Result<Vec<u8>> {
    let m_len = u32::try_from(manifest_bytes.len())
        .ok()
        .filter(|&l| l <= MAX_MANIFEST_LEN)
        .ok_or_else(|| {
            Error::InvalidOptions(format!(
                "manifest is {} bytes, more than the format's limit of {MAX_MANIFEST_LEN} (hint: use a larger chunk size)",
                manifest_bytes.len()
            ))
        })?;
    let n = u32::try_from(signatures.len())
        .ok()
        .filter(|&n| n <= MAX_SIGNATURES)
        .ok_or_else(|| {
            Error::InvalidOptions(format!(
                "{} signing keys given, at most {MAX_SIGNATURES} are allowed",
                signatures.len()
            ))
        })?;
    let mut out = Vec::with_capacity(payload_start(m_len.into(), n.into()) as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&m_len.to_le_bytes());
    out.extend_from_slice(manifest_bytes);
    out.extend_from_slice(&n.to_le_bytes());
    for s in signatures {
        out.extend_from_slice(&s.public_key);
        out.extend_from_slice(&s.signature);
    }
    Ok(out)
}

/// Reads the header from the start of a bundle. `source_name` is used in errors only. Public
/// for tools and the fuzzers (`fuzz/`): it is the first code to see a downloaded bundle's bytes.
pub fn read_header(r: &mut dyn Read, source_name: &str) -> Result<Header> {
    let mut pos = 0u64;
    let mut fixed = [0u8; FIXED_HEADER_LEN as usize];
    read_exact(r, &mut fixed, &mut pos, source_name, "fixed header")?;
    if &fixed[..8] != MAGIC {
        return Err(Error::BadMagic {
            source_name: source_name.to_owned(),
        });
    }
    let version = le_u32(&fixed[8..12]);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            source_name: source_name.to_owned(),
            version,
            supported: FORMAT_VERSION,
        });
    }
    let m_len = le_u32(&fixed[12..16]);
    if m_len == 0 || m_len > MAX_MANIFEST_LEN {
        return Err(corrupt(
            source_name,
            format!("manifest length {m_len} is outside 1..={MAX_MANIFEST_LEN}"),
        ));
    }
    let mut manifest_bytes = vec![0u8; m_len as usize];
    read_exact(r, &mut manifest_bytes, &mut pos, source_name, "manifest")?;

    let mut n = [0u8; 4];
    read_exact(r, &mut n, &mut pos, source_name, "signature count")?;
    let n = le_u32(&n);
    if n > MAX_SIGNATURES {
        return Err(corrupt(
            source_name,
            format!("signature count {n} exceeds the limit of {MAX_SIGNATURES}"),
        ));
    }
    let mut signatures = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut e = [0u8; SIGNATURE_ENTRY_LEN as usize];
        read_exact(r, &mut e, &mut pos, source_name, "signature block")
            .map_err(|err| annotate(err, &format!(" (entry {i})")))?;
        let mut public_key = [0u8; 32];
        let mut signature = [0u8; 64];
        public_key.copy_from_slice(&e[..32]);
        signature.copy_from_slice(&e[32..]);
        signatures.push(SignatureEntry {
            public_key,
            signature,
        });
    }
    debug_assert_eq!(pos, payload_start(m_len.into(), n.into()));
    Ok(Header {
        manifest_bytes,
        signatures,
        payload_start: pos,
    })
}

fn annotate(e: Error, suffix: &str) -> Error {
    match e {
        Error::Corrupt {
            source_name,
            reason,
        } => Error::Corrupt {
            source_name,
            reason: reason + suffix,
        },
        other => other,
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn corrupt(source_name: &str, reason: String) -> Error {
    Error::Corrupt {
        source_name: source_name.to_owned(),
        reason,
    }
}

/// Like `Read::read_exact`, but a short read becomes "header truncated" and errors carry the
/// offset; errors produced by our own HTTP reader pass through unchanged.
fn read_exact(
    r: &mut dyn Read,
    buf: &mut [u8],
    pos: &mut u64,
    source_name: &str,
    what: &str,
) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(corrupt(
                    source_name,
                    format!(
                        "header truncated: file ends at byte {} inside the {what}",
                        *pos + done as u64
                    ),
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::from_io(e).unwrap_or_else(|e| Error::SourceRead {
                    source_name: source_name.to_owned(),
                    offset: *pos + done as u64,
                    source: e,
                }));
            }
        }
    }
    *pos += buf.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(k: u8) -> SignatureEntry {
        SignatureEntry {
            public_key: [k; 32],
            signature: [k + 1; 64],
        }
    }

    #[test]
    fn header_roundtrip() {
        let m = br#"{"x":1}"#;
        let bytes = encode_header(m, &[sig(1), sig(2)]).unwrap();
        assert_eq!(bytes.len() as u64, payload_start(m.len() as u64, 2));
        assert_eq!(&bytes[..8], b"OTTERBND");
        assert_eq!(&bytes[8..12], &[2, 0, 0, 0]);
        assert_eq!(&bytes[12..16], &(m.len() as u32).to_le_bytes());
        let mut with_payload = bytes.clone();
        with_payload.extend_from_slice(b"PAYLOAD");
        let h = read_header(&mut &with_payload[..], "t").unwrap();
        assert_eq!(h.manifest_bytes, m);
        assert_eq!(h.signatures, vec![sig(1), sig(2)]);
        assert_eq!(h.payload_start, bytes.len() as u64);
    }

    #[test]
    fn header_errors() {
        let good = encode_header(b"{}", &[sig(1)]).unwrap();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            read_header(&mut &bad_magic[..], "t"),
            Err(Error::BadMagic { .. })
        ));
        let mut v1 = good.clone();
        v1[8] = 1;
        assert!(matches!(
            read_header(&mut &v1[..], "t"),
            Err(Error::UnsupportedFormat { version: 1, .. })
        ));
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&(MAX_MANIFEST_LEN + 1).to_le_bytes());
        assert!(matches!(
            read_header(&mut &huge[..], "t"),
            Err(Error::Corrupt { .. })
        ));
        let mut many = good.clone();
        many[18..22].copy_from_slice(&17u32.to_le_bytes());
        assert!(matches!(
            read_header(&mut &many[..], "t"),
            Err(Error::Corrupt { .. })
        ));
        for cut in [0, 5, 16, 17, 20, good.len() - 1] {
            let e = read_header(&mut &good[..cut], "t").unwrap_err();
            assert!(e.to_string().contains("header truncated"), "{cut}: {e}");
        }
    }

    #[test]
    fn digest_is_domain_separated() {
        let m = b"{}";
        assert_ne!(manifest_digest(m), <[u8; 32]>::from(Sha256::digest(m)));
        let mut h = Sha256::new();
        h.update(b"otter-bundle-v2\0{}");
        assert_eq!(manifest_digest(m), <[u8; 32]>::from(h.finalize()));
    }
}
