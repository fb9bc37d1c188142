//! The core tier: `CredFs` driven in process, without root, a mount or a
//! server. The real-mount suite (the other files in `tests/`) checks the
//! same rules through the kernel.

mod access;
mod adoption;
mod archives;
mod harness;
mod registries;
