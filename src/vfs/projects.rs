//! `projects/<bucket>/`: archives read from, written to, renamed and deleted
//! in their store, with the staging rules of `crate::upload`.

use super::access::{SEARCH, WRITE};
use super::handles::Foreign;
use super::inode::Node;
use super::namespace::{Bucket, Namespace};
use super::published::fingerprint;
use super::{Attr, CachePolicy, Caller, CredFs, Handle, Kind, OpenFlags, Opened, cut_off, refused};
use crate::audit::Operation;
use crate::error::{Error, ErrorKind, Result};
use crate::store::ObjectInfo;
use crate::upload::WriteHandle;
use crate::upload::{STAGING_TTL, is_archive_name};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

/// How a rename treats an existing target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub no_replace: bool,
    pub exchange: bool,
}

impl CredFs {
    fn bucket(&self, ns: &Namespace, bucket: &str) -> Result<Arc<Bucket>> {
        ns.buckets
            .get(bucket)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("projects/{bucket}")))
    }

    /// The bucket `node` names, if `caller` may add and remove its archives.
    fn writable_bucket(
        &self,
        ns: &Namespace,
        node: &Node,
        caller: Caller,
    ) -> Result<(String, Arc<Bucket>)> {
        let Node::Bucket(name) = node else {
            return Err(refused(node));
        };
        self.check_access(ns, node, caller, WRITE | SEARCH)?;
        let bucket = self.bucket(ns, name)?;
        if bucket.read_only {
            return Err(Error::read_only(format!(
                "projects/{name} is served by read-only store `{}`",
                bucket.store_name
            )));
        }
        Ok((name.clone(), bucket))
    }

    pub(super) async fn archive_size(
        &self,
        ns: &Namespace,
        bucket: &str,
        name: &str,
    ) -> Result<ObjectInfo> {
        let store = &self.bucket(ns, bucket)?.store;
        if let Some(info) = store.stat(bucket, name).await? {
            return Ok(info);
        }
        match self.uploads.get(bucket, name) {
            Some(pending) => Ok(ObjectInfo {
                size: pending.size(),
                modified: pending.modified(),
                version: 0,
            }),
            None => Err(Error::not_found(format!("projects/{bucket}/{name}"))),
        }
    }

    pub(super) async fn archive_names(&self, ns: &Namespace, bucket: &str) -> Result<Vec<Node>> {
        let store = &self.bucket(ns, bucket)?.store;
        let mut names: BTreeMap<String, ()> = store
            .list(bucket)
            .await?
            .into_iter()
            .map(|(name, _)| (name, ()))
            .collect();
        for (name, _, _) in self.uploads.list(bucket) {
            names.insert(name, ());
        }
        Ok(names
            .into_keys()
            .map(|name| Node::Archive(bucket.into(), name))
            .collect())
    }

    pub(super) async fn open_archive(
        &self,
        ns: &Namespace,
        ino: u64,
        bucket: &str,
        name: &str,
        flags: OpenFlags,
        caller: Caller,
    ) -> Result<Opened> {
        let entry = self.bucket(ns, bucket)?;
        if flags.write || flags.truncate {
            let (bucket, entry) = self.writable_bucket(ns, &Node::Bucket(bucket.into()), caller)?;
            let keeps_content = !flags.truncate && is_archive_name(name);
            let original = match keeps_content && entry.store.stat(&bucket, name).await?.is_some() {
                true => Some(entry.store.open(&bucket, name).await?),
                false => None,
            };
            let handle = self
                .open_upload(&bucket, &entry, name, flags.truncate, original, caller)
                .await?;
            return Ok(self.opened_for_writing(handle));
        }
        let reader = match entry.store.open(bucket, name).await {
            Ok(reader) => Some(reader),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(reader) = reader {
            let info = reader.info();
            let content = fingerprint((info.size, info.modified, info.version));
            let seen = self.published.observe(ino, content);
            let fh = self.handles.insert(Handle::Archive(reader));
            let cache = if seen.kernel_copy_valid {
                self.published.claim(fh, ino, content);
                CachePolicy::KeepCache
            } else {
                CachePolicy::Direct
            };
            return Ok(Opened {
                fh,
                cache,
                no_flush: true,
            });
        }
        let pending = self
            .uploads
            .get(bucket, name)
            .ok_or_else(|| Error::not_found(format!("projects/{bucket}/{name}")))?;
        Ok(Opened {
            fh: self.handles.insert(Handle::Pending(pending)),
            cache: CachePolicy::Direct,
            no_flush: true,
        })
    }

    /// A write handle. Every write comes to us, never through FUSE
    /// passthrough: a passthrough registration lets a dup'd or inherited
    /// descriptor write into the file after its check, and past
    /// max_object_size, where we cannot see it.
    fn opened_for_writing(&self, handle: Arc<WriteHandle>) -> Opened {
        Opened {
            fh: self.handles.insert(Handle::Write(handle)),
            cache: CachePolicy::Direct,
            no_flush: false,
        }
    }

    /// Opens `name` in `bucket` for writing, on behalf of `caller`: the
    /// process whose close commits, and the uid whose pending-upload limit
    /// it counts against.
    async fn open_upload(
        &self,
        bucket: &str,
        entry: &Bucket,
        name: &str,
        truncate: bool,
        original: Option<Box<dyn crate::store::ObjectReader>>,
        caller: Caller,
    ) -> Result<Arc<WriteHandle>> {
        let destination = crate::upload::Destination {
            store: entry.store.clone(),
            max_object_size: entry.max_object_size,
        };
        let writer = crate::upload::Writer {
            process: caller.process(),
            uid: caller.uid,
        };
        self.uploads
            .open(bucket, destination, name, truncate, original, writer)
            .await
    }

    pub async fn create(
        &self,
        parent: u64,
        name: impl AsRef<OsStr>,
        caller: Caller,
    ) -> Result<(Attr, Opened)> {
        let name = super::new_name(name.as_ref())?;
        let ns = self.namespace();
        let parent_node = self.node(parent)?;
        let (bucket, entry) = self.writable_bucket(&ns, &parent_node, caller)?;
        if name.ends_with(".zip") && !is_archive_name(name) {
            return Err(invalid_archive_name(&bucket, name));
        }
        let node = Node::Archive(bucket.clone(), name.into());
        let ownership = self.ownership(&ns, &node);
        let handle = self
            .open_upload(&bucket, &entry, name, true, None, caller)
            .await?;
        let attr = Attr {
            ino: self.inodes.lookup(&node),
            kind: Kind::File,
            size: 0,
            mtime: handle.modified(),
            ownership,
            per_caller: false,
        };
        Ok((attr, self.opened_for_writing(handle)))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>, caller: Caller) -> Result<u32> {
        if self.handles.foreign(fh).is_some() {
            return Err(cut_off());
        }
        match self.handles.get(fh).as_deref() {
            Some(Handle::Write(handle)) => self.uploads.write(handle, offset, data).await,
            Some(Handle::Refresh(name)) => {
                let ns = self.namespace();
                let cached = ns
                    .registries
                    .get(name)
                    .ok_or_else(|| Error::not_found(format!("registries/{name}")))?;
                tracing::info!(registry = %name, "refresh requested");
                let refreshed = cached.refresh().await;
                let path = || format!("registries/{name}/refresh");
                let result = refreshed.as_ref().map(|_| ());
                self.audit.record(Operation::Refresh, path, caller, result);
                refreshed?;
                Ok(data.len() as u32)
            }
            _ => Err(Error::new(ErrorKind::InvalidInput, "not open for writing")),
        }
    }

    /// A close: the writer's own close of an archive checks and commits it,
    /// and its error is what `close(2)` returns.
    pub async fn flush(&self, fh: u64, caller: Caller) -> Result<()> {
        if self.handles.foreign(fh) == Some(Foreign::Writer) {
            return Err(cut_off());
        }
        let held = self.handles.get(fh);
        let Some(Handle::Write(handle)) = held.as_deref() else {
            return Ok(());
        };
        let existed = self
            .archive_exists_if_audited(&handle.bucket, &handle.name)
            .await;
        let flushed = self.uploads.flush(handle, caller.process()).await;
        let path = || format!("projects/{}/{}", handle.bucket, handle.name);
        let operation = match existed {
            true => Operation::Overwrite,
            false => Operation::Upload,
        };
        match &flushed {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {
                self.forget_archive(&handle.bucket, &handle.name);
                self.audit.record(operation, path, caller, Ok(()));
            }
            Err(e) => self.audit.record(operation, path, caller, Err(e)),
        }
        flushed.map(|_| ())
    }

    /// Whether `bucket` holds `name` now; asked only when the audit log
    /// needs to tell an overwrite from a new upload.
    async fn archive_exists_if_audited(&self, bucket: &str, name: &str) -> bool {
        if !self.audit.is_enabled() || !is_archive_name(name) {
            return false;
        }
        let Ok(entry) = self.bucket(&self.namespace(), bucket) else {
            return false;
        };
        matches!(entry.store.stat(bucket, name).await, Ok(Some(_)))
    }

    pub(super) async fn release_handle(&self, handle: Arc<Handle>) {
        if let Handle::Write(write) = handle.as_ref()
            && self.uploads.release(write).await.is_some()
        {
            self.forget_archive(&write.bucket, &write.name);
        }
    }

    /// The kernel's copy of an archive is out of date.
    fn forget_archive(&self, bucket: &str, name: &str) {
        // A number nobody holds has no copy in the kernel to drop.
        if let Some(ino) = self.inodes.peek(&Node::Archive(bucket.into(), name.into())) {
            self.published.forget(ino);
        }
    }

    pub async fn unlink(&self, parent: u64, name: impl AsRef<OsStr>, caller: Caller) -> Result<()> {
        let name = super::existing_name(name.as_ref())?;
        let ns = self.namespace();
        let parent_node = self.node(parent)?;
        let deleted = self.delete_archive(&ns, &parent_node, name, caller).await;
        if is_archive_name(name) {
            let path = || format!("{}/{name}", parent_node.path());
            let result = deleted.as_ref().map(|_| ());
            self.audit.record(Operation::Delete, path, caller, result);
        }
        deleted
    }

    async fn delete_archive(
        &self,
        ns: &Namespace,
        parent_node: &Node,
        name: &str,
        caller: Caller,
    ) -> Result<()> {
        let (bucket, entry) = self.writable_bucket(ns, parent_node, caller)?;
        if entry.store.stat(&bucket, name).await?.is_some() {
            entry.store.delete(&bucket, name).await?;
            tracing::info!(path = ?format!("projects/{bucket}/{name}"), "archive deleted");
        } else if !self.uploads.discard(&bucket, name).await {
            return Err(Error::not_found(format!("projects/{bucket}/{name}")));
        }
        self.forget_archive(&bucket, name);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: impl AsRef<OsStr>,
        new_parent: u64,
        new_name: impl AsRef<OsStr>,
        flags: RenameFlags,
        caller: Caller,
    ) -> Result<()> {
        let name = super::existing_name(name.as_ref())?;
        let new_name = super::new_name(new_name.as_ref())?;
        let ns = self.namespace();
        let (from_node, to_node) = (self.node(parent)?, self.node(new_parent)?);
        let (bucket, entry) = self.writable_bucket(&ns, &from_node, caller)?;
        let (to_bucket, _) = self.writable_bucket(&ns, &to_node, caller)?;
        if bucket != to_bucket {
            return Err(Error::new(ErrorKind::CrossDevice, "rename across buckets"));
        }
        if flags.exchange {
            return Err(Error::invalid("exchanging archives is not supported"));
        }
        // The create rule: a `.zip` name the listing would never show is
        // refused, not kept as a staging file that reports nothing stored.
        if new_name.ends_with(".zip") && !is_archive_name(new_name) {
            return Err(invalid_archive_name(&bucket, new_name));
        }
        if name == new_name {
            return Ok(());
        }
        let store = &entry.store;
        if flags.no_replace
            && (store.stat(&bucket, new_name).await?.is_some()
                || self.uploads.get(&bucket, new_name).is_some())
        {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("projects/{bucket}/{new_name}"),
            ));
        }
        let committed = store.stat(&bucket, name).await?.is_some();
        let replaces = self.archive_exists_if_audited(&bucket, new_name).await;
        let (from, to) = (
            || format!("projects/{bucket}/{name}"),
            || format!("projects/{bucket}/{new_name}"),
        );
        if !committed && self.uploads.get(&bucket, name).is_some() {
            if is_archive_name(new_name) {
                let committed = self.uploads.commit_staged(&bucket, name, new_name).await;
                let result = committed.as_ref().map(|_| ());
                self.audit.record_rename(from, to, caller, result);
                let operation = match replaces {
                    true => Operation::Overwrite,
                    false => Operation::Upload,
                };
                self.audit.record(operation, to, caller, result);
                committed?;
            } else {
                self.uploads.rename(&bucket, name, new_name)?;
            }
        } else if committed {
            if !is_archive_name(new_name) {
                return Err(Error::invalid(format!(
                    "projects/{bucket}/{name}: an archive can only be renamed to another <name>.zip"
                )));
            }
            let renamed = store.rename(&bucket, name, new_name).await;
            let result = renamed.as_ref().map(|_| ());
            self.audit.record_rename(from, to, caller, result);
            if replaces {
                self.audit.record(Operation::Overwrite, to, caller, result);
            }
            renamed?;
        } else {
            return Err(Error::not_found(format!("projects/{bucket}/{name}")));
        }
        let (from, to) = (
            Node::Archive(bucket.clone(), name.into()),
            Node::Archive(bucket.clone(), new_name.into()),
        );
        let moved = self.inodes.peek(&from);
        if let Some(replaced) = self.inodes.rename(&from, &to) {
            self.published.forget(replaced);
        }
        if let Some(moved) = moved {
            self.published.forget(moved);
        }
        Ok(())
    }

    /// Drops staging files nobody renamed; run periodically.
    pub async fn reap_staging(&self) {
        self.uploads.reap(STAGING_TTL).await;
    }
}

fn invalid_archive_name(bucket: &str, name: &str) -> Error {
    Error::invalid(format!(
        "projects/{bucket}/{name}: archive names use letters, digits, `.`, `_` and `-`"
    ))
}
