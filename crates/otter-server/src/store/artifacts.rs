//! Artifact storage through `object_store`: a local folder by default, an in-memory store for
//! tests, or any S3-compatible bucket.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;

#[derive(Clone)]
pub struct Artifacts {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix inside the store (the part of `s3://bucket/prefix` after the bucket).
    pub prefix: String,
    /// Human-readable location, for logs.
    pub describe: String,
    /// For stores that can presign URLs (S3): devices then download from the store directly.
    pub signer: Option<Arc<dyn object_store::signer::Signer>>,
}

/// How long a presigned artifact URL stays valid: long enough for a slow download with retries.
pub const PRESIGNED_URL_TTL: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

impl Artifacts {
    /// `spec`: `None` → `{data_dir}/artifacts`; a path or `file:///path`; `memory://`;
    /// `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*` variables).
    pub fn open(spec: Option<&str>, data_dir: &Path) -> Result<Artifacts> {
        let spec = spec.map(str::to_owned);
        match spec.as_deref() {
            None => Self::local(&data_dir.join("artifacts")),
            Some("memory://") => Ok(Artifacts {
                store: Arc::new(InMemory::new()),
                prefix: String::new(),
                describe: "memory:// (lost when the server stops)".into(),
                signer: None,
            }),
            Some(s) if s.starts_with("file://") => Self::local(Path::new(&s["file://".len()..])),
            Some(s) if s.starts_with("s3://") => Self::s3(s),
            Some(s) if s.contains("://") => {
                bail!("storage {s:?}: use a folder path, file:///PATH or s3://BUCKET/PREFIX")
            }
            Some(s) => Self::local(Path::new(s)),
        }
    }

    fn local(dir: &Path) -> Result<Artifacts> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the artifact folder {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening the artifact folder {}", dir.display()))?;
        Ok(Artifacts {
            store: Arc::new(store),
            prefix: String::new(),
            describe: dir.display().to_string(),
            signer: None,
        })
    }

    fn s3(url: &str) -> Result<Artifacts> {
        let rest = &url["s3://".len()..];
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("storage {url:?}: no bucket name (s3://BUCKET/PREFIX)");
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| {
                format!(
                    "configuring S3 bucket {bucket} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT for other S3-compatible stores)"
                )
            })?;
        let store = Arc::new(store);
        Ok(Artifacts {
            store: store.clone(),
            prefix: prefix.trim_matches('/').to_owned(),
            describe: url.to_owned(),
            signer: Some(store),
        })
    }

    /// A URL the device can fetch `path` from without a token, when the store can presign.
    pub async fn presigned_url(&self, path: &ObjPath) -> Result<Option<String>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(axum::http::Method::GET, path, PRESIGNED_URL_TTL)
            .await
            .with_context(|| format!("presigning {path} in {}", self.describe))?;
        Ok(Some(url.to_string()))
    }

    /// Where one upload of a release's bundle is kept: `releases/{id}-{upload}.otb`. Each
    /// upload writes its own object, so the loser of two concurrent uploads of one bundle
    /// deletes only its own copy, never the one the database records.
    pub fn release_upload_path(&self, release_id: &str, upload: &str) -> ObjPath {
        self.release_path(&format!("{release_id}-{upload}"))
    }

    /// Where a release's bundle is kept (releases stored before per-upload keys).
    pub fn release_path(&self, release_id: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(format!("releases/{release_id}.otb"))
        } else {
            ObjPath::from(format!("{}/releases/{release_id}.otb", self.prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let d = tempfile::tempdir().unwrap();
        let a = Artifacts::open(None, d.path()).unwrap();
        assert!(d.path().join("artifacts").is_dir());
        assert_eq!(a.release_path("r1").as_ref(), "releases/r1.otb");
        assert!(Artifacts::open(Some("memory://"), d.path()).is_ok());
        let e = Artifacts::open(Some("ftp://x"), d.path()).err().unwrap();
        assert!(e.to_string().contains("ftp://x"));
        assert!(Artifacts::open(Some("s3:///x"), d.path()).is_err());
    }

    #[tokio::test]
    async fn s3_presigns_locally() {
        // Presigning is a local computation: no S3 server is contacted.
        // SAFETY: the variables are set before any other thread of this test reads them.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "secret");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::set_var("AWS_ENDPOINT", "http://127.0.0.1:9");
        }
        let d = tempfile::tempdir().unwrap();
        let a = Artifacts::open(Some("s3://bucket/fleet"), d.path()).unwrap();
        let p = a.release_path("r1");
        assert_eq!(p.as_ref(), "fleet/releases/r1.otb");
        let url = a.presigned_url(&p).await.unwrap().unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:9/bucket/fleet/releases/r1.otb?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Signature="), "{url}");
        let local = Artifacts::open(None, d.path()).unwrap();
        assert_eq!(local.presigned_url(&p).await.unwrap(), None);
    }
}
