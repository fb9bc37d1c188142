//! The `fuser` adapter: each callback decodes its request, hands it to a
//! tokio task running the core, and answers from there, so one slow
//! provider never holds up other requests.

use crate::error::{Error, ErrorKind};
use crate::vfs::RenameFlags as CoreRenameFlags;
use crate::vfs::{
    Attr, BLOCK_SIZE, CachePolicy, Caller, CredFs, Handle, Kind, OpenFlags as CoreOpenFlags,
    Opened, SetAttr, TTL,
};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::runtime::Handle as Runtime;

const MAX_WRITE: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<CredFs>,
    runtime: Runtime,
}

impl FuseAdapter {
    pub fn new(fs: Arc<CredFs>, runtime: Runtime) -> Self {
        FuseAdapter { fs, runtime }
    }

    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<CredFs>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work(self.fs.clone()));
    }
}

/// The errno for a failed request; failures a user must hear about (a
/// provider failing, access refused) are logged too. Messages never hold a
/// secret.
fn errno(error: &Error) -> Errno {
    if matches!(
        error.kind(),
        ErrorKind::Provider | ErrorKind::PermissionDenied
    ) {
        tracing::warn!("{error}");
    }
    Errno::from_i32(error.errno())
}

fn file_attr(attr: &Attr) -> FileAttr {
    let kind = match attr.kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.ownership.perm,
        nlink: if attr.kind == Kind::Dir { 2 } else { 1 },
        uid: attr.ownership.uid,
        gid: attr.ownership.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn fopen_flags(opened: &Opened) -> FopenFlags {
    let mut flags = match opened.cache {
        CachePolicy::KeepCache => FopenFlags::FOPEN_KEEP_CACHE,
        CachePolicy::Direct => FopenFlags::FOPEN_DIRECT_IO,
    };
    if opened.no_flush {
        flags |= FopenFlags::FOPEN_NOFLUSH;
    }
    flags
}

fn caller(req: &Request) -> Caller {
    Caller {
        pid: req.pid(),
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn reply_entry(reply: ReplyEntry, attr: crate::error::Result<Attr>) {
    match attr {
        Ok(attr) => reply.entry(&attr.ttl(), &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, done: crate::error::Result<()>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_attr(reply: ReplyAttr, attr: crate::error::Result<Attr>) {
    match attr {
        Ok(attr) => reply.attr(&attr.ttl(), &file_attr(&attr)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn open_flags(flags: i32) -> CoreOpenFlags {
    let flags = OpenFlags(flags);
    CoreOpenFlags {
        write: flags.acc_mode() != OpenAccMode::O_RDONLY,
        truncate: flags.0 & libc::O_TRUNC != 0,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC | InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_os_string();
        let caller = caller(req);
        self.spawn(move |fs| async move {
            reply_entry(reply, fs.lookup(parent.0, &name, caller).await);
        });
    }

    /// fuser's default `batch_forget` comes here once per inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let caller = caller(req);
        self.spawn(move |fs| async move {
            reply_attr(reply, fs.getattr(ino.0, fh.map(|f| f.0), caller).await);
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let caller = caller(req);
        let change = SetAttr {
            size,
            fh: fh.map(|f| f.0),
            mode: mode.is_some(),
            owner: uid.is_some() || gid.is_some(),
            times: atime.is_some() || mtime.is_some(),
        };
        self.spawn(move |fs| async move {
            reply_attr(reply, fs.setattr(ino.0, change, caller).await);
        });
    }

    fn mknod(
        &self,
        _r: &Request,
        parent: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.fs.mknod(parent.0));
    }

    fn mkdir(
        &self,
        _r: &Request,
        parent: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.fs.mkdir(parent.0));
    }

    fn rmdir(&self, _r: &Request, parent: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(parent.0));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        let caller = caller(req);
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.unlink(parent.0, &name, caller).await);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (name.to_os_string(), new_name.to_os_string());
        let flags = CoreRenameFlags {
            no_replace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        let caller = caller(req);
        self.spawn(move |fs| async move {
            let renamed = fs
                .rename(parent.0, &name, new_parent.0, &new_name, flags, caller)
                .await;
            reply_empty(reply, renamed);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (caller, flags) = (caller(req), open_flags(flags.0));
        if let Some(opened) = self.fs.open_now(ino.0, flags, caller) {
            return reply.opened(FileHandle(opened.fh), fopen_flags(&opened));
        }
        self.spawn(move |fs| async move {
            match fs.open(ino.0, flags, caller).await {
                Ok(opened) => reply.opened(FileHandle(opened.fh), fopen_flags(&opened)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_os_string();
        let caller = caller(req);
        self.spawn(move |fs| async move {
            match fs.create(parent.0, &name, caller).await {
                Ok((attr, opened)) => {
                    let (attr, fh) = (file_attr(&attr), FileHandle(opened.fh));
                    reply.created(&TTL, &attr, Generation(0), fh, fopen_flags(&opened));
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let caller = caller(req);
        self.spawn(move |fs| async move {
            match fs.read(ino.0, fh.0, offset, size, caller).await {
                Ok(data) => reply.data(data.as_slice()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (data, caller) = (data.to_vec(), caller(req));
        self.spawn(move |fs| async move {
            match fs.write(fh.0, offset, data, caller).await {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let caller = caller(req);
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.flush(fh.0, caller).await);
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.fs.release_now(fh.0) {
            return reply.ok();
        }
        self.spawn(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh.0));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let caller = caller(req);
        self.spawn(move |fs| async move {
            match fs.opendir(ino.0, caller).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let caller = caller(req);
        self.spawn(move |fs| async move {
            let handle = match fs.readdir(ino.0, fh.0, caller).await {
                Ok(handle) => handle,
                Err(e) => return reply.error(errno(&e)),
            };
            let Handle::Dir(entries) = handle.as_ref() else {
                return reply.error(Errno::ENOTDIR);
            };
            for (index, entry) in entries.iter().enumerate().skip(offset as usize) {
                let kind = match entry.kind {
                    Kind::Dir => FileType::Directory,
                    Kind::File => FileType::RegularFile,
                };
                if reply.add(INodeNo(entry.ino), index as u64 + 1, kind, &entry.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.fs.access(ino.0, mask.bits() as u16, caller(req)),
        );
    }

    /// Programs probe files with ioctls (Python asks every file it opens
    /// whether it is a terminal): none apply here, and saying so is no
    /// warning.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.fs.statfs();
        let size = stats.block_size;
        reply.statfs(0, 0, 0, 0, 0, size, stats.name_max, size);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }
}
