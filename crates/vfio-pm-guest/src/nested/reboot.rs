//! The reboot step of the `nested-guest` phase (`vfiopm.reboot=1` on L2's kernel command
//! line): after every normal step passed, L2 reboots itself; L1's QEMU (run without
//! `-no-reboot`) resets the machine and boots L2 again with the same command line, and the
//! second boot checks that the device still runtime-suspends to D3cold and resumes for use.
//!
//! The second boot knows it is the second from a marker in CMOS NVRAM (index port 0x70, data
//! port 0x71, through `/dev/port`), which survives a system reset: QEMU's mc146818 RTC keeps
//! its 128 bytes of `cmos_data` across a reset (`rtc_reset_enter` in hw/rtc/mc146818rtc.c only
//! clears the shutdown byte 0x0f and the interrupt bits of registers B and C).
//!
//! The marker sits at [`MARKER_INDEX`]`..+4`. No one else uses those bytes: QEMU's
//! `pc_cmos_init`/`pc_cmos_init_late` (hw/i386/pc.c) and `x86_rtc_set_cpus_count`
//! (hw/i386/x86.c) write 0x10-0x3d, 0x5b-0x5d and 0x5f; SeaBIOS reads or writes only the
//! indices of its src/hw/rtc.h (0x00-0x0f, 0x10-0x3d, 0x5b-0x5d, 0x5f).
//!
//! The marker is never a reboot loop: the second boot clears it before anything else, and a
//! boot that finds a valid marker never reboots.

use crate::context::cmdline_value;
use crate::report::Reporter;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// First CMOS index of the marker (four bytes; see the module docs for why these).
pub const MARKER_INDEX: u8 = 0x60;
/// The marker's first two bytes.
pub const MAGIC: [u8; 2] = *b"VP";
/// The most reboots a run asks for (one: the second boot never reboots).
pub const MAX_REBOOTS: u8 = 1;
/// The CMOS index port ...
const CMOS_INDEX_PORT: u64 = 0x70;
/// ... and its data port.
const CMOS_DATA_PORT: u64 = 0x71;
/// The phase that reboots (its END line is printed before the reboot).
const PHASE: &str = "nested-guest";

/// The marker's bytes for a machine that has rebooted `reboots` times: magic, count, check.
pub fn encode(reboots: u8) -> [u8; 4] {
    [MAGIC[0], MAGIC[1], reboots, check_byte(reboots)]
}

fn check_byte(reboots: u8) -> u8 {
    !(MAGIC[0] ^ MAGIC[1] ^ reboots)
}

/// The reboot count of a valid marker; `None` (a first boot) for anything else: zeros, a
/// stale or garbage value, a count out of range.
pub fn decode(bytes: [u8; 4]) -> Option<u8> {
    let [m0, m1, reboots, check] = bytes;
    ([m0, m1] == MAGIC && check == check_byte(reboots) && (1..=MAX_REBOOTS).contains(&reboots))
        .then_some(reboots)
}

/// Whether the kernel command line asks for the reboot step (`vfiopm.reboot=1`).
pub fn requested(cmdline: &str) -> bool {
    cmdline_value(cmdline, "vfiopm.reboot") == Some("1")
}

/// What this boot does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// As without the step (not requested).
    Normal,
    /// The normal steps, then a reboot when they all passed.
    RebootAfter,
    /// The boot after the reboot: its own steps, never another reboot.
    SecondBoot {
        /// Reboots so far (from the marker).
        reboots: u8,
    },
}

/// The plan for a boot: `requested` from the command line, `marker` the decoded CMOS marker.
/// A marker without the request is ignored (and never leads to a reboot).
pub fn plan(requested: bool, marker: Option<u8>) -> Plan {
    match (requested, marker) {
        (false, _) => Plan::Normal,
        (true, None) => Plan::RebootAfter,
        (true, Some(reboots)) => Plan::SecondBoot { reboots },
    }
}

/// CMOS NVRAM through `/dev/port`.
#[derive(Debug)]
pub struct Cmos(File);

impl Cmos {
    /// Opens `/dev/port` (needs CAP_SYS_RAWIO: the guest program runs as root).
    pub fn open() -> io::Result<Self> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/port")
            .map(Self)
    }

    fn read(&self, index: u8) -> io::Result<u8> {
        self.0.write_all_at(&[index & 0x7f], CMOS_INDEX_PORT)?;
        let mut b = [0u8];
        self.0.read_exact_at(&mut b, CMOS_DATA_PORT)?;
        Ok(b[0])
    }

    fn write(&self, index: u8, value: u8) -> io::Result<()> {
        self.0.write_all_at(&[index & 0x7f], CMOS_INDEX_PORT)?;
        self.0.write_all_at(&[value], CMOS_DATA_PORT)
    }

    /// The marker's four bytes.
    pub fn read_marker(&self) -> io::Result<[u8; 4]> {
        let mut out = [0u8; 4];
        for (i, b) in (MARKER_INDEX..).zip(out.iter_mut()) {
            *b = self.read(i)?;
        }
        Ok(out)
    }

    /// Writes the marker's four bytes and reads them back.
    pub fn write_marker(&self, bytes: [u8; 4]) -> io::Result<()> {
        for (i, b) in (MARKER_INDEX..).zip(bytes) {
            self.write(i, b)?;
        }
        let back = self.read_marker()?;
        if back != bytes {
            return Err(io::Error::other(format!(
                "CMOS {MARKER_INDEX:#x}.. reads {back:02x?} after writing {bytes:02x?}"
            )));
        }
        Ok(())
    }
}

/// Decides this boot's plan from `/proc/cmdline` and CMOS. On the second boot the marker is
/// cleared here, before anything else (`l2-reboot-marker-cleared`). A CMOS that cannot be
/// read is a failed check and a boot without reboot.
pub fn this_boot(r: &mut Reporter) -> (Plan, Option<Cmos>) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !requested(&cmdline) {
        return (Plan::Normal, None);
    }
    let opened = Cmos::open().and_then(|c| c.read_marker().map(|m| (c, m)));
    let (cmos, raw) = match opened {
        Ok(x) => x,
        Err(e) => {
            r.check(
                "l2-reboot-marker",
                false,
                format!("CMOS via /dev/port: {e}"),
            );
            return (Plan::Normal, None);
        }
    };
    let plan = plan(true, decode(raw));
    if let Plan::SecondBoot { reboots } = plan {
        let cleared = cmos.write_marker([0; 4]);
        r.check(
            "l2-reboot-marker-cleared",
            cleared.is_ok(),
            format!("marker {raw:02x?} (reboots {reboots}) cleared: {cleared:?}"),
        );
        r.info("nested", format!("boot {}", u32::from(reboots) + 1));
    }
    (plan, Some(cmos))
}

/// The first boot's end: `VFIOPM INFO nested reboot-begin`, the marker, this boot's `END` and
/// `DONE` lines (the judge reads each boot's checks up to its `DONE`), sync, reboot. Returns
/// only when something failed (reported; the marker is cleared again).
pub fn reboot_now(r: &mut Reporter, cmos: &Cmos) {
    r.info("nested", "reboot-begin");
    let marker = encode(MAX_REBOOTS);
    if let Err(e) = cmos.write_marker(marker) {
        r.check("l2-reboot-marker", false, e);
        let _ = cmos.write_marker([0; 4]);
        return;
    }
    r.check(
        "l2-reboot-marker",
        true,
        format!("CMOS {MARKER_INDEX:#x}.. = {marker:02x?}; rebooting"),
    );
    r.end(PHASE);
    r.done();
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    let _ = cmos.write_marker([0; 4]);
    r.check("l2-reboot", false, format!("reboot(RB_AUTOBOOT): {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips_and_garbage_is_a_first_boot() {
        assert_eq!(decode(encode(1)), Some(1));
        assert_eq!(decode([0; 4]), None);
        assert_eq!(decode([0xff; 4]), None);
        // Every single-byte corruption of a valid marker is refused.
        let good = encode(1);
        for i in 0..4 {
            for flip in [1u8, 0x80, 0xff] {
                let mut bad = good;
                bad[i] ^= flip;
                assert_eq!(decode(bad), None, "{bad:02x?}");
            }
        }
        // A well-formed marker with a count out of range is refused (no reboot loop).
        assert_eq!(decode(encode(0)), None);
        assert_eq!(decode(encode(2)), None);
        assert_eq!(decode(encode(0xff)), None);
    }

    #[test]
    fn the_marker_avoids_the_indices_qemu_and_seabios_use() {
        let used = (0x00..=0x3du8).chain(0x5b..=0x5d).chain([0x5f]);
        let marker = MARKER_INDEX..MARKER_INDEX + 4;
        for i in used {
            assert!(!marker.contains(&i), "{i:#x}");
        }
        assert!(
            u32::from(MARKER_INDEX) + 4 <= 0x80,
            "QEMU's CMOS has 128 bytes"
        );
    }

    #[test]
    fn only_a_requested_first_boot_reboots() {
        assert!(requested("quiet vfiopm.reboot=1"));
        assert!(!requested("quiet"));
        assert!(!requested("vfiopm.reboot=0 vfiopm.reboot=yes"));
        assert_eq!(plan(false, None), Plan::Normal);
        assert_eq!(plan(false, Some(1)), Plan::Normal);
        assert_eq!(plan(true, None), Plan::RebootAfter);
        assert_eq!(plan(true, Some(1)), Plan::SecondBoot { reboots: 1 });
    }
}
