//! The upload path: files written under `projects/<bucket>/`. An archive
//! (`<name>.zip`) is checked and committed when its writer closes it; any
//! other name is a staging file kept until it is renamed to an archive
//! name, which checks and commits it.

mod pending;
mod quota;
pub mod zip_check;

pub use pending::Pending;

use crate::error::{Error, ErrorKind, Result};
use crate::store::ProjectStore;
use crate::store::{ObjectInfo, ObjectReader};
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// A staging file nobody renamed is dropped this long after its last close.
pub const STAGING_TTL: Duration = Duration::from_secs(600);
const SEED_CHUNK: u32 = 1 << 20;

pub use crate::names::is_archive_name;

type Key = (String, String);

pub struct Uploads {
    files: Mutex<HashMap<Key, Arc<Pending>>>,
    /// Pending files one uid may have at once (`[mount] max_pending_uploads`).
    per_user: std::sync::atomic::AtomicUsize,
    quota: quota::Quota,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            files: Mutex::default(),
            per_user: std::sync::atomic::AtomicUsize::new(usize::MAX),
            quota: quota::Quota::default(),
        }
    }
}

/// Where an upload goes: the bucket's store and its size limit.
#[derive(Clone)]
pub struct Destination {
    pub store: Arc<dyn ProjectStore>,
    pub max_object_size: Option<u64>,
}

/// Who writes: the process whose close commits, and the uid whose limit
/// the upload counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    pub process: u32,
    pub uid: u32,
}

/// One open file descriptor writing into a pending file. A descriptor that
/// keeps an existing archive (opened for writing without O_TRUNC, as `zip`
/// does to test that it may) starts its upload only when it first writes.
pub struct WriteHandle {
    destination: Destination,
    pub bucket: String,
    pub name: String,
    /// The process (not the thread) that opened it, whose close commits,
    /// and its uid.
    opener: Writer,
    /// The pending file, once the first write (or truncation) started it.
    target: tokio::sync::OnceCell<Arc<Pending>>,
    /// The archive being modified, until the upload takes over.
    original: Option<Box<dyn ObjectReader>>,
    state: Mutex<WriteState>,
}

/// Where a write handle is in its life.
#[derive(Clone, Debug)]
enum WriteState {
    /// Open; `wrote` once anything was written or truncated through it.
    Open { wrote: bool },
    /// The writer closed it (its own close, or the kernel's release); a
    /// staging file's other references may still write.
    Closed { wrote: bool },
    /// Committed or refused: every later close repeats the outcome, and
    /// every later write fails, so nothing changes after the check.
    Decided(Result<ObjectInfo>),
}

impl WriteState {
    fn wrote(&self) -> bool {
        match self {
            WriteState::Open { wrote } | WriteState::Closed { wrote } => *wrote,
            WriteState::Decided(_) => true,
        }
    }
}

impl WriteHandle {
    fn state(&self) -> std::sync::MutexGuard<'_, WriteState> {
        lock(&self.state)
    }

    /// A write or truncation failed: the upload is refused with `error`
    /// unless it was decided already.
    fn fail(&self, error: Error) -> Error {
        let mut state = self.state();
        if !matches!(*state, WriteState::Decided(_)) {
            *state = WriteState::Decided(Err(error.clone()));
        }
        error
    }

    /// A write is about to go in: refused once the upload is decided.
    fn check_writable(&self) -> Result<()> {
        match &*self.state() {
            WriteState::Decided(Err(e)) => Err(e.clone()),
            WriteState::Decided(Ok(_)) => Err(Error::provider(format!(
                "projects/{}/{}: the upload was already committed",
                self.bucket, self.name
            ))),
            _ => Ok(()),
        }
    }

    fn mark_written(&self) {
        let mut state = self.state();
        match &mut *state {
            WriteState::Open { wrote } | WriteState::Closed { wrote } => *wrote = true,
            WriteState::Decided(_) => {}
        }
    }

    /// The writer is done; `true` the first time only.
    fn close(&self) -> bool {
        let mut state = self.state();
        match *state {
            WriteState::Open { wrote } => {
                *state = WriteState::Closed { wrote };
                true
            }
            _ => false,
        }
    }

    pub fn is_archive(&self) -> bool {
        is_archive_name(&self.name)
    }

    pub fn size(&self) -> u64 {
        match (self.target.get(), &self.original) {
            (Some(pending), _) => pending.size(),
            (None, Some(original)) => original.info().size,
            (None, None) => 0,
        }
    }

    pub fn modified(&self) -> SystemTime {
        match (self.target.get(), &self.original) {
            (Some(pending), _) => pending.modified(),
            (None, Some(original)) => original.info().modified,
            (None, None) => SystemTime::now(),
        }
    }

    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        match (self.target.get(), &self.original) {
            (Some(pending), _) => pending.read_at(offset, len).await,
            (None, Some(original)) => original.read_at(offset, len).await,
            (None, None) => Ok(Vec::new()),
        }
    }
}

impl Uploads {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Pending>>> {
        lock(&self.files)
    }

    fn key(bucket: &str, name: &str) -> Key {
        (bucket.to_string(), name.to_string())
    }

    /// With no upload in flight, the buffers of the last ones (parts of up
    /// to part_size, 1 MiB writes) are given back to the system: glibc keeps
    /// freed memory in its arenas otherwise, and a burst of uploads would
    /// set the daemon's RSS for good. The trim walks every arena (a fraction
    /// of a millisecond, more under load), so it runs beside the reply, not
    /// before it; a burst of commits queues one.
    fn return_memory_if_idle(&self) {
        static QUEUED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        use std::sync::atomic::Ordering;
        if !self.files().is_empty() || QUEUED.swap(true, Ordering::AcqRel) {
            return;
        }
        let trim = || {
            QUEUED.store(false, Ordering::Release);
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }

    pub fn set_limit_per_user(&self, limit: usize) {
        self.per_user
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// One user cannot hold the daemon's descriptors, disk and tasks with
    /// placeholders: past the limit, a new pending file is EDQUOT.
    fn pending_slot(&self, handle: &WriteHandle) -> Result<quota::Slot> {
        let limit = self.per_user.load(std::sync::atomic::Ordering::Relaxed);
        let uid = handle.opener.uid;
        let held = match self.quota.take(uid, limit) {
            Ok(slot) => return Ok(slot),
            Err(held) => held,
        };
        warn!(
            uid,
            held,
            limit,
            path = ?format!("projects/{}/{}", handle.bucket, handle.name),
            "refusing a new upload: this uid has max_pending_uploads uploads and staging files pending"
        );
        Err(Error::new(
            ErrorKind::QuotaExceeded,
            format!(
                "uid {uid} has {held} uploads pending, the most [mount] max_pending_uploads allows"
            ),
        ))
    }

    pub fn get(&self, bucket: &str, name: &str) -> Option<Arc<Pending>> {
        self.files().get(&Self::key(bucket, name)).cloned()
    }

    /// Pending files of a bucket: (name, size, modified).
    pub fn list(&self, bucket: &str) -> Vec<(String, u64, SystemTime)> {
        self.files()
            .iter()
            .filter(|((b, _), _)| b == bucket)
            .map(|((_, name), p)| (name.clone(), p.size(), p.modified()))
            .collect()
    }

    fn remove_if_same(&self, bucket: &str, name: &str, pending: &Arc<Pending>) {
        let mut files = self.files();
        let key = Self::key(bucket, name);
        if files.get(&key).is_some_and(|p| Arc::ptr_eq(p, pending)) {
            files.remove(&key);
        }
    }

    /// Opens `name` for writing. An archive always gets an upload of its own
    /// (the last commit wins); a staging file is shared by its writers.
    /// `original` is an existing archive the writes modify: it is copied into
    /// the upload at the first write.
    pub async fn open(
        &self,
        bucket_name: &str,
        destination: Destination,
        name: &str,
        truncate: bool,
        original: Option<Box<dyn ObjectReader>>,
        writer: Writer,
    ) -> Result<Arc<WriteHandle>> {
        let lazy = original.is_some();
        let handle = Arc::new(WriteHandle {
            destination,
            bucket: bucket_name.to_string(),
            name: name.to_string(),
            opener: writer,
            target: tokio::sync::OnceCell::new(),
            original,
            state: Mutex::new(WriteState::Open { wrote: false }),
        });
        if !lazy {
            let pending = self.target(&handle).await?;
            if truncate {
                pending.set_len(0).await?;
            }
        }
        Ok(handle)
    }

    /// The pending file `handle` writes into, started on first use.
    async fn target<'h>(&self, handle: &'h WriteHandle) -> Result<&'h Arc<Pending>> {
        handle
            .target
            .get_or_try_init(|| async {
                let existing = match is_archive_name(&handle.name) {
                    true => None,
                    false => self.get(&handle.bucket, &handle.name),
                };
                let pending = match existing {
                    Some(pending) => pending,
                    None => {
                        let slot = self.pending_slot(handle)?;
                        let store = &handle.destination.store;
                        let upload = store.begin_upload(&handle.bucket, &handle.name).await?;
                        let pending = Arc::new(Pending::new(
                            handle.destination.max_object_size,
                            upload,
                            slot,
                        ));
                        if let Some(original) = &handle.original {
                            copy_into(&pending, original.as_ref()).await?;
                        }
                        self.files()
                            .insert(Self::key(&handle.bucket, &handle.name), pending.clone());
                        pending
                    }
                };
                pending.add_writer();
                Ok(pending)
            })
            .await
    }

    pub async fn set_len(&self, handle: &WriteHandle, len: u64) -> Result<()> {
        handle.check_writable()?;
        check_size(handle, len)?;
        let pending = self.target(handle).await?;
        pending.set_len(len).await?;
        handle.mark_written();
        Ok(())
    }

    pub async fn write(&self, handle: &WriteHandle, offset: u64, data: Vec<u8>) -> Result<u32> {
        handle.check_writable()?;
        let len = data.len() as u64;
        let end = offset.saturating_add(len);
        check_size(handle, end).map_err(|e| handle.fail(e))?;
        let pending = self.target(handle).await.map_err(|e| handle.fail(e))?;
        pending
            .write_at(offset, data)
            .await
            .map_err(|e| handle.fail(e))?;
        handle.mark_written();
        Ok(len as u32)
    }

    /// The writer's own close, from any of its threads, commits an
    /// archive; closes of descriptors it shared with other processes (a
    /// forked child's copy) do not. A staging file is ready for its rename
    /// once its writer closed it (the kernel's release comes later).
    pub async fn flush(&self, handle: &WriteHandle, process: u32) -> Result<Option<ObjectInfo>> {
        if process != handle.opener.process {
            return Ok(None);
        }
        self.close_writer(handle);
        match handle.is_archive() {
            true => self.commit(handle).await,
            false => Ok(None),
        }
    }

    fn close_writer(&self, handle: &WriteHandle) {
        if let (true, Some(pending)) = (handle.close(), handle.target.get()) {
            pending.remove_writer();
        }
    }

    async fn commit(&self, handle: &WriteHandle) -> Result<Option<ObjectInfo>> {
        let state = handle.state().clone();
        if let WriteState::Decided(outcome) = state {
            // A write already failed (EFBIG, EIO): by the time close()
            // reports it, nothing of the upload is left behind.
            if outcome.is_err()
                && let Some(pending) = handle.target.get()
            {
                pending.abort().await;
                self.remove_if_same(&handle.bucket, &handle.name, pending);
            }
            return outcome.map(|_| None);
        }
        if !state.wrote() {
            return Ok(None);
        }
        let Some(pending) = handle.target.get() else {
            return Ok(None);
        };
        if let Err(too_big) = check_size(handle, pending.size()) {
            pending.abort().await;
            self.remove_if_same(&handle.bucket, &handle.name, pending);
            return Err(handle.fail(too_big));
        }
        let path = format!("projects/{}/{}", handle.bucket, handle.name);
        let outcome = pending.commit(&handle.name, false).await;
        match &outcome {
            Ok(info) => info!(path, size = info.size, "archive committed"),
            Err(e) => warn!(path, error = %e, "archive refused"),
        }
        self.remove_if_same(&handle.bucket, &handle.name, pending);
        *handle.state() = WriteState::Decided(outcome.clone());
        self.return_memory_if_idle();
        outcome.map(Some)
    }

    /// Finishes what the writer's close could not (it never came, or the
    /// writer handed its descriptor on and exited).
    pub async fn release(&self, handle: &WriteHandle) -> Option<ObjectInfo> {
        self.close_writer(handle);
        let pending = handle.target.get()?;
        if !handle.is_archive() {
            return None;
        }
        let committed = self.commit(handle).await.ok().flatten();
        if matches!(*handle.state(), WriteState::Decided(Err(_))) {
            pending.abort().await;
            self.remove_if_same(&handle.bucket, &handle.name, pending);
        }
        committed
    }

    /// Commits staging file `from` as archive `to` (a rename). A rejected
    /// archive stays staged under `from`.
    pub async fn commit_staged(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        let pending = self
            .get(bucket, from)
            .ok_or_else(|| Error::not_found(format!("projects/{bucket}/{from}")))?;
        if pending.writers() > 0 {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("projects/{bucket}/{from} is still open for writing"),
            ));
        }
        let info = pending.commit(to, true).await?;
        self.remove_if_same(bucket, from, &pending);
        info!(path = ?format!("projects/{bucket}/{to}"), size = info.size, from, "archive committed by rename");
        Ok(info)
    }

    /// Renames a pending file to another pending name.
    pub fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<()> {
        let mut files = self.files();
        let pending = files
            .remove(&Self::key(bucket, from))
            .ok_or_else(|| Error::not_found(format!("projects/{bucket}/{from}")))?;
        files.insert(Self::key(bucket, to), pending);
        Ok(())
    }

    /// Drops a pending file (unlink). Returns whether there was one.
    pub async fn discard(&self, bucket: &str, name: &str) -> bool {
        let removed = self.files().remove(&Self::key(bucket, name));
        match removed {
            Some(pending) => {
                if pending.writers() == 0 {
                    pending.abort().await;
                }
                true
            }
            None => false,
        }
    }

    /// Drops staging files left unrenamed for `ttl` after their last close.
    pub async fn reap(&self, ttl: Duration) -> Vec<(String, String)> {
        let expired: Vec<(Key, Arc<Pending>)> = {
            let mut files = self.files();
            let keys: Vec<Key> = files
                .iter()
                .filter(|(_, p)| p.writers() == 0 && p.idle_since().elapsed() >= ttl)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| files.remove(&k).map(|p| (k, p)))
                .collect()
        };
        let mut names = Vec::new();
        for ((bucket, name), pending) in expired {
            warn!(path = ?format!("projects/{bucket}/{name}"), "dropping a staging file never renamed to an archive");
            pending.abort().await;
            names.push((bucket, name));
        }
        self.return_memory_if_idle();
        names
    }
}

/// Refused as soon as a write or a truncation crosses the limit, and again
/// at commit.
fn check_size(handle: &WriteHandle, size: u64) -> Result<()> {
    match handle.destination.max_object_size {
        Some(max) if size > max => Err(Error::new(
            ErrorKind::TooBig,
            format!(
                "projects/{}/{}: larger than the store's max_object_size of {max} bytes",
                handle.bucket, handle.name
            ),
        )),
        _ => Ok(()),
    }
}

async fn copy_into(pending: &Pending, reader: &dyn ObjectReader) -> Result<()> {
    let size = reader.info().size;
    let mut offset = 0;
    while offset < size {
        let chunk = reader.read_at(offset, SEED_CHUNK).await?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len() as u64;
        pending.write_at(offset, chunk).await?;
        offset += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FilesystemConfig;
    use crate::store::FilesystemStore;

    async fn bucket(root: &std::path::Path) -> Destination {
        let config = FilesystemConfig {
            root: root.to_path_buf(),
            sync: false,
        };
        let store = FilesystemStore::open(&config, &["b".to_string()])
            .await
            .unwrap();
        Destination {
            store: Arc::new(store),
            max_object_size: None,
        }
    }

    /// Files in `dir` and in the daemon's own directory in it, its lock
    /// aside.
    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| match p.is_dir() {
                true => files_in(&p),
                false => usize::from(p.file_name().is_some_and(|n| n != "lock")),
            })
            .sum()
    }

    #[tokio::test]
    async fn unrenamed_staging_files_are_dropped_after_their_ttl() {
        let root = tempfile::tempdir().unwrap();
        let uploads = Uploads::default();
        let handle = uploads
            .open(
                "b",
                bucket(root.path()).await,
                "zi123",
                true,
                None,
                Writer { process: 1, uid: 0 },
            )
            .await
            .unwrap();
        uploads
            .write(&handle, 0, b"partial".to_vec())
            .await
            .unwrap();
        assert!(uploads.reap(Duration::ZERO).await.is_empty(), "still open");
        uploads.flush(&handle, 1).await.unwrap();
        uploads.release(&handle).await;
        assert_eq!(uploads.list("b").len(), 1);
        assert!(
            uploads.reap(Duration::from_secs(600)).await.is_empty(),
            "not yet"
        );
        let dropped = uploads.reap(Duration::ZERO).await;
        assert_eq!(dropped, [("b".to_string(), "zi123".to_string())]);
        assert!(uploads.list("b").is_empty());
        assert_eq!(
            files_in(&root.path().join("b")),
            0,
            "its temporary file is gone"
        );
    }
}
