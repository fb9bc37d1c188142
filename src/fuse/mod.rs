//! The kernel side: the `fuser` adapter, mounting, and recovering a mount
//! point a dead daemon left behind.

mod adapter;
mod session;
mod stale;

pub use adapter::FuseAdapter;
pub use session::{MountOptions, mount};
pub use stale::{clean_stale_mount, is_credfs_mount};
