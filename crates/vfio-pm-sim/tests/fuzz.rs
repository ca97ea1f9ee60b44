//! Garbage in, no panic out: random scenario text, random ioctl arguments and random call
//! sequences on the model, with a deterministic PRNG; the model's invariants hold after
//! every call.

use std::os::fd::AsRawFd;
use std::time::Duration;
use vfio_pm::{ConformanceDevice, HostKnob, PciAddress, PowerDevice, RuntimeStatus, BAR0_REGION};
use vfio_pm_sim::scenario::Scenario;
use vfio_pm_sim::{run_on_model, DeviceConfig, Platform, SimDevice, SimHost};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "open",
    "reopen",
    "close",
    "settle",
    "ioctl",
    "config-read",
    "reset",
    "feature",
    "region-read",
    "region-write",
    "pmcsr",
    "knob",
    "platform",
    "timing-sensitive",
    "nosettle",
    "SET|4",
    "SET|WAKEUP",
    "PROBE|GET|3",
    "SET|3",
    "SET|5",
    "GET",
    "0xffffffff",
    "1<<31",
    "1<<99",
    "argsz=0",
    "argsz=4294967295",
    "argsz=16",
    "argsz=99999999999",
    "efd=A",
    "efd=B",
    "efd=",
    "fd=-1",
    "fd=badfd",
    "fd=file",
    "fd=99999999999",
    "reserved=7",
    "payload=00",
    "payload=0000000000000000ff",
    "payload=zz",
    "config",
    "bar0",
    "7",
    "9",
    "4294967295",
    "0",
    "0x34",
    "0xcc",
    "18446744073709551615",
    "1048577",
    "0300",
    "D3hot",
    "D0",
    "read",
    "control=on",
    "control=auto",
    "d3cold=0",
    "d3cold=1",
    "any",
    "d3cold",
    "#",
    "|",
    "=",
    "\u{e9}",
    "\t",
    "",
];

#[test]
fn random_scenario_text_never_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut parsed = 0;
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..rng.below(8) {
            for _ in 0..rng.below(6) {
                text.push_str(rng.pick(WORDS));
                text.push(if rng.below(5) == 0 { '|' } else { ' ' });
            }
            if rng.below(10) == 0 {
                // Raw garbage bytes, lossily made into text.
                let bytes: Vec<u8> = (0..rng.below(12)).map(|_| rng.next() as u8).collect();
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
            text.push('\n');
        }
        if let Ok(sc) = Scenario::parse("fuzz", &text) {
            parsed += 1;
            for p in Platform::ALL {
                let t = run_on_model(&sc, p);
                assert_eq!(t.lines.len(), sc.steps.len());
            }
        }
    }
    assert!(
        parsed > 100,
        "the generator should produce valid scenarios too ({parsed})"
    );
}

fn check_invariants(host: &SimHost, addr: PciAddress, pm_cap: bool) {
    let s = host.snapshot(addr).unwrap();
    if !s.open {
        assert!(!s.engaged && !s.wakeup_armed, "{s:?}");
    }
    if s.wakeup_armed {
        assert!(s.engaged, "{s:?}");
    }
    if s.suspended {
        // Only power/control=on with a failed resume (injected) leaves a reference on a
        // suspended device.
        if s.runtime_allowed {
            assert_eq!(s.usage, 0, "{s:?}");
        }
        // Without a PM capability and without D3cold, the PCI core leaves it in D0.
        assert!(s.power_state.is_d3() || !pm_cap, "{s:?}");
    }
    if s.open && !s.engaged {
        assert!(
            s.usage >= 1,
            "open and not engaged holds a reference: {s:?}"
        );
    }
    let o = host.observe(addr).unwrap();
    assert_eq!(o.runtime_status == RuntimeStatus::Suspended, s.suspended);
}

#[test]
fn random_calls_and_arguments_never_panic_and_keep_invariants() {
    let addr: PciAddress = "0000:00:05.0".parse().unwrap();
    let sib: PciAddress = "0000:00:05.1".parse().unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    let file = std::fs::File::open("/").unwrap();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for round in 0..40 {
        let platform = Platform::ALL[round % 2];
        let host = SimHost::builder()
            .platform(platform)
            .device(
                DeviceConfig::new(addr)
                    .intx(round % 3 == 0)
                    .dev_set(1)
                    .pm_capability(round % 5 != 0)
                    .disable_idle_d3(round % 7 == 0),
            )
            .device(DeviceConfig::new(sib).dev_set(1))
            .build()
            .unwrap();
        let mut dev: Option<SimDevice> = host.open(addr).ok();
        for _ in 0..400 {
            let op = rng.below(16);
            if let Some(d) = dev.as_mut() {
                match op {
                    0..=5 => {
                        let flags = match rng.below(3) {
                            0 => rng.next() as u32,
                            1 => (1 << (16 + rng.below(4))) | rng.below(8) as u32,
                            _ => 0x20000 | (3 + rng.below(3) as u32),
                        };
                        let argsz = match rng.below(4) {
                            0 => rng.next() as u32,
                            1 => u32::MAX,
                            _ => rng.below(24) as u32,
                        };
                        let mut payload: Vec<u8> =
                            (0..rng.below(24)).map(|_| rng.next() as u8).collect();
                        if payload.len() >= 4 {
                            let fd = match rng.below(5) {
                                0 => efd.as_raw_fd(),
                                1 => file.as_raw_fd(),
                                2 => -(rng.below(3) as i32),
                                3 => rng.next() as i32,
                                _ => 0x3fff_fff0,
                            };
                            payload[..4].copy_from_slice(&fd.to_ne_bytes());
                        }
                        let _ = d.device_feature(argsz, flags, &payload);
                    }
                    6 => {
                        let mut buf = vec![0u8; rng.below(40) as usize];
                        let offset = if rng.below(2) == 0 {
                            rng.next()
                        } else {
                            rng.below(4100)
                        };
                        let _ = d.region_read(rng.below(12) as u32, offset, &mut buf);
                    }
                    7 => {
                        let data: Vec<u8> = (0..rng.below(8)).map(|_| rng.next() as u8).collect();
                        let region = [7, 0, rng.below(12) as u32][rng.below(3) as usize];
                        let offset = [0xcc, 0x04, rng.next()][rng.below(3) as usize];
                        let _ = d.region_write(region, offset, &data);
                    }
                    8 => {
                        let _ = d.device_ioctl();
                        let _ = d.reset();
                    }
                    9 => {
                        let knob = match rng.below(4) {
                            0 => HostKnob::RuntimePmAllowed(false),
                            1 => HostKnob::RuntimePmAllowed(true),
                            2 => HostKnob::D3ColdAllowed(false),
                            _ => HostKnob::D3ColdAllowed(true),
                        };
                        d.set_host_knob(knob).unwrap();
                        d.host_config_read().unwrap();
                    }
                    10 => {
                        let _ = d.hot_reset();
                        let _ = d.bar_mmap_access(BAR0_REGION);
                    }
                    11 => {
                        let _ = d.raise_intx();
                        let _ = d.set_intx_masked(rng.below(2) == 0);
                    }
                    12 => {
                        let fails = rng.below(4) == 0;
                        host.set_resume_failure(addr, fails).unwrap();
                    }
                    13 => {
                        let _ = d.close();
                    }
                    14 => dev = host.open(addr).ok(),
                    _ => {
                        d.settle(Duration::ZERO).unwrap();
                    }
                }
            } else {
                host.set_resume_failure(addr, false).unwrap();
                dev = host.open(addr).ok();
            }
            check_invariants(&host, addr, round % 5 != 0);
            check_invariants(&host, sib, true);
        }
        let _ = efd.read();
    }
}
