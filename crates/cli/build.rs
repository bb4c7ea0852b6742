//! Links `berth` as a position-dependent executable. A position-independent
//! one (the toolchain's default) makes the dynamic loader apply some 44,000
//! relocations at every start, reading 1 MiB of relocation records and
//! writing 700 KiB of pointers: about 200 page faults before `main`, a
//! good part of a short command's whole cost. `berth` is run once per
//! command an agent runs, so its start is paid each time; what it gives up
//! is a random load address for its own code (its libraries, stack and
//! heap are still placed at random).
fn main() {
    println!("cargo::rustc-link-arg-bin=berth=-no-pie");
}
