//! Booting test guests by hand (the tests below vmm's own launcher): one
//! QEMU TCG microvm command line, the TSC rate a TCG guest needs, and a
//! child that dies with the test.

use std::process::Child;

/// A child killed and reaped when dropped, a panic included.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The host's TSC rate in kHz, from `/proc/cpuinfo`: TCG cannot calibrate
/// the TSC without a PIT, so the guest is told (`tsc_early_khz=`), as vmm
/// does.
pub fn tsc_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("cpu MHz in /proc/cpuinfo");
    (mhz * 1000.0).round() as u64
}

/// `qemu-system-x86_64` arguments for a one-vCPU TCG microvm with
/// `mem_mib` of shareable memory (vhost-user needs it) and the serial
/// console on stdout; add `-kernel`, `-initrd`, `-append` ([`append`]) and
/// devices.
pub fn microvm_args(mem_mib: u32) -> Vec<String> {
    [
        // qboot: see banger_vmm's QBOOT (Debian's SeaBIOS microvm build
        // lets the initrd overwrite the ACPI tables).
        "-bios",
        "qboot.rom",
        "-M",
        "microvm,memory-backend=mem",
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem_mib}M,share=on"),
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        &mem_mib.to_string(),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The kernel command line: serial console, power off on panic and
/// reboot, the host's TSC rate, then `extra`.
pub fn append(extra: &str) -> String {
    format!(
        "console=ttyS0 reboot=k panic=-1 tsc_early_khz={} {extra}",
        tsc_khz()
    )
    .trim_end()
    .to_owned()
}

/// `vhost-device-vsock` for guest CID 3: QEMU's vhost-user socket at
/// `socket`, the host's hybrid-vsock socket at `uds`; returns once
/// `socket` exists.
pub fn vhost_vsock(socket: &std::path::Path, uds: &std::path::Path) -> Reaped {
    let child = std::process::Command::new("vhost-device-vsock")
        .arg("--guest-cid=3")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--uds-path={}", uds.display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start vhost-device-vsock (scripts/setup.sh --deps)");
    let vhost = Reaped(child);
    assert!(
        crate::wait::wait_until(std::time::Duration::from_secs(10), || socket.exists()),
        "vhost-device-vsock did not create {}",
        socket.display()
    );
    vhost
}
