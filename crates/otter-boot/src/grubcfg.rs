//! The `grub.cfg` that picks and counts down the slots, and the per-slot `bootenv`.

use std::fmt::Write as _;

use crate::envblock::{ENV_BLOCK_SIZE, env_block_decode, env_block_encode};
use crate::error::{BootError, Result};
use crate::state::Slot;
use crate::store::{BACKUP_FILE, PRIMARY_FILE, STATE_DIR};

/// Path of the per-slot kernel arguments file inside a slot's root filesystem.
pub const SLOT_BOOTENV_PATH: &str = "/boot/otter/bootenv";
/// Variable in [`SLOT_BOOTENV_PATH`] holding extra kernel arguments.
pub const SLOT_CMDLINE_VAR: &str = "OTTER_CMDLINE";
/// Kernel console arguments for x86_64 boards: serial first for logs, the screen too.
pub const CONSOLE_X86_64: &str = "console=ttyS0,115200 console=tty0";
/// Kernel console arguments for arm64 boards (PL011 UART as on QEMU virt).
pub const CONSOLE_ARM64: &str = "console=ttyAMA0,115200 console=tty0";

/// Parameters of the generated `grub.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubConfig {
    /// GPT partition number of `otter-root-a` on the boot disk.
    pub slot_a_partnum: u32,
    /// GPT partition number of `otter-root-b` on the boot disk.
    pub slot_b_partnum: u32,
    /// Kernel console arguments, e.g. [`CONSOLE_X86_64`].
    pub console_args: String,
    /// Extra kernel arguments for both slots (a slot adds its own through its `bootenv`).
    pub extra_cmdline: String,
    /// Seconds to wait for ESC (which opens a manual menu) before booting; 0 boots at once.
    pub timeout_secs: u32,
}

impl Default for GrubConfig {
    fn default() -> Self {
        GrubConfig {
            slot_a_partnum: 2,
            slot_b_partnum: 3,
            console_args: CONSOLE_X86_64.to_string(),
            extra_cmdline: String::new(),
            timeout_secs: 0,
        }
    }
}

impl GrubConfig {
    fn partnum(&self, s: Slot) -> u32 {
        match s {
            Slot::A => self.slot_a_partnum,
            Slot::B => self.slot_b_partnum,
        }
    }
}

/// Splits a kernel command line into arguments the way Linux does (whitespace outside double
/// quotes) and removes the quotes: GRUB's `linux` re-quotes an argument that contains spaces
/// (`"a=b c"`), which Linux reads back as the same parameter. GRUB escapes quotes and
/// backslashes with backslashes Linux does not understand, so other quoting is rejected.
pub fn kernel_args(cmdline: &str) -> Result<Vec<String>> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut any = false;
    for c in cmdline.chars() {
        if c == '"' {
            in_quote = !in_quote;
            cur.push(c);
            any = true;
        } else if c.is_whitespace() && !in_quote {
            if any {
                args.push(std::mem::take(&mut cur));
                any = false;
            }
        } else {
            cur.push(c);
            any = true;
        }
    }
    if any {
        args.push(cur);
    }
    args.into_iter()
        .map(|raw| {
            let bad = || BootError::BadKernelArg { arg: raw.clone() };
            if raw.contains(['\\', '\'']) {
                return Err(bad());
            }
            let quotes = raw.matches('"').count();
            if quotes == 0 {
                return Ok(raw);
            }
            // Allowed: "whole arg" or name="whole value".
            let ok_whole = raw.starts_with('"') && raw.ends_with('"');
            let ok_value = raw
                .find('"')
                .is_some_and(|i| i > 0 && raw[..i].ends_with('='))
                && raw.ends_with('"');
            if quotes != 2 || !(ok_whole || ok_value) {
                return Err(bad());
            }
            Ok(raw.replace('"', ""))
        })
        .collect()
}

fn check_user_args(what: &str, cmdline: &str) -> Result<Vec<String>> {
    let args = kernel_args(cmdline)?;
    if let Some(a) = args.iter().find(|a| a.starts_with("otter.")) {
        return Err(BootError::BadGrubConfig(format!(
            "{what} must not set {a:?}: otter.* arguments are written by the boot script"
        )));
    }
    Ok(args)
}

/// One GRUB script word, single-quoted (callers ensure it holds no single quote).
fn word(s: &str) -> String {
    format!("'{s}'")
}

/// Generates the A/B `grub.cfg` (see docs/boot-slots.md for a walk through it).
pub fn grub_cfg(c: &GrubConfig) -> Result<String> {
    if c.slot_a_partnum == 0 || c.slot_b_partnum == 0 || c.slot_a_partnum == c.slot_b_partnum {
        return Err(BootError::BadGrubConfig(format!(
            "slot partition numbers must be distinct and non-zero, got A={} B={}",
            c.slot_a_partnum, c.slot_b_partnum
        )));
    }
    let mut fixed: Vec<String> = check_user_args("console_args", &c.console_args)?;
    fixed.extend(check_user_args("extra_cmdline", &c.extra_cmdline)?);
    let fixed_words: String = fixed.iter().map(|a| format!(" {}", word(a))).collect();
    let vars = "ORDER A_OK A_TRY B_OK B_TRY";

    let mut s = String::new();
    // `writeln!` into a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        s,
        r#"# Otter A/B boot script, generated by otter-boot. Do not edit.
# Boot state: GRUB environment blocks /{dir}/{prim} (primary) and /{dir}/{bak}
# (backup) on this partition. ORDER ("A B"/"B A"), A_OK/B_OK (0/1: committed good),
# A_TRY/B_TRY (0-3: trial boots left). See docs/boot-slots.md.

# $root is the boot partition (prefix /EFI/BOOT on it); the slots are partitions of the same disk.
set otter_env="($root)/{dir}/{prim}"
set otter_env_bak="($root)/{dir}/{bak}"
if regexp --set=1:otter_disk '^\(?([^,()]+),' "$root"; then
  set otter_disk_from=root
else
  set otter_disk=hd0
  set otter_disk_from=fallback
fi

# Loads one state file; true only if every value is in its allowed set. Only the named
# variables are read, so nothing else written into the block can change GRUB's behaviour.
function otter_load {{
  unset ORDER
  unset A_OK
  unset A_TRY
  unset B_OK
  unset B_TRY
  set otter_valid=0
  if load_env --file "$1" {vars}; then
    if regexp '^(A B|B A)$' "$ORDER"; then
      if regexp '^[01]$' "$A_OK"; then
        if regexp '^[0-3]$' "$A_TRY"; then
          if regexp '^[01]$' "$B_OK"; then
            if regexp '^[0-3]$' "$B_TRY"; then
              set otter_valid=1
            fi
          fi
        fi
      fi
    fi
  fi
  [ "$otter_valid" = 1 ]
}}

# Persists a decremented try counter ($1) before the trial boot. From the primary: the primary
# first (one byte changes), then all variables into the backup, which re-syncs a backup left
# behind by a power cut. From the backup: the backup only (the primary is invalid).
function otter_save {{
  if [ "$otter_src" = primary ]; then
    save_env --file "$otter_env" "$1"
    save_env --file "$otter_env_bak" {vars}
  elif [ "$otter_src" = backup ]; then
    save_env --file "$otter_env_bak" "$1"
  fi
}}

# Boots slot $1 from partition number $2 with root label $3; $4 is 1 for a trial boot.
# Returns only if the kernel or initrd cannot be loaded.
function otter_boot {{
  set otter_part="($otter_disk,gpt$2)"
  unset OTTER_CMDLINE
  if [ -f "$otter_part{bootenv}" ]; then
    load_env --file "$otter_part{bootenv}" {cmdvar}
  fi
  echo "otter: booting slot $1 from $otter_part, otter.try=$4, slot args: $OTTER_CMDLINE"
  if linux "$otter_part/vmlinuz"{fixed_words} ${cmdvar} root=PARTLABEL=$3 ro panic=5 otter.slot=$1 otter.try=$4; then
    if initrd "$otter_part/initrd.img"; then
      boot
    fi
  fi
  echo "otter: slot $1 could not be loaded from $otter_part"
}}
"#,
        dir = STATE_DIR,
        prim = PRIMARY_FILE,
        bak = BACKUP_FILE,
        bootenv = SLOT_BOOTENV_PATH,
        cmdvar = SLOT_CMDLINE_VAR,
    );

    for slot in Slot::ALL {
        let x = slot.as_str();
        let n = c.partnum(slot);
        let label = slot.label();
        let _ = write!(
            s,
            r#"
# Slot {x}: a trial boot if tries are left (decremented and saved first), else boot it if good.
function otter_slot_{x} {{
  if [ "${x}_TRY" != 0 ]; then
    if [ "${x}_TRY" = 3 ]; then
      set {x}_TRY=2
    elif [ "${x}_TRY" = 2 ]; then
      set {x}_TRY=1
    else
      set {x}_TRY=0
    fi
    echo "otter: slot {x}: trial boot, {x}_TRY now ${x}_TRY"
    otter_save {x}_TRY
    otter_boot {x} {n} {label} 1
  elif [ "${x}_OK" = 1 ]; then
    echo "otter: slot {x}: committed good"
    otter_boot {x} {n} {label} 0
  else
    echo "otter: slot {x}: not good and no tries left, skipping"
  fi
}}
"#
        );
    }

    let _ = write!(
        s,
        r#"
# Manual entries, shown only when ESC interrupts the countdown; they change no state.
menuentry 'Otter slot A (manual)' {{
  otter_boot A {pa} {la} 0
}}
menuentry 'Otter slot B (manual)' {{
  otter_boot B {pb} {lb} 0
}}

set otter_manual=0
"#,
        pa = c.slot_a_partnum,
        pb = c.slot_b_partnum,
        la = Slot::A.label(),
        lb = Slot::B.label(),
    );
    if c.timeout_secs > 0 {
        let _ = write!(
            s,
            r#"echo "otter: press ESC within {t} s for the boot menu"
if sleep --interruptible {t}; then
  set otter_manual=0
else
  set otter_manual=1
  set timeout=-1
  export otter_disk
fi
"#,
            t = c.timeout_secs
        );
    }
    let _ = write!(
        s,
        r#"
if [ "$otter_manual" = 0 ]; then
  if otter_load "$otter_env"; then
    set otter_src=primary
  elif otter_load "$otter_env_bak"; then
    set otter_src=backup
  else
    # Both copies invalid: boot A, then B, and write nothing.
    set otter_src=default
    set ORDER="A B"
    set A_OK=1
    set A_TRY=0
    set B_OK=1
    set B_TRY=0
  fi
  echo "otter: state from $otter_src (disk $otter_disk from $otter_disk_from): ORDER=$ORDER A_OK=$A_OK A_TRY=$A_TRY B_OK=$B_OK B_TRY=$B_TRY"
  if [ "$ORDER" = "B A" ]; then
    otter_slot_B
    otter_slot_A
    echo "otter: no bootable slot could be loaded, booting the primary B anyway"
    otter_boot B {pb} {lb} 0
  else
    otter_slot_A
    otter_slot_B
    echo "otter: no bootable slot could be loaded, booting the primary A anyway"
    otter_boot A {pa} {la} 0
  fi
  # Never stop at a prompt on an unattended device.
  echo "otter: nothing could be booted, rebooting in 10 s"
  sleep 10
  reboot
fi
"#,
        pa = c.slot_a_partnum,
        pb = c.slot_b_partnum,
        la = Slot::A.label(),
        lb = Slot::B.label(),
    );
    Ok(s)
}

/// Content of a slot's [`SLOT_BOOTENV_PATH`]: extra kernel arguments GRUB adds when booting
/// that slot, so an OS update can change its own command line.
pub fn slot_bootenv(cmdline: &str) -> Result<[u8; ENV_BLOCK_SIZE]> {
    let args = check_user_args(SLOT_CMDLINE_VAR, cmdline)?;
    // GRUB splits the unquoted variable at spaces and never re-reads quotes, so each argument
    // must be a plain word.
    if let Some(a) = args.iter().find(|a| a.contains(char::is_whitespace)) {
        return Err(BootError::BadKernelArg { arg: a.clone() });
    }
    if cmdline.contains('"') {
        return Err(BootError::BadKernelArg {
            arg: cmdline.to_string(),
        });
    }
    env_block_encode(&[(SLOT_CMDLINE_VAR, &args.join(" "))])
}

/// Reads the kernel arguments back from a slot's `bootenv` block (empty if the variable is
/// absent).
pub fn parse_slot_bootenv(b: &[u8]) -> Result<String> {
    Ok(env_block_decode(b)?
        .into_iter()
        .rev()
        .find(|(n, _)| n == SLOT_CMDLINE_VAR)
        .map(|(_, v)| v)
        .unwrap_or_default())
}
