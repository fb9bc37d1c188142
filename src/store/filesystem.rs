//! `filesystem`: archives as files under `root/<bucket>/`. An upload is a
//! hidden temporary file in the bucket directory, renamed into place on
//! commit, so a crash or a rejected archive never leaves a partial file.

use super::spool::{Committer, SpoolFile, SpooledUpload, read_full_at};
use super::{ObjectInfo, ObjectReader, ProjectStore, Upload, blocking};
use crate::error::{Error, Result};
use async_trait::async_trait;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

pub struct FilesystemStore {
    root: PathBuf,
    sync: bool,
}

impl FilesystemStore {
    /// Creates missing bucket directories and removes uploads a crashed
    /// daemon left behind.
    pub async fn open(root: PathBuf, buckets: &[String], sync: bool) -> Result<Self> {
        let dirs: Vec<PathBuf> = buckets.iter().map(|b| root.join(b)).collect();
        blocking(move || {
            for dir in dirs {
                fs::create_dir_all(&dir).map_err(|e| Error::from_io(dir.display(), &e))?;
                SpoolFile::clean(&dir)?;
            }
            Ok(())
        })
        .await?;
        Ok(FilesystemStore { root, sync })
    }

    fn object_path(&self, bucket: &str, name: &str) -> PathBuf {
        self.root.join(bucket).join(name)
    }
}

fn info_of(metadata: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        size: metadata.len(),
        modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

fn is_archive_name(name: &str) -> bool {
    name.ends_with(".zip") && !name.starts_with('.')
}

#[async_trait]
impl ProjectStore for FilesystemStore {
    async fn list(&self, bucket: &str) -> Result<Vec<(String, ObjectInfo)>> {
        let dir = self.root.join(bucket);
        blocking(move || {
            let entries = fs::read_dir(&dir).map_err(|e| Error::from_io(dir.display(), &e))?;
            let mut objects = Vec::new();
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !is_archive_name(&name) {
                    continue;
                }
                if let Ok(metadata) = entry.metadata()
                    && metadata.is_file()
                {
                    objects.push((name, info_of(&metadata)));
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
        let path = self.object_path(bucket, name);
        blocking(move || match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(info_of(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from_io(path.display(), &e)),
        })
        .await
    }

    async fn open(&self, bucket: &str, name: &str) -> Result<Box<dyn ObjectReader>> {
        let path = self.object_path(bucket, name);
        blocking(move || {
            let file = File::open(&path).map_err(|e| Error::from_io(path.display(), &e))?;
            let metadata = file
                .metadata()
                .map_err(|e| Error::from_io(path.display(), &e))?;
            Ok(Box::new(FileReader {
                file: Arc::new(file),
                info: info_of(&metadata),
            }) as Box<dyn ObjectReader>)
        })
        .await
    }

    async fn begin_upload(&self, bucket: &str, _name: &str) -> Result<Box<dyn Upload>> {
        let dir = self.root.join(bucket);
        let spool = SpoolFile::create(&dir).await?;
        let committer = RenameInto {
            dir,
            sync: self.sync,
        };
        Ok(Box::new(SpooledUpload::new(spool, committer)))
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<()> {
        let path = self.object_path(bucket, name);
        blocking(move || fs::remove_file(&path).map_err(|e| Error::from_io(path.display(), &e)))
            .await
    }

    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        let (from, to) = (self.object_path(bucket, from), self.object_path(bucket, to));
        blocking(move || {
            fs::rename(&from, &to).map_err(|e| Error::from_io(from.display(), &e))?;
            let metadata = fs::metadata(&to).map_err(|e| Error::from_io(to.display(), &e))?;
            Ok(info_of(&metadata))
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
        blocking(move || read_full_at(&file, offset, len)).await
    }
}

/// Commits a spool file in the bucket directory by renaming it.
struct RenameInto {
    dir: PathBuf,
    sync: bool,
}

#[async_trait]
impl Committer for RenameInto {
    async fn commit(&mut self, spool: SpoolFile, name: &str) -> Result<ObjectInfo> {
        let metadata = spool.rename_into(self.dir.join(name), self.sync).await?;
        Ok(info_of(&metadata))
    }
}
