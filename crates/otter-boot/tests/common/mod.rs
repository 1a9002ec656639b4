#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
/// Skips a test whose tool is missing, with a message; with `OTTER_REQUIRE_TOOLS=1` (CI, once
/// it installs grub-common, grub-efi-amd64-bin and grub-emu) a missing tool fails the test instead.
pub fn skip(msg: &str) {
    if std::env::var("OTTER_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("OTTER_REQUIRE_TOOLS=1 but {msg}");
    }
    eprintln!("SKIPPED: {msg}");
}
