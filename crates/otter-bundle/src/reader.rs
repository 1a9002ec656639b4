//! Opening a bundle, checking its signatures and the install policy. Only a [`VerifiedBundle`]
//! can install, so the type system guarantees that nothing is written before the signature check.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{self, SignatureEntry};
use crate::index::BlockIndex;
use crate::keys::{PublicKey, fingerprint_of};
use crate::manifest::{Manifest, parse_version};
use crate::source::{OpenOptions, Source};
use crate::stream::read_full;

/// An opened bundle whose header has been parsed but whose signatures are not checked yet.
pub struct BundleReader {
    pub(crate) source: Source,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signatures: Vec<SignatureEntry>,
    payload_start: u64,
}

impl std::fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("source", &self.source.name())
            .field("payload_start", &self.payload_start)
            .field("signers", &self.signer_fingerprints())
            .finish_non_exhaustive()
    }
}

impl BundleReader {
    /// Opens `source`: an `http://` or `https://` URL (read with range requests), else a local path.
    /// Reads only the header (fixed part, manifest, signatures).
    pub fn open(source: &str) -> Result<Self> {
        Self::open_with(source, &OpenOptions::default())
    }

    /// [`Self::open`] with options (e.g. a bearer token for a fleet server's artifact URL).
    pub fn open_with(source: &str, opts: &OpenOptions) -> Result<Self> {
        let src = Source::with_options(source, opts);
        let name = src.name();
        let mut r = src.header_reader()?;
        let header = format::read_header(&mut r, &name)?;
        drop(r);
        let manifest =
            Manifest::from_json(&header.manifest_bytes).map_err(|reason| Error::Corrupt {
                source_name: name.clone(),
                reason,
            })?;
        Ok(BundleReader {
            source: src,
            manifest,
            manifest_bytes: header.manifest_bytes,
            signatures: header.signatures,
            payload_start: header.payload_start,
        })
    }

    /// The parsed manifest. NOT trusted yet: use it for display only, until [`Self::verify`].
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact manifest bytes that signatures cover.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// Hex of the signed digest: SHA-256("otter-bundle-v2\0" || manifest bytes).
    pub fn manifest_digest_hex(&self) -> String {
        hex::encode(format::manifest_digest(&self.manifest_bytes))
    }

    /// Fingerprints of the keys that claim to have signed this bundle (not yet verified).
    pub fn signer_fingerprints(&self) -> Vec<String> {
        self.signatures
            .iter()
            .map(|s| fingerprint_of(&s.public_key))
            .collect()
    }

    pub fn signatures(&self) -> &[SignatureEntry] {
        &self.signatures
    }

    /// Byte offset where the payload starts in the bundle file.
    pub fn payload_offset(&self) -> u64 {
        self.payload_start
    }

    /// Path or URL the bundle was opened from.
    pub fn source_name(&self) -> String {
        self.source.name()
    }

    /// Checks that the source holds exactly header + payload, when its length is known (always
    /// for files; for HTTP when the server told us). Install calls this before writing anything.
    pub fn check_complete(&self) -> Result<()> {
        let expected = self.manifest.payload_size();
        let Some(len) = self.source.len()? else {
            return Ok(());
        };
        let got = len.saturating_sub(self.payload_start);
        if got < expected {
            return Err(Error::Truncated {
                source_name: self.source.name(),
                expected,
                got,
            });
        }
        if got > expected {
            return Err(Error::Corrupt {
                source_name: self.source.name(),
                reason: format!(
                    "{} unexpected bytes after the payload (expected {expected} payload bytes, file has {got})",
                    got - expected
                ),
            });
        }
        Ok(())
    }

    /// Fetches image `image`'s block index from the payload (one range read), and checks it
    /// against the index hash in the manifest. The manifest is not trusted before
    /// [`Self::verify`], so neither is the index read from an unverified reader.
    pub fn read_index(&self, image: &str) -> Result<BlockIndex> {
        let entry = self
            .manifest
            .image(image)
            .ok_or_else(|| Error::ImageNotFound {
                name: image.to_owned(),
                available: self
                    .manifest
                    .images
                    .iter()
                    .map(|i| i.name.clone())
                    .collect(),
            })?;
        let ix = &entry.index;
        let start = self.payload_start + ix.offset;
        let mut r = self.source.range_reader(start, start + ix.csize)?;
        let mut frame = vec![0u8; ix.csize as usize];
        let n = read_full(&mut r, &mut frame).map_err(|e| {
            Error::from_io(e).unwrap_or_else(|e| Error::SourceRead {
                source_name: self.source.name(),
                offset: start,
                source: e,
            })
        })?;
        if n < frame.len() {
            return Err(Error::Truncated {
                source_name: self.source.name(),
                expected: self.manifest.payload_size(),
                got: ix.offset + n as u64,
            });
        }
        let invalid = |reason: String| Error::IndexInvalid {
            image: entry.name.clone(),
            reason,
        };
        // The capacity bounds the output to the size the manifest states.
        let raw = zstd::bulk::decompress(&frame, ix.size as usize)
            .map_err(|e| invalid(format!("cannot decompress: {e}")))?;
        if raw.len() as u64 != ix.size {
            return Err(invalid(format!(
                "decompressed to {} bytes, manifest says {}",
                raw.len(),
                ix.size
            )));
        }
        let got = hex::encode(Sha256::digest(&raw));
        if got != ix.sha256 {
            return Err(invalid(format!(
                "sha256 {got} differs from the manifest's {}",
                ix.sha256
            )));
        }
        BlockIndex::from_bytes(entry.size, &raw).map_err(invalid)
    }

    /// Succeeds if at least one signature is by a key in `trusted` and valid.
    pub fn verify(self, trusted: &[PublicKey]) -> Result<VerifiedBundle> {
        let name = self.source.name();
        if self.signatures.is_empty() {
            return Err(Error::Unsigned { source_name: name });
        }
        let digest = format::manifest_digest(&self.manifest_bytes);
        let mut invalid_trusted = None;
        let mut untrusted = Vec::new();
        let mut signer = None;
        for s in &self.signatures {
            let fp = fingerprint_of(&s.public_key);
            match trusted.iter().find(|k| k.to_bytes() == s.public_key) {
                Some(k) if k.verify_digest(&digest, &s.signature) => {
                    signer = Some(fp);
                    break;
                }
                Some(_) => {
                    invalid_trusted.get_or_insert(fp);
                }
                None => untrusted.push(fp),
            }
        }
        match (signer, invalid_trusted) {
            (Some(signer), _) => Ok(VerifiedBundle {
                reader: self,
                signer,
            }),
            (None, Some(fingerprint)) => Err(Error::InvalidSignature {
                source_name: name,
                fingerprint,
            }),
            (None, None) => Err(Error::UntrustedSigners {
                source_name: name,
                fingerprints: untrusted,
            }),
        }
    }
}

/// What the device accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPolicy {
    /// The device's compatible string; must equal the bundle's exactly.
    pub compatible: String,
    /// The running OS version, if known.
    pub running_version: Option<String>,
    /// Allow installing a version lower than the running one.
    pub allow_downgrade: bool,
}

/// A bundle whose manifest is signed by a trusted key. Its payload is trusted through the
/// manifest's chunk hashes, which install checks chunk by chunk, and
/// [`VerifiedBundle::check_payload`] checks without installing.
#[derive(Debug)]
pub struct VerifiedBundle {
    pub(crate) reader: BundleReader,
    signer: String,
}

impl VerifiedBundle {
    pub fn manifest(&self) -> &Manifest {
        &self.reader.manifest
    }

    /// Fingerprint of the trusted key whose signature was accepted.
    pub fn signer(&self) -> &str {
        &self.signer
    }

    pub fn reader(&self) -> &BundleReader {
        &self.reader
    }

    /// Image `image`'s block index, fetched and checked against the signed manifest.
    pub fn read_index(&self, image: &str) -> Result<BlockIndex> {
        self.reader.read_index(image)
    }

    /// Refuses a bundle for another board, or an older version than the running one unless
    /// downgrades are allowed. The same version is allowed (reinstall). Call before
    /// [`Self::install_image`].
    pub fn check_policy(&self, p: &InstallPolicy) -> Result<()> {
        let m = self.manifest();
        if m.compatible != p.compatible {
            return Err(Error::Incompatible {
                bundle: m.compatible.clone(),
                device: p.compatible.clone(),
            });
        }
        if let (Some(running), false) = (&p.running_version, p.allow_downgrade) {
            let bundle_v = parse_version(&m.version)?;
            let running_v = parse_version(running)?;
            // Precedence ignores build metadata, as semver specifies.
            if bundle_v.cmp_precedence(&running_v) == std::cmp::Ordering::Less {
                return Err(Error::Downgrade {
                    bundle: m.version.clone(),
                    running: running.clone(),
                });
            }
        }
        Ok(())
    }
}
