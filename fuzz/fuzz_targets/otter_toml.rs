//! `otter.toml`, the image description `otter build` reads (with a real board file beside it).
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_config::Project;
use std::sync::OnceLock;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(d.path().join("boards")).expect("boards dir");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/qemu-x86_64.toml"),
            d.path().join("boards/qemu-x86_64.toml"),
        )
        .expect("copy the board file");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let path = dir().path().join("otter.toml");
    std::fs::write(&path, data).expect("write otter.toml");
    let _ = Project::load(&path);
});
