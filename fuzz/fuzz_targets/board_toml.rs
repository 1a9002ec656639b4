//! A board file (`boards/NAME.toml`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_config::Board;
use std::sync::OnceLock;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let path = dir().path().join("board.toml");
    std::fs::write(&path, data).expect("write board.toml");
    let _ = Board::load(&path);
});
