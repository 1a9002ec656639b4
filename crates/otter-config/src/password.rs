//! Password hashes for device users: SHA-512 crypt (`$6$…`), which glibc's crypt(3) and PAM
//! accept in `/etc/shadow`. Plain-text passwords are hashed on the host and never stored.

use rand::RngCore;
use sha_crypt::{PasswordHasher, PasswordVerifier, ShaCrypt};

/// The SHA-512 crypt hash of `password` with a fresh random salt (5000 rounds, glibc's default).
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty; leave --password out for a key-only account".into());
    }
    if password.contains('\n') || password.contains('\0') {
        return Err("the password contains a newline or NUL byte".into());
    }
    // 12 random bytes make 16 salt characters, the most crypt(3) uses: glibc truncates a
    // longer salt, and then its output would not equal the stored string PAM compares with.
    let mut salt = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.as_str().to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// `true` when `password` matches the SHA-256/SHA-512 crypt `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    ShaCrypt::SHA512
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_config::is_crypt_hash;

    #[test]
    fn hashes_verify_and_salts_differ() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$6$"), "{a}");
        assert!(is_crypt_hash(&a), "{a}");
        assert_ne!(a, b, "each hash gets its own salt");
        assert!(verify_password("correct horse battery", &a));
        assert!(verify_password("correct horse battery", &b));
        assert!(!verify_password("correct horse batterY", &a));
        assert!(!a.contains("correct"));
    }

    #[test]
    fn verifies_glibc_hashes() {
        // Test vectors from Ulrich Drepper's SHA-crypt specification (what glibc implements).
        assert!(verify_password(
            "Hello world!",
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        ));
        assert!(verify_password(
            "Hello world!",
            "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
        ));
        assert!(!verify_password(
            "Hello world",
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        ));
    }

    #[test]
    fn salt_fits_crypt3() {
        let h = hash_password("pw").unwrap();
        let fields: Vec<&str> = h.split('$').collect();
        // ["", "6", "rounds=5000", salt, hash]
        assert_eq!(fields.len(), 5, "{h}");
        assert_eq!(fields[3].len(), 16, "{h}");
    }

    #[test]
    fn glibc_crypt_reproduces_the_hash() {
        // Perl's crypt() is glibc's crypt(3), what PAM calls; it must give back the same
        // string for the right password (PAM compares the strings).
        let h = hash_password("pa$$ word:1").unwrap();
        let out = std::process::Command::new("perl")
            .args(["-e", "print crypt($ARGV[0], $ARGV[1])", "pa$$ word:1", &h])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                assert_eq!(String::from_utf8_lossy(&o.stdout), h);
            }
            _ => eprintln!("skipped: perl not found, cannot cross-check with glibc crypt(3)"),
        }
    }

    #[test]
    fn refuses_empty_and_multiline() {
        assert!(hash_password("").is_err());
        assert!(hash_password("a\nb").is_err());
    }
}
