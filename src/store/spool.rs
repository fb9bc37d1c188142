//! A local file holding an upload until it commits: written at any offset,
//! readable (for the archive check), and handed to the kernel for FUSE
//! passthrough. Removed when dropped unless kept by a commit.

use super::blocking;
use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Names of spool files; a store removes leftovers of a crash at start.
pub const SPOOL_PREFIX: &str = ".credfs-upload-";

pub struct SpoolFile {
    file: Arc<File>,
    /// `None` once handed over (renamed into place) or removed.
    path: Option<PathBuf>,
}

impl SpoolFile {
    pub async fn create(dir: &Path) -> Result<SpoolFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "{SPOOL_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::from_io(path.display(), &e))?;
            Ok(SpoolFile {
                file: Arc::new(file),
                path: Some(path),
            })
        })
        .await
    }

    /// Removes what a crashed daemon left in `dir`.
    pub fn clean(dir: &Path) -> Result<()> {
        let entries = fs::read_dir(dir).map_err(|e| Error::from_io(dir.display(), &e))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(SPOOL_PREFIX)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The file, open and by path, for sending it.
    pub fn spooled(&self) -> super::part_streamer::Spooled {
        super::part_streamer::Spooled {
            file: self.file.clone(),
            path: self.path.clone().unwrap_or_default(),
        }
    }

    /// Asked of the file: the kernel may write it without us.
    pub fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    pub async fn write_at(&self, offset: u64, data: Vec<u8>) -> Result<()> {
        let file = self.file.clone();
        blocking(move || {
            file.write_all_at(&data, offset)
                .map_err(|e| Error::from_io("spool write", &e))
        })
        .await
    }

    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let file = self.file.clone();
        blocking(move || read_full_at(&file, offset, len)).await
    }

    pub async fn set_len(&self, len: u64) -> Result<()> {
        let file = self.file.clone();
        blocking(move || {
            file.set_len(len)
                .map_err(|e| Error::from_io("truncate", &e))
        })
        .await
    }

    /// Renames the file to `target` (same filesystem), after an fsync of
    /// it and of its directory when `sync`. Consumes the spool.
    pub async fn rename_into(mut self, target: PathBuf, sync: bool) -> Result<fs::Metadata> {
        let path = self
            .path
            .take()
            .ok_or_else(|| Error::provider("upload already committed"))?;
        let file = self.file.clone();
        blocking(move || {
            let result = (|| {
                if sync {
                    file.sync_all().map_err(|e| Error::from_io("fsync", &e))?;
                }
                fs::rename(&path, &target).map_err(|e| Error::from_io(target.display(), &e))?;
                if sync && let Some(dir) = target.parent() {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| Error::from_io(dir.display(), &e))?;
                }
                fs::metadata(&target).map_err(|e| Error::from_io(target.display(), &e))
            })();
            if result.is_err() {
                let _ = fs::remove_file(&path);
            }
            result
        })
        .await
    }

    pub async fn remove(mut self) {
        if let Some(path) = self.path.take() {
            let _ = blocking(move || {
                let _ = fs::remove_file(&path);
                Ok(())
            })
            .await;
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

pub fn read_full_at(file: &File, offset: u64, len: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from_io("read", &e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// How a store turns a finished spool into its object.
#[async_trait::async_trait]
pub trait Committer: Send + Sync {
    /// Stores `spool` as `name`; the spool is the committer's to remove.
    async fn commit(&mut self, spool: SpoolFile, name: &str) -> Result<super::ObjectInfo>;
    /// Undoes anything begun early (parts sent while writing).
    async fn abort(&mut self) {}
}

/// An upload held in a spool file until a store's `Committer` stores it.
pub struct SpooledUpload<C> {
    spool: Option<SpoolFile>,
    committer: C,
}

impl<C: Committer> SpooledUpload<C> {
    pub fn new(spool: SpoolFile, committer: C) -> Self {
        SpooledUpload {
            spool: Some(spool),
            committer,
        }
    }

    fn spool(&self) -> Result<&SpoolFile> {
        self.spool
            .as_ref()
            .ok_or_else(|| Error::provider("upload already committed"))
    }
}

#[async_trait::async_trait]
impl<C: Committer> super::Upload for SpooledUpload<C> {
    fn size(&self) -> u64 {
        self.spool.as_ref().map_or(0, SpoolFile::size)
    }

    fn backing_file(&self) -> Option<Arc<File>> {
        self.spool.as_ref().map(SpoolFile::file)
    }

    async fn write_at(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        self.spool()?.write_at(offset, data).await
    }

    async fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.spool()?.read_at(offset, len).await
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        self.spool()?.set_len(len).await
    }

    async fn commit(mut self: Box<Self>, name: &str) -> Result<super::ObjectInfo> {
        let spool = self
            .spool
            .take()
            .ok_or_else(|| Error::provider("upload already committed"))?;
        self.committer.commit(spool, name).await
    }

    async fn abort(mut self: Box<Self>) {
        self.committer.abort().await;
        if let Some(spool) = self.spool.take() {
            spool.remove().await;
        }
    }
}
