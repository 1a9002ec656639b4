//! Releases: an uploaded bundle is spooled to a temporary file, its signature checked against the
//! fleet's trusted keys and its payload against the manifest's hashes, then stored in the
//! artifact store and recorded. A refused upload leaves nothing behind.

use axum::http::StatusCode;
use ed25519_dalek::pkcs8::DecodePublicKey;
use futures::StreamExt;
use object_store::{ObjectStore, WriteMultipart};
use otter_bundle::PublicKey;
use otter_proto::admin::{Release, TrustedKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AppState;
use crate::error::{ApiErr, ApiResult};
use crate::store::{self, audit, now_ms};

/// Parses an SPKI PEM Ed25519 public key (the `.pub` files of `otter keys generate`).
pub fn parse_public_key_pem(pem: &str) -> Result<PublicKey, String> {
    let vk = ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| format!("not an Ed25519 SPKI PEM public key ({e})"))?;
    PublicKey::from_bytes(&vk.to_bytes()).ok_or_else(|| "not a valid Ed25519 point".to_owned())
}

/// The fleet's trusted release keys: `--trusted-key` flags plus those added through the API.
pub async fn trusted_keys(st: &AppState) -> ApiResult<Vec<PublicKey>> {
    let mut keys = st.flag_keys.clone();
    for k in store::keys::trusted_keys(&st.db).await? {
        let pk = parse_public_key_pem(&k.pem).map_err(|e| {
            ApiErr::internal(
                "loading trusted keys",
                format!("key {}: {e}", k.fingerprint),
            )
        })?;
        keys.push(pk);
    }
    Ok(keys)
}

/// The trusted keys as the admin API lists them: flags first, then the added ones.
pub async fn list_trusted(st: &AppState) -> ApiResult<Vec<TrustedKey>> {
    let mut out = Vec::new();
    for k in &st.flag_keys {
        out.push(TrustedKey {
            fingerprint: k.fingerprint(),
            pem: k
                .to_pem()
                .map_err(|e| ApiErr::internal("encoding a key", e))?,
            added_at_ms: 0,
            source: "flag".into(),
        });
    }
    out.extend(store::keys::trusted_keys(&st.db).await?);
    Ok(out)
}

/// Trusts one more release key (a PEM public key).
pub async fn add_trusted(st: &AppState, actor: &str, pem: &str) -> ApiResult<TrustedKey> {
    let key = parse_public_key_pem(pem)
        .map_err(|e| ApiErr::bad_request("invalid_key", format!("pem: {e}")))?;
    let pem = key
        .to_pem()
        .map_err(|e| ApiErr::internal("encoding a key", e))?;
    let fp = key.fingerprint();
    let k = TrustedKey {
        fingerprint: fp.clone(),
        pem,
        added_at_ms: now_ms(),
        source: actor.to_owned(),
    };
    let mut tx = st.db.write.begin().await?;
    if !store::keys::insert_trusted_key(&mut tx, &k).await? {
        return Err(ApiErr::conflict(
            "key_exists",
            format!("key {fp} is already trusted"),
        ));
    }
    audit(&mut *tx, actor, "key_trusted", &format!("key:{fp}"), "").await?;
    tx.commit().await?;
    Ok(k)
}

/// Finds a release by id, or by version when that is unambiguous: (id, version, compatible).
pub async fn resolve(st: &AppState, what: &str) -> ApiResult<(String, String, String)> {
    let mut rows = store::releases::by_id_or_version(&st.db, what).await?;
    if let Some(i) = rows.iter().position(|r| r.0 == what) {
        return Ok(rows.swap_remove(i));
    }
    match rows.len() {
        0 => Err(ApiErr::not_found(
            "unknown_release",
            format!("no release with id or version {what:?} (otter release ls)"),
        )),
        1 => Ok(rows.swap_remove(0)),
        _ => Err(ApiErr::conflict(
            "ambiguous_release",
            format!(
                "version {what} exists for several boards; give the release id (otter release ls)"
            ),
        )),
    }
}

struct Checked {
    version: String,
    compatible: String,
    digest: String,
    signer: String,
}

fn bundle_error(e: otter_bundle::Error, tmp: &str) -> ApiErr {
    use otter_bundle::Error as E;
    let code = match &e {
        E::Unsigned { .. } => "unsigned_bundle",
        E::UntrustedSigners { .. } => "untrusted_signer",
        E::InvalidSignature { .. } => "invalid_signature",
        E::Io { .. } | E::SourceRead { .. } => {
            return ApiErr::internal("reading the spooled upload", e);
        }
        _ => "invalid_bundle",
    };
    let msg = e.to_string().replace(tmp, "the uploaded bundle");
    ApiErr::bad_request(code, msg)
}

fn check_bundle(path: &std::path::Path, keys: &[PublicKey]) -> ApiResult<Checked> {
    let name = path.to_string_lossy().into_owned();
    if keys.is_empty() {
        return Err(ApiErr::new(
            StatusCode::CONFLICT,
            "no_trusted_keys",
            "the server trusts no release key yet: start it with --trusted-key FILE.pub or add one with POST /api/v1/admin/keys",
        ));
    }
    let reader = otter_bundle::BundleReader::open(&name).map_err(|e| bundle_error(e, &name))?;
    reader
        .check_complete()
        .map_err(|e| bundle_error(e, &name))?;
    let digest = reader.manifest_digest_hex();
    let v = reader.verify(keys).map_err(|e| bundle_error(e, &name))?;
    v.check_payload(&mut |_, _| {})
        .map_err(|e| bundle_error(e, &name))?;
    Ok(Checked {
        version: v.manifest().version.clone(),
        compatible: v.manifest().compatible.clone(),
        digest,
        signer: v.signer().to_owned(),
    })
}

/// `body`: the bundle file as it arrives (the request body's stream).
pub async fn upload<S, E>(st: &AppState, actor: &str, mut body: S) -> ApiResult<Release>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let tmp_dir = if st.cfg.data_dir.is_dir() {
        st.cfg.data_dir.clone()
    } else {
        std::env::temp_dir()
    };
    let tmp = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(&tmp_dir)
        .map_err(|e| {
            ApiErr::internal(
                &format!("creating a temporary file in {}", tmp_dir.display()),
                e,
            )
        })?;
    let std_file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ApiErr::internal("opening the temporary file", e))?;
    let mut f = tokio::fs::File::from_std(std_file);
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiErr::bad_request("upload_interrupted", format!("reading the upload: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > st.cfg.max_bundle_size {
            return Err(ApiErr::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bundle_too_large",
                format!(
                    "the bundle is larger than the server's limit of {} bytes (--max-bundle-size)",
                    st.cfg.max_bundle_size
                ),
            ));
        }
        f.write_all(&chunk)
            .await
            .map_err(|e| ApiErr::internal("spooling the upload", e))?;
    }
    f.flush()
        .await
        .map_err(|e| ApiErr::internal("spooling the upload", e))?;
    if size == 0 {
        return Err(ApiErr::bad_request(
            "empty_body",
            "send the bundle file as the request body",
        ));
    }
    let keys = trusted_keys(st).await?;
    let path = tmp.path().to_owned();
    let checked = tokio::task::spawn_blocking(move || check_bundle(&path, &keys))
        .await
        .map_err(|e| ApiErr::internal("checking the bundle", e))??;
    let id = checked.digest[..16].to_owned();

    let dup =
        store::releases::duplicate(&st.db, &id, &checked.compatible, &checked.version).await?;
    if let Some(d) = dup {
        return Err(ApiErr::conflict(
            "release_exists",
            format!(
                "release {} for {} already exists (id {d}); bump the version",
                checked.version, checked.compatible,
            ),
        ));
    }

    // A key of its own for this upload (see `release_upload_path`).
    let upload_id = format!("{:016x}", rand::random::<u64>());
    let obj = st.store.release_upload_path(&id, &upload_id);
    copy_to_store(&*st.store.store, &obj, tmp.path())
        .await
        .map_err(|e| ApiErr::internal(&format!("storing the bundle as {obj}"), e))?;
    let now = now_ms();
    let release = Release {
        id,
        version: checked.version,
        compatible: checked.compatible,
        size,
        manifest_digest: checked.digest,
        signer: checked.signer,
        uploaded_at_ms: now,
        uploaded_by: actor.to_owned(),
    };
    let detail = format!(
        "{} for {}, {size} bytes, signed by {}",
        release.version, release.compatible, release.signer
    );
    let insert = async {
        let mut tx = st.db.write.begin().await?;
        store::releases::insert(&mut tx, &release, obj.as_ref()).await?;
        audit(
            &mut *tx,
            actor,
            "release_uploaded",
            &format!("release:{}", release.id),
            &detail,
        )
        .await?;
        tx.commit().await
    };
    if let Err(e) = insert.await {
        // Do not leave an unrecorded object behind; `obj` is this upload's own object.
        let _ = st.store.store.delete(&obj).await;
        return Err(
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation())
            {
                ApiErr::conflict(
                    "release_exists",
                    format!(
                        "release {} for {} already exists",
                        release.version, release.compatible
                    ),
                )
            } else {
                e.into()
            },
        );
    }
    Ok(release)
}

async fn copy_to_store(
    store: &dyn ObjectStore,
    obj: &object_store::path::Path,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let upload = store.put_multipart(obj).await?;
    let mut w = WriteMultipart::new(upload);
    let mut f = tokio::fs::File::open(file).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(4).await?;
        w.write(&buf[..n]);
    }
    w.finish().await?;
    Ok(())
}

pub async fn list(st: &AppState) -> ApiResult<Vec<Release>> {
    Ok(store::releases::list(&st.db).await?)
}
