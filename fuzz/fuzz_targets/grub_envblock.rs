//! The GRUB environment block (boot state), as read back from the boot partition after any write
//! or power cut. What decodes encodes again and decodes to the same variables.
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_boot::{env_block_decode, env_block_encode};

fuzz_target!(|data: &[u8]| {
    let Ok(vars) = env_block_decode(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Ok(block) = env_block_encode(&pairs) {
        let again = env_block_decode(&block).expect("an encoded block decodes");
        assert_eq!(vars, again);
    }
});
