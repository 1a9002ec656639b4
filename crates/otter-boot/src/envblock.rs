//! GRUB environment block codec (`grub-core/lib/envblk.c` semantics).
//!
//! A block is exactly [`ENV_BLOCK_SIZE`] bytes: the header `# GRUB Environment Block\n`, then
//! `name=value\n` lines, padded with `#`. In values GRUB escapes `\` and newline with a backslash
//! (`\\` and backslash + newline). The parser here mirrors GRUB's own so the agent and the boot loader
//! agree on what a damaged block contains.

use crate::error::{BootError, Result};

/// Size of every environment block Otter writes (GRUB's `grub-editenv` default, two sectors).
pub const ENV_BLOCK_SIZE: usize = 1024;
/// The header every GRUB environment block starts with.
pub const ENV_BLOCK_HEADER: &[u8] = b"# GRUB Environment Block\n";

/// Encodes variables into a 1024-byte GRUB environment block.
///
/// Fails if a name cannot be represented, a name repeats, a value holds a NUL, or the content does
/// not fit.
pub fn env_block_encode(vars: &[(&str, &str)]) -> Result<[u8; ENV_BLOCK_SIZE]> {
    for (i, (name, value)) in vars.iter().enumerate() {
        check_name(name)?;
        if value.contains('\0') {
            return Err(BootError::BadVarValue {
                name: name.to_string(),
            });
        }
        if vars[..i].iter().any(|(n, _)| n == name) {
            return Err(BootError::DuplicateVar {
                name: name.to_string(),
            });
        }
    }
    let text = render(vars);
    if text.len() > ENV_BLOCK_SIZE {
        return Err(BootError::EnvBlockTooLarge {
            needed: text.len(),
            max: ENV_BLOCK_SIZE,
        });
    }
    Ok(pad(&text))
}

/// Decodes a GRUB environment block into its variables, in block order (duplicates kept; GRUB's
/// `load_env` lets the last one win).
///
/// The block must be exactly 1024 bytes with the GRUB header. Like GRUB, parsing stops silently at
/// the first broken line (no `=` or no terminating newline) and keeps what came before.
pub fn env_block_decode(b: &[u8]) -> Result<Vec<(String, String)>> {
    if b.len() != ENV_BLOCK_SIZE {
        return Err(BootError::EnvBlockBadSize { len: b.len() });
    }
    if !b.starts_with(ENV_BLOCK_HEADER) {
        return Err(BootError::EnvBlockBadHeader);
    }
    Ok(iterate(b).into_iter().map(|l| (l.name, l.value)).collect())
}

/// What GRUB's `load_env` reads from a file of any size: `None` without the header.
pub(crate) fn grub_read_vars(b: &[u8]) -> Option<Vec<(String, String)>> {
    if !b.starts_with(ENV_BLOCK_HEADER) {
        return None;
    }
    Some(iterate(b).into_iter().map(|l| (l.name, l.value)).collect())
}

fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty() || name.starts_with('#') || name.contains(['=', '\n', '\\', '\0']);
    if bad {
        return Err(BootError::BadVarName {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn escape_into(out: &mut Vec<u8>, value: &str) {
    for &c in value.as_bytes() {
        if c == b'\\' || c == b'\n' {
            out.push(b'\\');
        }
        out.push(c);
    }
}

/// Header plus `name=value\n` lines, unpadded.
pub(crate) fn render(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut out = ENV_BLOCK_HEADER.to_vec();
    for (name, value) in vars {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        escape_into(&mut out, value);
        out.push(b'\n');
    }
    out
}

/// Pads `text` with `#` to a full block (truncating is never reached by callers, which check size).
pub(crate) fn pad(text: &[u8]) -> [u8; ENV_BLOCK_SIZE] {
    let mut block = [b'#'; ENV_BLOCK_SIZE];
    let n = text.len().min(ENV_BLOCK_SIZE);
    block[..n].copy_from_slice(&text[..n]);
    block
}

struct Line {
    name: String,
    value: String,
}

/// GRUB's `grub_envblk_iterate`: skips `#` lines, stops at the first broken line.
fn iterate(b: &[u8]) -> Vec<Line> {
    let end = b.len();
    let mut p = ENV_BLOCK_HEADER.len();
    let mut out = Vec::new();
    while p < end {
        if b[p] == b'#' {
            p = next_line(b, p);
            continue;
        }
        let name_start = p;
        // GRUB starts looking for '=' one byte after the line start.
        p += 1;
        while p < end && b[p] != b'=' {
            p += 1;
        }
        if p >= end {
            break;
        }
        let name_end = p;
        p += 1;
        let value_start = p;
        while p < end && b[p] != b'\n' {
            if b[p] == b'\\' {
                p += 1;
            }
            p += 1;
        }
        if p >= end {
            break;
        }
        let mut value = Vec::new();
        let mut q = value_start;
        while q < p {
            if b[q] == b'\\' {
                q += 1;
            }
            value.push(b[q]);
            q += 1;
        }
        out.push(Line {
            name: c_string(&b[name_start..name_end]),
            value: c_string(&value),
        });
        p += 1;
    }
    out
}

fn next_line(b: &[u8], mut p: usize) -> usize {
    while p < b.len() {
        p += 1;
        if b[p - 1] == b'\n' {
            break;
        }
    }
    p
}

/// GRUB keeps names and values as C strings: anything after a NUL is invisible to it.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// GRUB's `grub_envblk_set`, as used by `save_env`: changes a variable in place (shifting what
/// follows) or appends it before the `#` padding. Returns false when it does not fit, like GRUB.
/// Used by the GRUB model in [`crate::sim`] to predict the bytes GRUB writes.
pub(crate) fn grub_envblk_set(block: &mut [u8], name: &str, value: &str) -> bool {
    let pend = block.len();
    let name = name.as_bytes();
    let nl = name.len();
    let mut escaped = Vec::new();
    escape_into(&mut escaped, value);
    let vl = escaped.len();

    // GRUB looks for "name=" at every line start, without skipping comments.
    let mut p = ENV_BLOCK_HEADER.len();
    let mut found = false;
    while p < pend {
        if p + nl + 1 < pend && &block[p..p + nl] == name && block[p + nl] == b'=' {
            found = true;
            break;
        }
        p = next_line(block, p);
    }
    // Index just past the last non-'#' byte: where free space starts.
    let space_start = block.iter().rposition(|&c| c != b'#').map_or(0, |i| i + 1);

    let value_at;
    if found {
        p += nl + 1;
        let mut q = p;
        while q < pend && block[q] != b'\n' {
            if block[q] == b'\\' {
                q += 1;
            }
            q += 1;
        }
        let q = q.min(pend);
        let old_len = q - p;
        if old_len > vl {
            block.copy_within(q..pend, p + vl);
            let shrink = old_len - vl;
            block[pend - shrink..].fill(b'#');
        } else {
            let grow = vl - old_len;
            // `q > space_start` only for an unterminated last line; GRUB would write past it.
            if q > space_start || pend - space_start < grow {
                return false;
            }
            block.copy_within(q..space_start, q + grow);
        }
        value_at = p;
    } else {
        if pend - space_start < nl + 1 + vl + 1 {
            return false;
        }
        block[space_start..space_start + nl].copy_from_slice(name);
        block[space_start + nl] = b'=';
        value_at = space_start + nl + 1;
    }
    let Some(dst) = block.get_mut(value_at..value_at + vl + 1) else {
        return false;
    };
    dst[..vl].copy_from_slice(&escaped);
    dst[vl] = b'\n';
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_size() {
        let vars = [
            ("ORDER", "A B"),
            ("A_OK", "1"),
            ("EMPTY", ""),
            ("X", "a=b c"),
        ];
        let b = env_block_encode(&vars).unwrap();
        assert_eq!(b.len(), ENV_BLOCK_SIZE);
        assert!(b.starts_with(ENV_BLOCK_HEADER));
        assert_eq!(b[ENV_BLOCK_SIZE - 1], b'#');
        let got = env_block_decode(&b).unwrap();
        let want: Vec<(String, String)> = vars
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn grub_escaping() {
        let b = env_block_encode(&[("K", "back\\slash\nnew line")]).unwrap();
        let text = &b[ENV_BLOCK_HEADER.len()..];
        assert!(text.starts_with(b"K=back\\\\slash\\\nnew line\n#"));
        let got = env_block_decode(&b).unwrap();
        assert_eq!(
            got,
            vec![("K".to_string(), "back\\slash\nnew line".to_string())]
        );
    }

    #[test]
    fn matches_grub_editenv_layout() {
        // What `grub-editenv F create; grub-editenv F set A=1 B=x` writes, byte for byte.
        let mut want = b"# GRUB Environment Block\n# WARNING: Do not edit this file by tools other than grub-editenv!!!\nA=1\nB=x\n".to_vec();
        want.resize(ENV_BLOCK_SIZE, b'#');
        let got = env_block_decode(&want).unwrap();
        assert_eq!(
            got,
            vec![("A".into(), "1".into()), ("B".into(), "x".into())]
        );
    }

    #[test]
    fn exactly_full_block_fits_and_one_more_byte_does_not() {
        let overhead = ENV_BLOCK_HEADER.len() + "V=".len() + 1;
        let fits = "x".repeat(ENV_BLOCK_SIZE - overhead);
        let b = env_block_encode(&[("V", &fits)]).unwrap();
        assert_eq!(env_block_decode(&b).unwrap()[0].1, fits);
        let too_big = "x".repeat(ENV_BLOCK_SIZE - overhead + 1);
        match env_block_encode(&[("V", &too_big)]) {
            Err(BootError::EnvBlockTooLarge { needed, max }) => {
                assert_eq!((needed, max), (ENV_BLOCK_SIZE + 1, ENV_BLOCK_SIZE))
            }
            other => panic!("expected EnvBlockTooLarge, got {other:?}"),
        }
        // Escapes count towards the size.
        let escapes = "\\".repeat(ENV_BLOCK_SIZE / 2);
        assert!(matches!(
            env_block_encode(&[("V", &escapes)]),
            Err(BootError::EnvBlockTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_bad_names_values_and_duplicates() {
        for name in ["", "#x", "a=b", "a\nb", "a\\b", "a\0b"] {
            assert!(
                matches!(
                    env_block_encode(&[(name, "v")]),
                    Err(BootError::BadVarName { .. })
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            env_block_encode(&[("A", "x\0y")]),
            Err(BootError::BadVarValue { .. })
        ));
        assert!(matches!(
            env_block_encode(&[("A", "1"), ("A", "2")]),
            Err(BootError::DuplicateVar { .. })
        ));
    }

    #[test]
    fn rejects_bad_header_and_size() {
        let mut b = env_block_encode(&[("A", "1")]).unwrap();
        assert!(matches!(
            env_block_decode(&b[..1023]),
            Err(BootError::EnvBlockBadSize { len: 1023 })
        ));
        let mut longer = b.to_vec();
        longer.push(b'#');
        assert!(matches!(
            env_block_decode(&longer),
            Err(BootError::EnvBlockBadSize { len: 1025 })
        ));
        b[2] = b'g';
        assert!(matches!(
            env_block_decode(&b),
            Err(BootError::EnvBlockBadHeader)
        ));
        assert!(matches!(
            env_block_decode(&[0u8; 1024]),
            Err(BootError::EnvBlockBadHeader)
        ));
    }

    #[test]
    fn broken_lines_end_parsing_like_grub() {
        // GRUB looks for '=' across newlines: a line without one swallows the next line's name.
        let mut b = pad(b"# GRUB Environment Block\nA=1\ngarbage\nB=2\n");
        assert_eq!(
            env_block_decode(&b).unwrap(),
            vec![("A".into(), "1".into()), ("garbage\nB".into(), "2".into())]
        );
        // No '=' before the end of the block ends the parse; earlier variables survive.
        b = pad(b"# GRUB Environment Block\nA=1\ngarbage");
        assert_eq!(
            env_block_decode(&b).unwrap(),
            vec![("A".into(), "1".into())]
        );
        // A value without a newline before the end of the block is dropped.
        b = pad(b"# GRUB Environment Block\nA=1\nB=2");
        b[ENV_BLOCK_SIZE - 1] = b'x';
        let text_end = b"# GRUB Environment Block\nA=1\nB=2".len();
        b[text_end..].fill(0);
        assert_eq!(
            env_block_decode(&b).unwrap(),
            vec![("A".into(), "1".into())]
        );
        // NUL truncates a value as GRUB's C strings do.
        b = pad(b"# GRUB Environment Block\nA=1\0x\n");
        assert_eq!(
            env_block_decode(&b).unwrap(),
            vec![("A".into(), "1".into())]
        );
        // Comment lines in the middle are skipped.
        b = pad(b"# GRUB Environment Block\n# note\nA=1\n");
        assert_eq!(
            env_block_decode(&b).unwrap(),
            vec![("A".into(), "1".into())]
        );
    }

    #[test]
    fn grub_set_in_place_append_shrink_grow() {
        let mut b = env_block_encode(&[("A", "1"), ("B", "22"), ("C", "3")]).unwrap();
        let before = b;
        assert!(grub_envblk_set(&mut b, "A", "0"));
        // Same length: exactly one byte differs.
        assert_eq!(
            b.iter().zip(before.iter()).filter(|(x, y)| x != y).count(),
            1
        );
        assert!(grub_envblk_set(&mut b, "B", "2"));
        assert!(grub_envblk_set(&mut b, "C", "333"));
        assert!(grub_envblk_set(&mut b, "D", "x\\y"));
        assert_eq!(
            b,
            env_block_encode(&[("A", "0"), ("B", "2"), ("C", "333"), ("D", "x\\y")]).unwrap()
        );
        let mut full = env_block_encode(&[("V", &"x".repeat(990))]).unwrap();
        assert!(!grub_envblk_set(&mut full, "W", &"y".repeat(20)));
    }
}
