//! The `sd_notify` protocol, without libsystemd: one datagram per state.

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use tracing::warn;

/// Tells systemd (Type=notify) about our state when it started us.
pub fn notify(state: &str) {
    if let Err(e) = send(state, None) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Sends `state` with a descriptor (`FDSTORE=1`), when systemd started us.
pub fn send_with_fd(state: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    send(state, Some(fd))
}

fn send(state: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let address = match socket.as_encoded_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddrUnix::new_abstract_name(abstract_name)?,
        None => SocketAddrUnix::new(PathBuf::from(&socket))?,
    };
    let datagram = std::os::unix::net::UnixDatagram::unbound()?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg_addr(
        &datagram,
        &address,
        &[IoSlice::new(state.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// `RELOADING=1` with the monotonic time systemd asks reloads to carry.
pub fn reloading() -> String {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}
