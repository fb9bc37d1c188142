//! Handing the live FUSE connection to the next daemon, so that a crash, a
//! restart or an upgrade never takes the mount away from readers (nor from
//! containers that bound a path inside it).
//!
//! The connection lives as long as one descriptor of it is open. After
//! mounting, the daemon gives a copy to systemd's file descriptor store
//! (`FDSTORE=1`, named `fuse-<epoch>`); a daemon started with it in
//! `LISTEN_FDS` adopts it instead of mounting. Without systemd, `credfs
//! mount --takeover` asks the running daemon for it over a unix socket. A
//! new daemon then asks the kernel to send again what the old one read but
//! never answered (`FUSE_NOTIFY_RESEND`, Linux 6.9+).

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

/// The name a connection is stored under: `fuse-<epoch>`.
const NAME_PREFIX: &str = "fuse-";
const REQUEST: &[u8] = b"takeover 1\n";
/// How long a new daemon waits for the old one to hand over and leave.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// A live connection of the daemon before this one.
pub struct Inherited {
    pub fd: OwnedFd,
    /// The handle epoch of the daemon that served it last.
    pub epoch: u16,
}

impl Inherited {
    /// The epoch of this daemon's handles: never the one before's, and not
    /// simply the next number either. A daemon that died before it could
    /// store its own epoch gave out handles under the next number; a new
    /// one taking it again would take those handles (another caller's
    /// files) for its own.
    pub fn next_epoch(&self) -> u16 {
        let fresh = fresh_epoch();
        if fresh == self.epoch {
            fresh.wrapping_add(1).max(1)
        } else {
            fresh
        }
    }
}

/// The epoch of a daemon that mounts afresh: different from one started a
/// moment before on the same connection (the clock in milliseconds).
pub fn fresh_epoch() -> u16 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_millis() as u16).max(1)
}

pub fn store_name(epoch: u16) -> String {
    format!("{NAME_PREFIX}{epoch}")
}

/// The connection systemd kept for us (`LISTEN_FDS`, `LISTEN_FDNAMES`), if
/// any. Every passed descriptor is made close-on-exec (they arrive
/// inheritable, and a helper program holding /dev/fuse would keep the
/// connection alive), the others are closed, and the variables are removed.
/// Call before any thread starts.
pub fn from_systemd() -> Option<Inherited> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    let count: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for variable in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "LISTEN_PIDFDID",
    ] {
        // SAFETY: called by `credfs mount` before it starts any thread.
        unsafe { std::env::remove_var(variable) };
    }
    if pid.parse() != Ok(std::process::id()) {
        // Meant for another process (a wrapper that forked): not ours to
        // take or close, but no helper program may inherit them either.
        for fd in 3..3 + count.clamp(0, 64) {
            // SAFETY: only the descriptor flags change; the descriptor is
            // neither owned nor closed here.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
                let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
            }
        }
        return None;
    }
    let mut names = names.split(':');
    let mut found = None;
    for fd in 3..3 + count.clamp(0, 64) {
        // SAFETY: only looked at: a descriptor systemd said it passed but
        // that is not open is not taken (closing it would abort).
        let Ok(flags) = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) }) else {
            continue;
        };
        // SAFETY: systemd passed descriptors 3.. to this process, and this
        // one is open; each is owned here, once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = rustix::io::fcntl_setfd(&owned, flags | rustix::io::FdFlags::CLOEXEC);
        let epoch = names
            .next()
            .and_then(|name| name.strip_prefix(NAME_PREFIX))
            .and_then(|epoch| epoch.parse().ok());
        match (epoch, &found) {
            (Some(epoch), None) if is_fuse_device(owned.as_fd()) => {
                found = Some(Inherited { fd: owned, epoch })
            }
            _ => drop(owned),
        }
    }
    found
}

/// Whether `fd` is open on /dev/fuse (character device 10:229): anything
/// else passed as "the connection" would let its sender forge requests.
pub fn is_fuse_device(fd: BorrowedFd<'_>) -> bool {
    const FUSE_MAJOR: u32 = 10;
    const FUSE_MINOR: u32 = 229;
    rustix::fs::fstat(fd).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::CharacterDevice
            && rustix::fs::major(stat.st_rdev) == FUSE_MAJOR
            && rustix::fs::minor(stat.st_rdev) == FUSE_MINOR
    })
}

/// Asks the kernel to queue again, first, every request the dead daemon
/// read and never answered (`FUSE_NOTIFY_RESEND`: a bare header, protocol
/// 7.40, Linux 6.9). On older kernels it fails, and those requests wait
/// for ever.
pub fn resend(fuse: BorrowedFd<'_>) -> io::Result<()> {
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&16u32.to_ne_bytes());
    header.extend_from_slice(&7i32.to_ne_bytes());
    header.extend_from_slice(&0u64.to_ne_bytes());
    rustix::io::write(fuse, &header)?;
    Ok(())
}

/// Where the daemon serving `mountpoint` listens for a successor: one
/// socket per mount point, in a directory only the daemon's user may use.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/credfs-takeover"));
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.into());
    let hash = crate::vfs::inode::fnv1a(absolute.as_os_str().as_encoded_bytes());
    base.join(format!("{hash:016x}.sock"))
}

/// Listens for a successor on `socket_path(mountpoint)`.
pub fn listen(mountpoint: &Path) -> io::Result<UnixListener> {
    let path = socket_path(mountpoint);
    if let Some(dir) = path.parent() {
        // Made 0700 when missing; refused when others may write in it.
        crate::trust::open_dir(dir)
            .map_err(|e| io::Error::other(format!("{} {}", e.at.display(), e.reason)))?;
    }
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path)
}

/// Serves takeover requests until one succeeds: the successor has the
/// connection and is ready, so this process must exit at once, without
/// unmounting. Requests from another user are refused.
pub async fn serve(listener: UnixListener, fuse: OwnedFd, epoch: u16) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        match hand_over(stream, fuse.as_fd(), epoch).await {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "a takeover request failed; still serving"),
        }
    }
}

async fn hand_over(stream: UnixStream, fuse: BorrowedFd<'_>, epoch: u16) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    if peer.uid() != crate::trust::euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("uid {} may not take this mount over", peer.uid()),
        ));
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    tokio::time::timeout(HANDOVER_WAIT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no takeover request"))??;
    if line != REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a takeover request",
        ));
    }
    let stream = reader.into_inner();
    send_fd(&stream, format!("epoch {epoch}\n").as_bytes(), fuse)?;
    let mut reader = BufReader::new(stream);
    line.clear();
    tokio::time::timeout(HANDOVER_WAIT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the successor never got ready"))??;
    if line != b"ready\n" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the successor gave up",
        ));
    }
    info!(
        pid = peer.pid().unwrap_or(0),
        "handing the mount over to a new daemon; exiting"
    );
    Ok(())
}

/// A successor's side: the connection of the daemon serving `mountpoint`,
/// and the stream to tell it when to leave (`Successor::ready`).
pub async fn request(mountpoint: &Path) -> io::Result<(Inherited, Successor)> {
    let path = socket_path(mountpoint);
    let mut stream = UnixStream::connect(&path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no credfs daemon to take over at {}: {e}", path.display()),
        )
    })?;
    // Whoever answers is handed our requests' callers: only a daemon of
    // our own uid may.
    let peer = stream.peer_cred()?;
    if peer.uid() != crate::trust::euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by uid {}, not this user: refusing its descriptor",
                path.display(),
                peer.uid()
            ),
        ));
    }
    stream.write_all(REQUEST).await?;
    let (payload, fd) = tokio::time::timeout(HANDOVER_WAIT, recv_fd(&stream))
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the running daemon did not answer")
        })??;
    let epoch = std::str::from_utf8(&payload)
        .ok()
        .and_then(|text| text.trim().strip_prefix("epoch "))
        .and_then(|epoch| epoch.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a malformed handover"))?;
    let fd = fd.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no descriptor came"))?;
    if !is_fuse_device(fd.as_fd()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the descriptor handed over is not /dev/fuse",
        ));
    }
    Ok((Inherited { fd, epoch }, Successor(stream)))
}

pub struct Successor(UnixStream);

impl Successor {
    /// Tells the old daemon to leave and waits until it has: only then may
    /// this one read requests (never two readers of one request).
    pub async fn ready(mut self) -> io::Result<()> {
        self.0.write_all(b"ready\n").await?;
        let mut rest = Vec::new();
        tokio::time::timeout(HANDOVER_WAIT, self.0.read_to_end(&mut rest))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "the old daemon did not exit")
            })??;
        Ok(())
    }
}

fn send_fd(stream: &UnixStream, payload: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

async fn recv_fd(stream: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    loop {
        stream.readable().await?;
        let mut data = [0u8; 64];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        let received = match received {
            Err(rustix::io::Errno::AGAIN) => continue,
            other => other?,
        };
        let mut fd = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for received_fd in fds {
                    fd.get_or_insert(received_fd);
                }
            }
        }
        return Ok((data[..received.bytes].to_vec(), fd));
    }
}

/// Stores the connection in systemd's file descriptor store under
/// `name`, when systemd started us (`NOTIFY_SOCKET`).
pub fn store_in_systemd(fuse: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    crate::systemd::send_with_fd(&format!("FDSTORE=1\nFDNAME={name}"), fuse)
}
