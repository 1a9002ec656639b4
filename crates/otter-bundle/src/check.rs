//! Checking a bundle's whole payload without writing anything: every chunk against its signed
//! hash, and every image against its signed whole-image hash.

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::delta::DEFAULT_MAX_GAP;
use crate::error::{Error, Result};
use crate::reader::VerifiedBundle;
use crate::stream::{check_zero_chunks, stream_chunks};

/// What [`VerifiedBundle::check_payload`] checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PayloadReport {
    /// Images checked: all of the bundle's.
    pub images: usize,
    /// Chunks checked, zero chunks included.
    pub chunks: u64,
    /// Raw image bytes checked: the sum of the image sizes.
    pub bytes: u64,
    /// Wall time of the check.
    pub seconds: f64,
}

impl VerifiedBundle {
    /// Checks the whole payload against the signed manifest, and writes nothing. Use it to vet a
    /// bundle before publishing or installing it.
    ///
    /// In order, it checks that:
    /// - the bundle is complete (when its length is known, as install does);
    /// - every image's block index matches its SHA-256 in the manifest;
    /// - every zero chunk is all zeros in the block index;
    /// - for each image in manifest order, every stored chunk decompresses to its size and every
    ///   block to its hash in the index, and all chunks together (zeros for zero chunks) hash to
    ///   the image's SHA-256.
    ///
    /// The payload is read sequentially, from a file or over HTTP with the same range requests
    /// and resumes as install, and only a few chunks are in memory at a time. `progress` gets
    /// (raw image bytes checked, raw bytes of all images) after every chunk.
    ///
    /// Errors name the image, and the chunk index for a chunk ([`Error::ChunkInvalid`]). An image
    /// whose chunks all match but whose whole hash does not is [`Error::ImageHashMismatch`].
    pub fn check_payload(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<PayloadReport> {
        let started = Instant::now();
        let reader = &self.reader;
        let manifest = reader.manifest();
        reader.check_complete()?;
        let mut indexes = Vec::with_capacity(manifest.images.len());
        for entry in &manifest.images {
            let index = reader.read_index(&entry.name)?;
            check_zero_chunks(entry, &index)?;
            indexes.push(index);
        }
        let total = manifest
            .images
            .iter()
            .fold(0u64, |sum, i| sum.saturating_add(i.size));
        let mut checked = 0u64;
        let mut chunks = 0u64;
        progress(0, total);
        for (entry, index) in manifest.images.iter().zip(&indexes) {
            let mut image = Sha256::new();
            let all: Vec<usize> = (0..entry.chunks.len()).collect();
            stream_chunks(reader, entry, index, &all, DEFAULT_MAX_GAP, &mut |chunk| {
                image.update(chunk.data);
                checked += chunk.data.len() as u64;
                chunks += 1;
                progress(checked, total);
                Ok(())
            })?;
            let got = hex::encode(image.finalize());
            if got != entry.sha256 {
                return Err(Error::ImageHashMismatch {
                    source_name: reader.source_name(),
                    image: entry.name.clone(),
                    got,
                    expected: entry.sha256.clone(),
                });
            }
        }
        Ok(PayloadReport {
            images: manifest.images.len(),
            chunks,
            bytes: checked,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
