//! The A/B boot state and its transitions, and a Rust model of the GRUB script's decision.

use std::fmt;
use std::str::FromStr;

use crate::envblock::{ENV_BLOCK_SIZE, env_block_decode, pad, render};
use crate::error::{BootError, Result};

/// Most tries a slot can get: the GRUB script decrements with an if-chain over 3, 2, 1.
pub const MAX_TRIES: u8 = 3;

/// Names of the boot state variables, in the order they are written into the block.
///
/// The order is part of the power-cut argument (docs/boot-slots.md): every value has a fixed width,
/// so a write cut after any byte leaves a block whose variables are each either old or new.
pub const STATE_VARS: [&str; 5] = ["ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"];

/// One of the two root filesystem slots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// GPT partition label of the slot's root filesystem.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "otter-root-a",
            Slot::B => "otter-root-b",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = BootError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            _ => Err(BootError::BadSlot(s.to_string())),
        }
    }
}

/// Per-slot state: committed good, and trial boots left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SlotState {
    pub good: bool,
    pub tries: u8,
}

impl SlotState {
    /// Whether GRUB would boot this slot when it comes up in ORDER.
    pub fn bootable(&self) -> bool {
        self.tries > 0 || self.good
    }
}

/// The whole boot state, as stored in the GRUB environment block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootState {
    /// `order[0]` is the primary slot. Always two different slots.
    pub order: [Slot; 2],
    pub a: SlotState,
    pub b: SlotState,
}

impl BootState {
    /// The state written at image build time: slot A good and primary, B empty.
    pub fn factory() -> Self {
        BootState {
            order: [Slot::A, Slot::B],
            a: SlotState {
                good: true,
                tries: 0,
            },
            b: SlotState {
                good: false,
                tries: 0,
            },
        }
    }

    /// A fresh state after both stored copies were lost: the slot that is running is the only
    /// one known to work.
    pub fn recovered(booted: Slot) -> Self {
        let mut s = BootState {
            order: [booted, booted.other()],
            a: SlotState::default(),
            b: SlotState::default(),
        };
        s.slot_mut(booted).good = true;
        s
    }

    pub fn primary(&self) -> Slot {
        self.order[0]
    }

    pub fn slot(&self, s: Slot) -> &SlotState {
        match s {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    pub fn slot_mut(&mut self, s: Slot) -> &mut SlotState {
        match s {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    fn put_first(&mut self, s: Slot) {
        self.order = [s, s.other()];
    }

    /// Makes `s` unbootable (before writing into it, or after it failed). If it was the primary
    /// the other slot becomes primary.
    pub fn mark_bad(&mut self, s: Slot) {
        *self.slot_mut(s) = SlotState {
            good: false,
            tries: 0,
        };
        if self.order[0] == s {
            self.put_first(s.other());
        }
    }

    /// Arms a trial boot of `s` with `tries` boots (clamped to 1..=3, the range GRUB's script
    /// can count down) and makes it primary. Only after the slot's image was fully written and
    /// verified.
    pub fn set_try(&mut self, s: Slot, tries: u8) {
        *self.slot_mut(s) = SlotState {
            good: false,
            tries: tries.clamp(1, MAX_TRIES),
        };
        self.put_first(s);
    }

    /// Marks `s` good (health checks passed) and primary.
    pub fn commit(&mut self, s: Slot) {
        *self.slot_mut(s) = SlotState {
            good: true,
            tries: 0,
        };
        self.put_first(s);
    }

    /// What the GRUB script boots next from this state, without changing it: the first slot in
    /// ORDER with tries left (a trial boot) or committed good; if none, the primary anyway.
    pub fn next_boot(&self) -> Option<(Slot, bool)> {
        for s in self.order {
            let st = self.slot(s);
            if st.tries > 0 {
                return Some((s, true));
            }
            if st.good {
                return Some((s, false));
            }
        }
        Some((self.order[0], false))
    }

    /// Like [`next_boot`](Self::next_boot), and also applies the decrement GRUB saves before a
    /// trial boot.
    pub fn grub_boot_step(&mut self) -> Option<(Slot, bool)> {
        let next = self.next_boot();
        if let Some((s, true)) = next {
            self.slot_mut(s).tries -= 1;
        }
        next
    }

    /// Every valid state (128), for exhaustive tests.
    pub fn all() -> Vec<BootState> {
        let mut out = Vec::new();
        for order in [[Slot::A, Slot::B], [Slot::B, Slot::A]] {
            for a_good in [false, true] {
                for a_tries in 0..=MAX_TRIES {
                    for b_good in [false, true] {
                        for b_tries in 0..=MAX_TRIES {
                            out.push(BootState {
                                order,
                                a: SlotState {
                                    good: a_good,
                                    tries: a_tries,
                                },
                                b: SlotState {
                                    good: b_good,
                                    tries: b_tries,
                                },
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// The variables as GRUB sees them, in block order.
    pub fn to_vars(&self) -> [(&'static str, &'static str); 5] {
        fn ok(s: &SlotState) -> &'static str {
            if s.good { "1" } else { "0" }
        }
        fn tries(s: &SlotState) -> &'static str {
            ["0", "1", "2", "3"][usize::from(s.tries.min(MAX_TRIES))]
        }
        let order = match self.order[0] {
            Slot::A => "A B",
            Slot::B => "B A",
        };
        [
            ("ORDER", order),
            ("A_OK", ok(&self.a)),
            ("A_TRY", tries(&self.a)),
            ("B_OK", ok(&self.b)),
            ("B_TRY", tries(&self.b)),
        ]
    }

    /// The 1024-byte GRUB environment block for this state (about 70 bytes of content, so
    /// everything that changes lies in the first sector).
    pub fn to_env_block(&self) -> [u8; ENV_BLOCK_SIZE] {
        pad(&render(&self.to_vars()))
    }

    /// Parses and validates a block exactly as the GRUB script does: the last occurrence of each
    /// variable counts, other variables are ignored, every value must be in its allowed set.
    pub fn from_env_block(b: &[u8]) -> Result<Self> {
        Self::from_vars(&env_block_decode(b)?)
    }

    /// Validates decoded variables like the GRUB script (see [`from_env_block`](Self::from_env_block)).
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self> {
        let get = |name: &'static str| -> Result<&str> {
            vars.iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or(BootError::MissingVar { name })
        };
        let bad = |name: &'static str, value: &str, allowed: &'static str| BootError::BadValue {
            name,
            value: value.to_string(),
            allowed,
        };
        let order = match get("ORDER")? {
            "A B" => [Slot::A, Slot::B],
            "B A" => [Slot::B, Slot::A],
            v => return Err(bad("ORDER", v, "\"A B\" or \"B A\"")),
        };
        let ok = |name: &'static str| -> Result<bool> {
            match get(name)? {
                "0" => Ok(false),
                "1" => Ok(true),
                v => Err(bad(name, v, "0 or 1")),
            }
        };
        let tries = |name: &'static str| -> Result<u8> {
            match get(name)? {
                "0" => Ok(0),
                "1" => Ok(1),
                "2" => Ok(2),
                "3" => Ok(3),
                v => Err(bad(name, v, "0, 1, 2 or 3")),
            }
        };
        Ok(BootState {
            order,
            a: SlotState {
                good: ok("A_OK")?,
                tries: tries("A_TRY")?,
            },
            b: SlotState {
                good: ok("B_OK")?,
                tries: tries("B_TRY")?,
            },
        })
    }
}

impl Default for BootState {
    fn default() -> Self {
        BootState::factory()
    }
}

/// Which slot the running system was booted from, and whether as a trial boot, from the kernel
/// command line (`/proc/cmdline`) written by the GRUB script (`otter.slot=A|B`, `otter.try=1`).
pub fn parse_booted_slot(proc_cmdline: &str) -> Option<(Slot, bool)> {
    let mut slot = None;
    let mut is_try = false;
    // Later arguments override earlier ones, as for kernel parameters.
    for word in proc_cmdline.split_ascii_whitespace() {
        if let Some(v) = word.strip_prefix("otter.slot=") {
            slot = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("otter.try=") {
            is_try = v == "1";
        }
    }
    slot.map(|s| (s, is_try))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_basics() {
        assert_eq!(Slot::A.to_string(), "A");
        assert_eq!("b".parse::<Slot>().unwrap(), Slot::B);
        assert_eq!("A".parse::<Slot>().unwrap(), Slot::A);
        assert!("C".parse::<Slot>().is_err());
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.label(), "otter-root-b");
    }

    #[test]
    fn factory_block_is_small_and_round_trips() {
        let f = BootState::factory();
        let b = f.to_env_block();
        let text_len = b.iter().rposition(|&c| c != b'#').unwrap() + 1;
        assert!(
            text_len < 128,
            "content must stay well inside the first sector: {text_len}"
        );
        assert_eq!(
            &b[..text_len],
            b"# GRUB Environment Block\nORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n"
        );
        assert_eq!(BootState::from_env_block(&b).unwrap(), f);
        assert_eq!(f.next_boot(), Some((Slot::A, false)));
    }

    #[test]
    fn all_states_round_trip_with_fixed_layout() {
        let len = BootState::factory()
            .to_env_block()
            .iter()
            .rposition(|&c| c != b'#');
        for s in BootState::all() {
            let b = s.to_env_block();
            assert_eq!(BootState::from_env_block(&b).unwrap(), s);
            assert_eq!(
                b.iter().rposition(|&c| c != b'#'),
                len,
                "layout must not depend on values"
            );
        }
    }

    #[test]
    fn validation_rejects_out_of_set_values_and_missing_vars() {
        let base = BootState::factory().to_vars();
        for (i, bad) in [
            (0, "A A"),
            (0, "AB"),
            (0, "a b"),
            (1, "2"),
            (2, "4"),
            (2, ""),
            (4, "-1"),
        ] {
            let mut vars = base;
            vars[i].1 = bad;
            let b = crate::env_block_encode(&vars).unwrap();
            assert!(
                matches!(
                    BootState::from_env_block(&b),
                    Err(BootError::BadValue { .. })
                ),
                "{vars:?}"
            );
        }
        let b = crate::env_block_encode(&base[..4]).unwrap();
        assert!(matches!(
            BootState::from_env_block(&b),
            Err(BootError::MissingVar { name: "B_TRY" })
        ));
        // Extra variables are ignored; the last duplicate wins, as with GRUB's load_env.
        let mut vars = base.to_vec();
        vars.push(("OTHER", "x"));
        let mut text = render(&vars);
        text.extend_from_slice(b"A_OK=0\n");
        let s = BootState::from_env_block(&pad(&text)).unwrap();
        assert!(!s.a.good);
    }

    #[test]
    fn install_try_commit_flow() {
        let mut s = BootState::factory();
        s.mark_bad(Slot::B);
        assert_eq!(s.next_boot(), Some((Slot::A, false)));
        s.set_try(Slot::B, 1);
        assert_eq!(s.primary(), Slot::B);
        assert_eq!(s.next_boot(), Some((Slot::B, true)));
        // GRUB decrements before booting the trial.
        assert_eq!(s.grub_boot_step(), Some((Slot::B, true)));
        assert_eq!(
            s.b,
            SlotState {
                good: false,
                tries: 0
            }
        );
        // If the trial hangs or panics, the next boot falls back to A.
        assert_eq!(s.next_boot(), Some((Slot::A, false)));
        s.commit(Slot::B);
        assert_eq!(
            s.b,
            SlotState {
                good: true,
                tries: 0
            }
        );
        assert_eq!(s.next_boot(), Some((Slot::B, false)));
        assert_eq!(s.grub_boot_step(), Some((Slot::B, false)));
        assert_eq!(s.next_boot(), Some((Slot::B, false)));
    }

    #[test]
    fn failed_try_with_several_tries_falls_back_after_they_run_out() {
        let mut s = BootState::factory();
        s.mark_bad(Slot::B);
        s.set_try(Slot::B, 3);
        for left in [2, 1, 0] {
            assert_eq!(s.grub_boot_step(), Some((Slot::B, true)));
            assert_eq!(s.b.tries, left);
        }
        assert_eq!(s.grub_boot_step(), Some((Slot::A, false)));
        assert_eq!(s.grub_boot_step(), Some((Slot::A, false)));
        assert_eq!(
            s.a,
            SlotState {
                good: true,
                tries: 0
            }
        );
        // The agent sees it booted A while B was primary: it marks B bad, A becomes primary.
        s.mark_bad(Slot::B);
        assert_eq!(s.order, [Slot::A, Slot::B]);
    }

    #[test]
    fn set_try_clamps_tries() {
        let mut s = BootState::factory();
        s.set_try(Slot::B, 9);
        assert_eq!(s.b.tries, MAX_TRIES);
        s.set_try(Slot::B, 0);
        assert_eq!(s.b.tries, 1);
    }

    #[test]
    fn mark_bad_of_primary_moves_it_last() {
        let mut s = BootState::factory();
        s.commit(Slot::B);
        assert_eq!(s.order, [Slot::B, Slot::A]);
        s.mark_bad(Slot::B);
        assert_eq!(s.order, [Slot::A, Slot::B]);
        assert_eq!(s.next_boot(), Some((Slot::A, false)));
        // Marking the non-primary bad keeps the order.
        s.mark_bad(Slot::B);
        assert_eq!(s.order, [Slot::A, Slot::B]);
    }

    #[test]
    fn nothing_bootable_boots_primary_anyway() {
        let mut s = BootState::factory();
        s.mark_bad(Slot::A);
        assert_eq!(s.order, [Slot::B, Slot::A]);
        assert_eq!(s.next_boot(), Some((Slot::B, false)));
        assert_eq!(s.grub_boot_step(), Some((Slot::B, false)));
    }

    #[test]
    fn recovered_state() {
        let s = BootState::recovered(Slot::B);
        assert_eq!(s.order, [Slot::B, Slot::A]);
        assert!(s.b.good && !s.a.good);
    }

    #[test]
    fn booted_slot_from_cmdline() {
        let c = "BOOT_IMAGE=(hd0,gpt3)/vmlinuz root=PARTLABEL=otter-root-b ro otter.slot=B panic=5 console=ttyS0,115200 otter.try=1\n";
        assert_eq!(parse_booted_slot(c), Some((Slot::B, true)));
        assert_eq!(
            parse_booted_slot("root=/dev/sda1 otter.slot=A quiet"),
            Some((Slot::A, false))
        );
        assert_eq!(parse_booted_slot("root=/dev/sda1 quiet"), None);
        assert_eq!(parse_booted_slot("otter.slot=C"), None);
        assert_eq!(parse_booted_slot("xotter.slot=A"), None);
        assert_eq!(
            parse_booted_slot("otter.slot=A otter.try=0"),
            Some((Slot::A, false))
        );
    }
}
