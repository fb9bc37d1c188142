//! `filesystem`: archives as files under `root/<bucket>/`. An upload is a
//! hidden temporary file in the bucket directory, renamed into place on
//! commit, so a crash or a rejected archive never leaves a partial file.

use super::{ObjectInfo, ObjectReader, ProjectStore, Upload, blocking};
use crate::error::{Error, Result};
use async_trait::async_trait;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

const TEMP_PREFIX: &str = ".credfs-upload-";

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
                let entries = fs::read_dir(&dir).map_err(|e| Error::from_io(dir.display(), &e))?;
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::from_io(dir.display(), &e))
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

    async fn begin_upload(&self, bucket: &str) -> Result<Box<dyn Upload>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join(bucket);
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let sync = self.sync;
        blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .map_err(|e| Error::from_io(temp.display(), &e))?;
            Ok(Box::new(FileUpload {
                file: Arc::new(file),
                temp: Some(temp),
                dir,
                len: 0,
                sync,
            }) as Box<dyn Upload>)
        })
        .await
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

fn read_full_at(file: &File, offset: u64, len: u32) -> Result<Vec<u8>> {
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

struct FileUpload {
    file: Arc<File>,
    /// `None` once committed: nothing left to clean up.
    temp: Option<PathBuf>,
    dir: PathBuf,
    len: u64,
    sync: bool,
}

#[async_trait]
impl Upload for FileUpload {
    /// Asked of the file: writes may reach it without passing through us.
    fn size(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(self.len)
    }

    fn backing_file(&self) -> Option<Arc<File>> {
        Some(self.file.clone())
    }

    async fn write_at(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        let file = self.file.clone();
        let end = offset + data.len() as u64;
        blocking(move || {
            file.write_all_at(&data, offset)
                .map_err(|e| Error::from_io("write", &e))
        })
        .await?;
        self.len = self.len.max(end);
        Ok(())
    }

    async fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let file = self.file.clone();
        blocking(move || read_full_at(&file, offset, len)).await
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        let file = self.file.clone();
        blocking(move || {
            file.set_len(len)
                .map_err(|e| Error::from_io("truncate", &e))
        })
        .await?;
        self.len = len;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, name: &str) -> Result<ObjectInfo> {
        let Some(temp) = self.temp.take() else {
            return Err(Error::provider("upload already committed"));
        };
        let (file, dir, sync) = (self.file.clone(), self.dir.clone(), self.sync);
        let target = dir.join(name);
        blocking(move || {
            if sync {
                file.sync_all().map_err(|e| Error::from_io("fsync", &e))?;
            }
            let metadata = file.metadata().map_err(|e| Error::from_io("stat", &e))?;
            fs::rename(&temp, &target).map_err(|e| {
                let _ = fs::remove_file(&temp);
                Error::from_io(target.display(), &e)
            })?;
            if sync {
                sync_dir(&dir)?;
            }
            Ok(info_of(&metadata))
        })
        .await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(temp) = self.temp.take() {
            let _ = blocking(move || {
                let _ = fs::remove_file(&temp);
                Ok(())
            })
            .await;
        }
    }
}

impl Drop for FileUpload {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}
