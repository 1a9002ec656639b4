//! HTTPS with --tls-cert/--tls-key (rustls): a self-signed certificate made with `openssl`,
//! checked with `curl --cacert`. Skipped with a message when either tool is missing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn serves_https_with_the_given_certificate() {
    if !have("openssl") || !have("curl") {
        eprintln!("SKIPPED: needs openssl and curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A missing key file is a clear start error.
    let mut bad = otter_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("bad"),
        tls: Some((cert.clone(), dir.path().join("missing.pem"))),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(otter_server::Server::start(bad.clone()))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
    bad.tls = None;

    let (c, k) = (cert.clone(), key.clone());
    let s = common::start(move |cfg| cfg.tls = Some((c.clone(), k.clone())));
    let https = s.base.replace("http://", "https://");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&cert)
        .arg(format!("{https}/api/v1/device/challenge"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["challenge"].is_string());
    // Without trusting the certificate, curl refuses: it really is TLS with that certificate.
    let out = Command::new("curl")
        .args(["-sS", "--fail"])
        .arg(format!("{https}/api/v1/device/challenge"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
