//! Mounting the tree and running the FUSE session on its own threads.

use super::FuseAdapter;
use crate::vfs::{CredFs, KernelCache};
use fuser::{Config, INodeNo, MountOption, Notifier, Session, SessionACL, SessionUnmounter};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Threads reading requests from the kernel. The work itself runs on tokio,
/// so these only copy requests in and out.
const SESSION_THREADS: usize = 4;

pub struct MountOptions {
    pub allow_other: bool,
}

pub struct Mounted {
    unmounter: SessionUnmounter,
    thread: JoinHandle<io::Result<()>>,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Mounted {
    /// Unmounts and waits for the session threads to finish.
    pub fn unmount(mut self) -> io::Result<()> {
        let unmounted = self.unmounter.unmount();
        let joined = self
            .thread
            .join()
            .map_err(|_| io::Error::other("FUSE session thread panicked"))?;
        unmounted.and(joined)
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

struct NotifierCache(Notifier);

impl KernelCache for NotifierCache {
    fn invalidate_inode(&self, ino: u64) -> io::Result<()> {
        self.0.inval_inode(INodeNo(ino), 0, 0)
    }

    fn invalidate_entry(&self, parent: u64, name: &str) -> io::Result<()> {
        self.0.inval_entry(INodeNo(parent), OsStr::new(name))
    }
}

pub fn mount(
    fs: Arc<CredFs>,
    runtime: tokio::runtime::Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("credfs".into()),
        MountOption::Subtype("credfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(SESSION_THREADS);
    let adapter = FuseAdapter::new(fs.clone(), runtime);
    let mut session = Session::new(adapter, mountpoint, &config)?;
    fs.set_kernel_cache(Arc::new(NotifierCache(session.notifier())));
    let unmounter = session.unmount_callable();
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
    })
}
