//! The kernel side: the `fuser` adapter, mounting, handing the connection
//! to the next daemon, and recovering a mount point a dead daemon left
//! behind.

mod adapter;
pub mod handover;
mod session;
mod stale;

pub use adapter::FuseAdapter;
pub use session::{MountOptions, Mounted, adopt, mount};
pub use stale::{clean_stale_mount, is_credfs_mount};
