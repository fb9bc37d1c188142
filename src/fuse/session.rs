//! Mounting the tree and running the FUSE session on its own threads.

use super::FuseAdapter;
use crate::vfs::{CredFs, KernelCache};
use fuser::{Config, INodeNo, MountOption, Notifier, Session, SessionACL, SessionUnmounter};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SESSION_EXIT_WAIT: Duration = Duration::from_secs(3);

/// Threads reading requests from the kernel. The work itself runs on tokio,
/// so these only copy requests in and out.
const SESSION_THREADS: usize = 4;

pub struct MountOptions {
    pub allow_other: bool,
}

pub struct Mounted {
    /// None for an adopted connection: fuser did not mount it, so credfs
    /// unmounts it itself.
    unmounter: Option<SessionUnmounter>,
    thread: JoinHandle<io::Result<()>>,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
    /// A copy of the connection's descriptor, to hand to the next daemon.
    connection: OwnedFd,
}

impl Mounted {
    /// Unmounts (lazily if the tree is busy) and waits a little for the
    /// session threads. Another mount namespace (a container that
    /// bind-mounted the tree) can keep the connection open after our
    /// unmount; exiting closes it then, so we do not wait for ever.
    pub fn unmount(mut self, mountpoint: &Path) -> io::Result<()> {
        let unmounted = match self.unmounter.as_mut() {
            Some(unmounter) => unmounter.unmount(),
            None => unmount_path(mountpoint),
        };
        if let Err(e) = unmounted {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            detach(mountpoint)?;
        }
        let deadline = Instant::now() + SESSION_EXIT_WAIT;
        while !self.thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!("the FUSE connection is still held elsewhere; exiting closes it");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.join()
    }

    pub fn connection(&self) -> BorrowedFd<'_> {
        self.connection.as_fd()
    }

    /// Waits for a session that already ended (unmounted from outside).
    pub fn join(self) -> io::Result<()> {
        self.thread
            .join()
            .map_err(|_| io::Error::other("FUSE session thread panicked"))?
    }

    /// Resolves when the session ends by itself (an external unmount).
    pub fn ended(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        self.ended
            .take()
            .unwrap_or_else(|| tokio::sync::oneshot::channel().1)
    }
}

/// Kernel read-ahead of this mount, in KiB: archives are read sequentially
/// and each FUSE request costs a round trip, so larger requests read faster.
const READ_AHEAD_KIB: u32 = 1024;

/// The kernel starts a FUSE mount at 128 KiB of read-ahead; only its
/// backing device's sysfs knob raises it (root only; otherwise it stays).
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = metadata.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, READ_AHEAD_KIB.to_string()) {
        tracing::debug!(error = %e, knob, "kernel read-ahead left at its default");
    }
}

pub(super) fn detach(mountpoint: &Path) -> io::Result<()> {
    umount2(mountpoint, libc::MNT_DETACH)
}

fn unmount_path(mountpoint: &Path) -> io::Result<()> {
    umount2(mountpoint, 0)
}

fn umount2(mountpoint: &Path, flags: libc::c_int) -> io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount point contains NUL"))?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::umount2(path.as_ptr(), flags) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

struct NotifierCache(Notifier);

impl KernelCache for NotifierCache {
    fn invalidate_inode(&self, ino: u64) -> io::Result<()> {
        self.0.inval_inode(INodeNo(ino), 0, 0)
    }

    fn invalidate_entry(&self, parent: u64, name: &str) -> io::Result<()> {
        self.0.inval_entry(INodeNo(parent), OsStr::new(name))
    }
}

fn session_config(options: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("credfs".into()),
        MountOption::Subtype("credfs".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.acl = acl(options);
    config.n_threads = Some(SESSION_THREADS);
    config.clone_fd = read_from_clones();
    config
}

/// How the session reads requests. From Linux 6.9 the kernel can resend
/// what a dead daemon had read (`FUSE_NOTIFY_RESEND`), so the workers read
/// the connection itself. Before, each worker reads a clone of its own:
/// when the daemon dies, the kernel fails the requests its clones had read
/// (ECONNABORTED) instead of leaving their callers waiting for ever.
/// `CREDFS_FUSE_READERS=clones` or `=shared` chooses (for tests).
fn read_from_clones() -> bool {
    match std::env::var("CREDFS_FUSE_READERS").as_deref() {
        Ok("clones") => return true,
        Ok("shared") => return false,
        _ => {}
    }
    kernel_version().is_some_and(|version| version < (6, 9))
}

fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().ok());
    Some((numbers.next()??, numbers.next()??))
}

fn acl(options: &MountOptions) -> SessionACL {
    if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    }
}

pub fn mount(
    fs: Arc<CredFs>,
    runtime: tokio::runtime::Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted> {
    let adapter = FuseAdapter::new(fs.clone(), runtime);
    let mut session = Session::new(adapter, mountpoint, &session_config(options))?;
    let unmounter = session.unmount_callable();
    let mounted = serve(fs, session, Some(unmounter))?;
    raise_readahead(mountpoint);
    Ok(mounted)
}

/// Serves a live connection handed over by the daemon before this one: no
/// mount, no INIT (the kernel sent it once, to the first daemon). The
/// caller then asks the kernel to resend what that daemon left unanswered.
pub fn adopt(
    fs: Arc<CredFs>,
    runtime: tokio::runtime::Handle,
    connection: OwnedFd,
    options: &MountOptions,
) -> io::Result<Mounted> {
    let adapter = FuseAdapter::new(fs.clone(), runtime);
    let session =
        Session::from_fd_initialized(adapter, connection, acl(options), session_config(options));
    serve(fs, session, None)
}

fn serve(
    fs: Arc<CredFs>,
    session: Session<FuseAdapter>,
    unmounter: Option<SessionUnmounter>,
) -> io::Result<Mounted> {
    fs.set_kernel_cache(Arc::new(NotifierCache(session.notifier())));
    let connection = session.as_fd().try_clone_to_owned()?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = ended_tx.send(());
            result
        })?;
    Ok(Mounted {
        unmounter,
        thread,
        ended: Some(ended),
        connection,
    })
}
