//! A daemon that died leaves its mount point answering ENOTCONN ("Transport
//! endpoint is not connected"); mounting again first detaches that mount.

use std::io;
use std::path::Path;
use std::process::Command;
use tracing::info;

fn not_connected(result: io::Result<impl Sized>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Returns whether a stale mount was found and removed.
pub fn clean_stale_mount(mountpoint: &Path) -> io::Result<bool> {
    // stat may be answered from the kernel's cache; listing always asks the
    // (dead) daemon.
    let dead = not_connected(std::fs::metadata(mountpoint))
        || not_connected(std::fs::read_dir(mountpoint));
    if !dead {
        return Ok(false);
    }
    info!(mountpoint = %mountpoint.display(), "removing a stale mount left by a dead daemon");
    if super::session::detach(mountpoint).is_err() {
        // Not root: fusermount3 may unmount a FUSE mount its user owns.
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mountpoint)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "{} holds a dead mount that fusermount3 -uz could not remove",
                mountpoint.display()
            )));
        }
    }
    Ok(true)
}

/// Whether a credfs mount is already at `mountpoint` (checked after stale
/// ones are gone, so it is alive).
pub fn is_credfs_mount(mountpoint: &Path) -> bool {
    let wanted = mountpoint.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut fields = line.split(' ');
            fields.next() == Some("credfs") && fields.next() == Some(wanted.as_ref())
        })
}
