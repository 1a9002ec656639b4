//! With SOURCE_DATE_EPOCH set, the same inputs give a byte-identical bundle (Ed25519 signatures
//! are deterministic). Alone in its own test binary because it sets an environment variable.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;

use common::*;
use otter_bundle::*;

#[test]
fn source_date_epoch_makes_bundles_reproducible() {
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var("SOURCE_DATE_EPOCH", "1700000000") };
    let f = Fixture::new();
    let (img, _) = f.write_image("rootfs.img", 900_000, 11);
    let (a, ma) = f.bundle("a.otb", &img, "1.0.0", 65536);
    let (b, _) = f.bundle("b.otb", &img, "1.0.0", 65536);
    assert_eq!(ma.created, 1_700_000_000);
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());

    unsafe { std::env::set_var("SOURCE_DATE_EPOCH", "yesterday") };
    let opts = CreateOptions::new(COMPAT, "1.0.0");
    let e = create_bundle(
        &f.path("c.otb"),
        &[("rootfs", img.as_path())],
        &opts,
        &[&f.key],
    )
    .unwrap_err();
    assert!(matches!(e, Error::SourceDateEpoch(_)), "{e}");
    unsafe { std::env::remove_var("SOURCE_DATE_EPOCH") };
}
