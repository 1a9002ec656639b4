//! Prints the generated grub.cfg: `cargo run -p otter-boot --example print_grub_cfg [TIMEOUT]`.
fn main() -> Result<(), otter_boot::BootError> {
    let timeout_secs = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let cfg = otter_boot::GrubConfig {
        timeout_secs,
        ..Default::default()
    };
    print!("{}", otter_boot::grub_cfg(&cfg)?);
    Ok(())
}
