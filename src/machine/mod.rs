//! Machines: QEMU guests booted from images, and existing hosts reached over SSH.

pub mod accel;
pub mod console;
pub mod ports;
pub mod qemu;
pub mod rundir;
pub mod spawn;
pub mod ssh;
pub mod vm;
