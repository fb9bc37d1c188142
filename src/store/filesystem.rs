//! `filesystem`: archives as files under `root/<bucket>/`. An upload is a
//! hidden temporary file in the bucket directory, renamed into place on
//! commit, so a crash or a rejected archive never leaves a partial file.
//! The root and each bucket directory are opened once, through `trust`, and
//! everything after goes through their descriptors without following
//! links: a symlink planted in a bucket (`x.zip -> /etc/shadow`) is not an
//! archive, and is neither listed nor served (ENOENT); a delete or rename
//! of such a name acts on the link itself.

use super::instance;
use super::spool::{Committer, SpoolFile, SpooledUpload, TrustedDir, read_full_at};
use super::{ObjectInfo, ObjectReader, ProjectStore, Upload, blocking};
use crate::config::FilesystemConfig;
use crate::error::{Error, Result};
use crate::names::is_archive_name;
use crate::trust;
use async_trait::async_trait;
use rustix::fs::{Mode, OFlags, Stat};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct FilesystemStore {
    buckets: BTreeMap<String, Arc<TrustedDir>>,
    sync: bool,
}

impl FilesystemStore {
    /// Opens the root and the bucket directories (making missing ones).
    /// Removes nothing: `check --probe` and reloads open stores too.
    pub async fn open(config: &FilesystemConfig, buckets: &[String]) -> Result<Self> {
        let (root, sync, names) = (config.root.clone(), config.sync, buckets.to_vec());
        let buckets = blocking(move || {
            let root = TrustedDir::open(&root, "store root")?;
            let mut dirs = BTreeMap::new();
            for name in names {
                let dir = root.subdir(&name, "bucket directory")?;
                dirs.insert(name, Arc::new(dir));
            }
            Ok(dirs)
        })
        .await?;
        Ok(FilesystemStore { buckets, sync })
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<TrustedDir>> {
        self.buckets
            .get(bucket)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("bucket {bucket}")))
    }
}

fn info_of(stat: &Stat) -> ObjectInfo {
    let modified = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(
            stat.st_mtime.max(0) as u64,
            stat.st_mtime_nsec as u32,
        ))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    ObjectInfo {
        size: stat.st_size.max(0) as u64,
        modified,
        // A replacement is a rename onto the name: a new inode.
        version: stat.st_ino,
    }
}

/// The archive `name` in `dir`, when it is a regular file there (not a
/// link to one).
fn archive_stat(dir: &TrustedDir, name: &str) -> Result<Option<Stat>> {
    match trust::stat_in(dir.fd(), name) {
        Ok(stat) if trust::is_regular(&stat) => Ok(Some(stat)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::from_io(dir.shown(name), &e)),
    }
}

#[async_trait]
impl ProjectStore for FilesystemStore {
    async fn list(&self, bucket: &str) -> Result<Vec<(String, ObjectInfo)>> {
        let dir = self.bucket(bucket)?;
        blocking(move || {
            let mut objects = Vec::new();
            for name in dir.names()? {
                if !is_archive_name(&name) {
                    continue;
                }
                if let Ok(Some(stat)) = archive_stat(&dir, &name) {
                    objects.push((name, info_of(&stat)));
                }
            }
            Ok(objects)
        })
        .await
    }

    async fn stat(&self, bucket: &str, name: &str) -> Result<Option<ObjectInfo>> {
        if !is_archive_name(name) {
            return Ok(None);
        }
        let dir = self.bucket(bucket)?;
        let name = name.to_string();
        blocking(move || Ok(archive_stat(&dir, &name)?.map(|s| info_of(&s)))).await
    }

    async fn open(&self, bucket: &str, name: &str) -> Result<Box<dyn ObjectReader>> {
        let dir = self.bucket(bucket)?;
        // As `stat` and every other store: a file in the bucket directory
        // under another name is not an archive, and must not stand in for
        // a staging file of that name.
        if !is_archive_name(name) {
            return Err(Error::not_found(format!(
                "{}: not an archive",
                dir.shown(name)
            )));
        }
        let name = name.to_string();
        blocking(move || {
            let shown = dir.shown(&name);
            // NONBLOCK: a FIFO planted here must not hang the open.
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(dir.fd(), name.as_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::LOOP) => {
                    return Err(Error::not_found(format!(
                        "{shown}: a symlink, not an archive"
                    )));
                }
                Err(e) => return Err(Error::from_io(&shown, &e.into())),
            };
            let stat = rustix::fs::fstat(&fd).map_err(|e| Error::from_io(&shown, &e.into()))?;
            if !trust::is_regular(&stat) {
                return Err(Error::not_found(format!("{shown}: not a regular file")));
            }
            Ok(Box::new(FileReader {
                file: Arc::new(File::from(fd)),
                info: info_of(&stat),
            }) as Box<dyn ObjectReader>)
        })
        .await
    }

    /// The spool is in this daemon's own directory inside the bucket
    /// directory: on the same filesystem, so the commit is a rename.
    async fn begin_upload(&self, bucket: &str, _name: &str) -> Result<Box<dyn Upload>> {
        let dir = self.bucket(bucket)?;
        let bucket_dir = dir.clone();
        let own = blocking(move || instance::claim(&bucket_dir, "bucket directory")).await?;
        let spool = SpoolFile::create(&own).await?;
        let committer = RenameInto {
            dir,
            sync: self.sync,
        };
        Ok(Box::new(SpooledUpload::new(spool, committer)))
    }

    async fn sweep(&self) {
        let dirs: Vec<Arc<TrustedDir>> = self.buckets.values().cloned().collect();
        let _ = blocking(move || {
            for dir in dirs {
                instance::sweep(&dir, "bucket directory");
            }
            Ok(())
        })
        .await;
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<()> {
        let dir = self.bucket(bucket)?;
        let name = name.to_string();
        blocking(move || dir.unlink(&name)).await
    }

    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        let dir = self.bucket(bucket)?;
        let (from, to) = (from.to_string(), to.to_string());
        blocking(move || {
            rustix::fs::renameat(dir.fd(), from.as_str(), dir.fd(), to.as_str())
                .map_err(|e| Error::from_io(dir.shown(&from), &e.into()))?;
            let stat =
                trust::stat_in(dir.fd(), &to).map_err(|e| Error::from_io(dir.shown(&to), &e))?;
            Ok(info_of(&stat))
        })
        .await
    }
}

struct FileReader {
    file: Arc<File>,
    info: ObjectInfo,
}

#[async_trait]
impl ObjectReader for FileReader {
    fn info(&self) -> ObjectInfo {
        self.info
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let file = self.file.clone();
        blocking(move || read_full_at(&file, offset, u64::from(len))).await
    }
}

/// Commits a spool file in the bucket directory by renaming it.
struct RenameInto {
    dir: Arc<TrustedDir>,
    sync: bool,
}

#[async_trait]
impl Committer for RenameInto {
    async fn commit(&mut self, spool: SpoolFile, name: &str) -> Result<ObjectInfo> {
        let metadata = spool
            .rename_into(self.dir.clone(), name.to_string(), self.sync)
            .await?;
        Ok(ObjectInfo {
            size: metadata.len(),
            modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            version: std::os::unix::fs::MetadataExt::ino(&metadata),
        })
    }
}
