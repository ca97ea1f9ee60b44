//! `vfio-pm-guest`: the in-guest conformance program of the QEMU harness (`cargo xtask qemu`).
//! See the library documentation for the phases and the console protocol.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(vfio_pm_guest::run(&args));
}
