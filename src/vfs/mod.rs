//! The filesystem's core: plain async methods over inode numbers and names
//! that never see `fuser`. `crate::fuse` translates kernel requests into
//! these calls and their results into replies.

mod access;
mod handles;
pub mod inode;
pub mod namespace;
mod projects;
pub use projects::RenameFlags;
mod providers;
pub mod published;
mod status_doc;
mod tree;
mod types;
mod values;

use crate::sync::lock;
pub use types::*;
use values::{from_config, resting};

pub use handles::{DirEntry, Handle};
pub use providers::Providers;
pub use published::KernelCache;

use crate::audit::{AuditLog, Operation};
pub use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::registry::RegistryFile;
use crate::upload::Uploads;
use handles::{Foreign, Handles};
use inode::{Inodes, Node};
use namespace::Namespace;
use published::{Published, fingerprint};
use std::ffi::OsStr;
use std::sync::{Arc, RwLock};
use tracing::warn;

pub struct CredFs {
    namespace: RwLock<Arc<Namespace>>,
    inodes: Inodes,
    handles: Handles,
    published: Arc<Published>,
    uploads: Uploads,
    /// The last refused reload, shown in `status.json`.
    last_error: std::sync::Mutex<Option<crate::status::EntryStatus>>,
    pub audit: AuditLog,
    /// Opens what a reload adds or changes.
    providers: Providers,
}

/// What a writer of the daemon before this one gets at its next write or
/// close: its upload went with that daemon.
fn cut_off() -> Error {
    Error::provider("the upload was cut off: the daemon serving it was replaced")
}

fn refused(node: &Node) -> Error {
    Error::denied(format!("{} is read-only", node.path()))
}

impl CredFs {
    /// Serves `namespace`; reloads get their stores and registry providers
    /// from `providers`, as `namespace` did.
    pub fn new(namespace: Namespace, providers: Providers) -> Self {
        let fs = CredFs {
            namespace: RwLock::new(Arc::new(namespace)),
            inodes: Inodes::default(),
            handles: Handles::default(),
            published: Arc::new(Published::default()),
            uploads: Uploads::default(),
            last_error: std::sync::Mutex::new(None),
            audit: AuditLog::default(),
            providers,
        };
        fs.apply_limits(&fs.namespace());
        fs.watch_credentials(&fs.namespace());
        fs
    }

    /// The filesystem of `config`, its audit log open: what the daemon
    /// serves at start (a reload goes through `reload`).
    pub async fn start(
        config: crate::config::Config,
        providers: Providers,
    ) -> std::result::Result<Self, String> {
        let namespace = Namespace::build(config, None, &providers).await;
        let fs = CredFs::new(namespace, providers);
        fs.apply_audit(&fs.namespace().config)?;
        Ok(fs)
    }

    /// The audit settings of `config`, the same way at start (where an
    /// error stops the mount) and at reload (where the old log stays).
    pub fn apply_audit(&self, config: &crate::config::Config) -> std::result::Result<(), String> {
        let path = config.audit.as_ref().map(|a| a.path.clone());
        self.audit
            .set_fail_closed(config.audit.as_ref().is_some_and(|a| a.fail_closed));
        if path == self.audit.path() {
            return Ok(());
        }
        self.audit.configure(path.as_deref()).map_err(|e| {
            let shown = path
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display();
            format!("cannot open the audit log {shown}: {e}")
        })
    }

    fn apply_limits(&self, ns: &Namespace) {
        self.uploads
            .set_limit_per_user(ns.config.mount.max_pending_uploads);
    }

    /// A registry's files and docker/config.json change with its
    /// credential: the kernel drops its copies the moment it changes.
    fn watch_credentials(&self, ns: &Namespace) {
        let config_ino = self.inodes.pin(&Node::DockerConfig);
        for (name, cached) in &ns.registries {
            let inodes: Vec<u64> = RegistryFile::ALL
                .into_iter()
                .map(|f| self.inodes.pin(&Node::RegistryFile(name.clone(), f)))
                .chain([config_ino])
                .collect();
            let published = self.published.clone();
            cached.set_on_change(Box::new(move || {
                for ino in &inodes {
                    published.forget(*ino);
                }
            }));
        }
    }

    /// The epoch in this daemon's handle numbers (see `handles`): set once,
    /// before the tree is served.
    pub fn set_handle_epoch(&self, epoch: u16) {
        self.handles.set_epoch(epoch);
    }

    pub fn handle_epoch(&self) -> u16 {
        self.handles.epoch()
    }

    pub fn set_kernel_cache(&self, kernel: Arc<dyn KernelCache>) {
        self.published.set_kernel(kernel);
    }

    /// Serves `config` from now on. Readers see the old tree or the new one;
    /// the kernel forgets names that are gone and re-reads what it cached.
    pub async fn reload(&self, config: crate::config::Config) {
        let audit = self.apply_audit(&config);
        let old = self.namespace();
        let new = Arc::new(Namespace::build(config, Some(&old), &self.providers).await);
        self.apply_limits(&new);
        self.watch_credentials(&new);
        self.clear_error();
        // The rest applies; the old log keeps recording, and status.json
        // says why the new one is not in use.
        if let Err(message) = audit {
            warn!("{message}; keeping the old one");
            self.record_error(message);
        }
        match self.namespace.write() {
            Ok(mut slot) => *slot = new.clone(),
            Err(poisoned) => *poisoned.into_inner() = new.clone(),
        }
        let known = self.inodes.all();
        let gone: Vec<(u64, String)> = known
            .iter()
            .filter(|(_, node)| !self.exists(&new, node))
            .filter_map(|(_, node)| {
                let parent = self.inodes.peek(&node.parent()?)?;
                Some((parent, node.name()))
            })
            .collect();
        self.published.invalidate_entries(gone);
        self.published
            .invalidate_inodes(known.into_iter().map(|(ino, _)| ino).collect());
    }

    /// Records a problem that is not any one entry's (a refused reload).
    pub fn record_error(&self, message: impl Into<String>) {
        *lock(&self.last_error) = Some(crate::status::EntryStatus::error(message));
    }

    /// The running config is the file's again (a refused edit was undone).
    pub fn clear_error(&self) {
        *lock(&self.last_error) = None;
    }

    pub fn namespace(&self) -> Arc<Namespace> {
        self.namespace
            .read()
            .map(|n| n.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn node(&self, ino: u64) -> Result<Node> {
        if let Some(node) = self.inodes.node(ino) {
            return Ok(node);
        }
        // A number the daemon before this one gave the kernel (an adopted
        // connection): the same path has the same number. Archives are not
        // searched (that would list every bucket); the kernel finds them
        // again by name.
        tree::config_node_numbered(&self.namespace(), ino)
            .filter(|node| self.inodes.adopt(ino, node))
            .ok_or_else(|| Error::not_found(format!("inode {ino} is gone")))
    }

    /// The attributes of `node`. Everything that can fail comes before a
    /// number is handed out: a failed lookup holds nothing.
    async fn attr_of(
        &self,
        ns: &Namespace,
        node: &Node,
        caller: Caller,
        numbering: Numbering,
    ) -> Result<Attr> {
        if !self.exists(ns, node) {
            return Err(Error::not_found(node.path()));
        }
        let ownership = self.ownership(ns, node);
        let (kind, size, mtime, content) = match node {
            node if node.is_dir() => (Kind::Dir, 0, ns.loaded_at, Content::None),
            Node::Archive(bucket, name) => {
                let info = self.archive_size(ns, bucket, name).await?;
                let archive = fingerprint((info.size, info.modified, info.version));
                (
                    Kind::File,
                    info.size,
                    info.modified,
                    Content::Archive(archive),
                )
            }
            // Not a fingerprint: what one caller sees says nothing of what
            // the kernel cached for another.
            Node::DockerConfig => match self.value(ns, node, caller).await {
                Ok(value) => (Kind::File, value.len() as u64, ns.loaded_at, Content::None),
                Err(_) => (Kind::File, 0, ns.loaded_at, Content::None),
            },
            // Nothing to measure without a provider call, which would only
            // fail now: `ls -l` of a broken registry runs its provider once.
            Node::RegistryFile(name, file)
                if resting(ns, name) && !from_config(ns, name, *file) =>
            {
                (Kind::File, 0, ns.loaded_at, Content::Failed)
            }
            _ => match self.value(ns, node, caller).await {
                Ok(value) => {
                    let content = Content::Value(fingerprint(value.expose()));
                    (Kind::File, value.len() as u64, ns.loaded_at, content)
                }
                // The entry exists; opening it reports the failure.
                Err(_) => (Kind::File, 0, ns.loaded_at, Content::Failed),
            },
        };
        let ino = match numbering {
            Numbering::Lookup => self.inodes.lookup(node),
            Numbering::Known(ino) => ino,
        };
        let mtime = match content {
            Content::Value(content) => self.published.observe(ino, content).changed_at,
            Content::Archive(content) => {
                self.published.observe(ino, content);
                mtime
            }
            // Size 0 stands for "unknown": the kernel must not trust it, or
            // an open right after would read 0 bytes from its cache.
            Content::Failed => {
                self.published.forget(ino);
                mtime
            }
            Content::None => mtime,
        };
        Ok(Attr {
            ino,
            kind,
            size,
            mtime,
            ownership,
            per_caller: node.is_per_caller(),
        })
    }

    pub async fn lookup(
        &self,
        parent: u64,
        name: impl AsRef<OsStr>,
        caller: Caller,
    ) -> Result<Attr> {
        let name = existing_name(name.as_ref())?;
        let ns = self.namespace();
        let parent = self.node(parent)?;
        if let Err(denied) = self.check_access(&ns, &parent, caller, access::SEARCH) {
            if let Ok(child) = self.child(&ns, &parent, name)
                && child.holds_secrets()
            {
                self.audit
                    .record(Operation::Lookup, || child.path(), caller, Err(&denied));
            }
            return Err(denied);
        }
        let child = self.child(&ns, &parent, name)?;
        self.attr_of(&ns, &child, caller, Numbering::Lookup).await
    }

    /// What `access(2)` answers: `mask` holds R_OK, W_OK and X_OK bits.
    pub fn access(&self, ino: u64, mask: u16, caller: Caller) -> Result<()> {
        let ns = self.namespace();
        let node = self.node(ino)?;
        if !self.exists(&ns, &node) {
            return Err(Error::not_found(node.path()));
        }
        self.check_access(&ns, &node, caller, mask & 0o7)
    }

    pub async fn getattr(&self, ino: u64, fh: Option<u64>, caller: Caller) -> Result<Attr> {
        let ns = self.namespace();
        let node = self.node(ino)?;
        if let Some(Handle::Write(handle)) = fh.and_then(|fh| self.handles.get(fh)).as_deref() {
            return Ok(Attr {
                ino,
                kind: Kind::File,
                size: handle.size(),
                mtime: handle.modified(),
                ownership: self.ownership(&ns, &node),
                per_caller: false,
            });
        }
        self.attr_of(&ns, &node, caller, Numbering::Known(ino))
            .await
    }

    /// chmod, chown and utime change nothing (owners and modes come from the
    /// config) but succeed for the owner, so `cp -p` and `install -m` work;
    /// a size change applies to a file being written.
    pub async fn setattr(&self, ino: u64, change: SetAttr, caller: Caller) -> Result<Attr> {
        let (size, fh) = (change.size, change.fh);
        let node = self.node(ino)?;
        if change.mode || change.owner || change.times {
            self.check_owner(&self.namespace(), &node, caller)?;
        }
        if let Some(size) = size {
            if fh.is_none() {
                self.check_access(&self.namespace(), &node, caller, access::WRITE)?;
            }
            let handle = fh.and_then(|fh| self.handles.get(fh));
            match (handle.as_deref(), &node) {
                (Some(Handle::Write(h)), _) => self.uploads.set_len(h, size).await?,
                (_, Node::Archive(b, n)) => match self.uploads.get(b, n) {
                    Some(pending) => pending.set_len(size).await?,
                    None => {
                        return Err(Error::new(
                            ErrorKind::NotPermitted,
                            format!("{}: truncate an archive by writing a new one", node.path()),
                        ));
                    }
                },
                _ => return Err(refused(&node)),
            }
        }
        self.getattr(ino, fh, caller).await
    }

    /// Directories come from the config: none is made or removed here.
    pub fn mkdir(&self, parent: u64) -> Result<Attr> {
        let node = self.node(parent)?;
        Err(Error::new(
            ErrorKind::NotPermitted,
            format!("{}: directories come from the config", node.path()),
        ))
    }

    pub fn rmdir(&self, parent: u64) -> Result<()> {
        self.mkdir(parent).map(|_| ())
    }

    /// Devices, fifos and sockets have no place in this tree.
    pub fn mknod(&self, parent: u64) -> Result<Attr> {
        self.mkdir(parent)
    }

    /// Durability is decided at commit, which fsyncs when the store asks
    /// for it; an fsync before the close has nothing to make durable.
    pub fn fsync(&self, _fh: u64) -> Result<()> {
        Ok(())
    }

    /// Nothing to count (values and archives live elsewhere); the block
    /// size is what copy tools size their buffers by.
    pub fn statfs(&self) -> FsStats {
        FsStats {
            block_size: BLOCK_SIZE,
            name_max: 255,
        }
    }

    pub async fn open(&self, ino: u64, flags: OpenFlags, caller: Caller) -> Result<Opened> {
        let ns = self.namespace();
        let node = self.node(ino)?;
        if !self.exists(&ns, &node) {
            return Err(Error::not_found(node.path()));
        }
        let opened = self.open_checked(&ns, ino, &node, flags, caller).await;
        if node.holds_secrets() {
            let result = opened.as_ref().map(|_| ());
            if let Err(unrecorded) = self.audit.record_open(|| node.path(), caller, result) {
                if let Ok(handle) = &opened {
                    self.release_now(handle.fh);
                }
                return Err(unrecorded);
            }
        }
        opened
    }

    async fn open_checked(
        &self,
        ns: &Namespace,
        ino: u64,
        node: &Node,
        flags: OpenFlags,
        caller: Caller,
    ) -> Result<Opened> {
        let want = match flags.write {
            true => access::WRITE,
            false => access::READ,
        };
        self.check_access(ns, node, caller, want)?;
        if let Node::Archive(bucket, name) = node {
            return self
                .open_archive(ns, ino, bucket, name, flags, caller)
                .await;
        }
        if let (Node::RegistryRefresh(name), true) = (node, flags.write) {
            return Ok(Opened {
                fh: self.handles.insert(Handle::Refresh(name.clone())),
                cache: CachePolicy::Direct,
                no_flush: true,
            });
        }
        if flags.write || flags.truncate {
            return Err(refused(node));
        }
        let value = self.value(ns, node, caller).await?;
        Ok(self.opened_value(ino, node, value))
    }

    /// Releases a handle that has nothing left to do (anything but a
    /// writer) at once; `false`: ask `release`.
    pub fn release_now(&self, fh: u64) -> bool {
        let done = self.handles.foreign(fh).is_none()
            && self
                .handles
                .get(fh)
                .is_none_or(|h| !matches!(h.as_ref(), Handle::Write(_)));
        if done {
            self.published.release(fh);
            self.handles.remove(fh);
        }
        done
    }

    /// This daemon's handle for `fh`: `fh` itself, or for a reader of the
    /// daemon before this one (an adopted connection) a handle opened again
    /// by its inode, as the process now asking, the first time it is used.
    /// A writer of the daemon before fails: its upload went with it. So does
    /// a reader of a file rendered for each caller (`docker/config.json`):
    /// reopened as whoever reads first, a descriptor one user handed to
    /// another would show the second user's credentials.
    async fn own_handle(&self, ino: u64, fh: u64, caller: Caller) -> Result<u64> {
        match self.handles.foreign(fh) {
            None => Ok(fh),
            Some(Foreign::Writer) => Err(cut_off()),
            Some(Foreign::Reader) => {
                if let Some(ours) = self.handles.adopted(fh) {
                    return Ok(ours);
                }
                let node = self.node(ino)?;
                if node.is_per_caller() {
                    return Err(Error::provider(format!(
                        "{} was opened before the daemon was replaced; open it again",
                        node.path()
                    )));
                }
                let ours = match node.is_dir() {
                    true => self.opendir(ino, caller).await?,
                    false => self.open(ino, OpenFlags::default(), caller).await?.fh,
                };
                self.handles.adopt(fh, ours);
                Ok(ours)
            }
        }
    }

    pub async fn read(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        caller: Caller,
    ) -> Result<ReadData> {
        let fh = self.own_handle(ino, fh, caller).await?;
        let handle = self
            .handles
            .get(fh)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "unknown file handle"))?;
        match handle.as_ref() {
            Handle::Value(value) => {
                let len = value.len();
                let start = usize::try_from(offset).unwrap_or(len).min(len);
                let end = start.saturating_add(size as usize).min(len);
                Ok(ReadData::Secret(value.clone(), start..end))
            }
            Handle::Archive(reader) => reader.read_at(offset, size).await.map(ReadData::Bytes),
            Handle::Pending(pending) => pending.read_at(offset, size).await.map(ReadData::Bytes),
            Handle::Write(write) => write.read_at(offset, size).await.map(ReadData::Bytes),
            Handle::Refresh(_) => Ok(ReadData::Bytes(Vec::new())),
            Handle::Dir(_) => Err(Error::new(ErrorKind::IsADirectory, "a directory")),
        }
    }

    pub async fn release(&self, fh: u64) {
        if self.handles.foreign(fh).is_some() {
            if let Some(ours) = self.handles.unadopt(fh) {
                Box::pin(self.release(ours)).await;
            }
            return;
        }
        self.published.release(fh);
        if let Some(handle) = self.handles.remove(fh) {
            if let Handle::Dir(entries) = handle.as_ref() {
                let gone = self.inodes.unlisted(entries.iter().skip(2).map(|e| e.ino));
                gone.into_iter()
                    .for_each(|ino| self.published.drop_inode(ino));
            }
            self.release_handle(handle).await;
        }
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        if self.inodes.forget(ino, count) {
            self.published.drop_inode(ino);
        }
    }

    /// Inode numbers held and inodes tracked for the page cache: what a
    /// long-running daemon must keep bounded.
    pub fn held_inodes(&self) -> (usize, usize) {
        (self.inodes.len(), self.published.len())
    }
}
