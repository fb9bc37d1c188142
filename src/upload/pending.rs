//! A file created through the mount and not committed yet: an archive being
//! written, or a staging file (`ziXXXXXX`, `.x.zip.XXXXXX`) waiting for its
//! rename.

use crate::error::{Error, ErrorKind, Result};
use crate::store::{ObjectInfo, Upload};
use crate::sync::lock;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

pub struct Pending {
    max_object_size: Option<u64>,
    /// Its place in its uid's pending-upload limit, held while it lives.
    _slot: super::quota::Slot,
    /// `None` once committed or aborted.
    upload: tokio::sync::Mutex<Option<Box<dyn Upload>>>,
    len: AtomicU64,
    writers: AtomicUsize,
    touched: Mutex<(SystemTime, Instant)>,
}

impl Pending {
    pub fn new(
        max_object_size: Option<u64>,
        upload: Box<dyn Upload>,
        slot: super::quota::Slot,
    ) -> Self {
        Pending {
            max_object_size,
            _slot: slot,
            upload: tokio::sync::Mutex::new(Some(upload)),
            len: AtomicU64::new(0),
            writers: AtomicUsize::new(0),
            touched: Mutex::new((SystemTime::now(), Instant::now())),
        }
    }

    pub fn size(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn modified(&self) -> SystemTime {
        lock(&self.touched).0
    }

    pub fn idle_since(&self) -> Instant {
        lock(&self.touched).1
    }

    fn touch(&self) {
        *lock(&self.touched) = (SystemTime::now(), Instant::now());
    }

    pub fn writers(&self) -> usize {
        self.writers.load(Ordering::Acquire)
    }

    pub fn add_writer(&self) {
        self.writers.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove_writer(&self) {
        self.writers.fetch_sub(1, Ordering::AcqRel);
        self.touch();
    }

    fn closed() -> Error {
        Error::provider("the upload was already committed or discarded")
    }

    pub async fn write_at(&self, offset: u64, data: Vec<u8>) -> Result<()> {
        let mut upload = self.upload.lock().await;
        let upload = upload.as_mut().ok_or_else(Self::closed)?;
        upload.write_at(offset, data).await?;
        self.len.store(upload.size(), Ordering::Release);
        self.touch();
        Ok(())
    }

    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut upload = self.upload.lock().await;
        upload
            .as_mut()
            .ok_or_else(Self::closed)?
            .read_at(offset, len)
            .await
    }

    pub async fn set_len(&self, len: u64) -> Result<()> {
        if let Some(max) = self.max_object_size.filter(|max| len > *max) {
            return Err(Error::new(
                ErrorKind::TooBig,
                format!("{len} bytes is larger than the store's max_object_size of {max} bytes"),
            ));
        }
        let mut upload = self.upload.lock().await;
        upload
            .as_mut()
            .ok_or_else(Self::closed)?
            .set_len(len)
            .await?;
        self.len.store(len, Ordering::Release);
        self.touch();
        Ok(())
    }

    /// Checks the bytes are a complete ZIP archive and commits them as
    /// `name`. A rejected archive is kept for another try when `keep_rejected`
    /// (a rename can be retried), else discarded.
    pub async fn commit(&self, name: &str, keep_rejected: bool) -> Result<ObjectInfo> {
        let mut slot = self.upload.lock().await;
        let mut upload = slot.take().ok_or_else(Self::closed)?;
        let len = upload.size();
        if let Err(rejected) = super::zip_check::check(len, &mut upload).await {
            if keep_rejected {
                *slot = Some(upload);
            } else {
                upload.abort().await;
            }
            return Err(rejected);
        }
        upload.commit(name).await
    }

    pub async fn abort(&self) {
        if let Some(upload) = self.upload.lock().await.take() {
            upload.abort().await;
        }
    }
}
