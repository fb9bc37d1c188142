//! A store that fails or stalls where a test says (`crate::faults`), and
//! otherwise is the store it wraps: readers and uploads it hands out are
//! wrapped too, so a read or a commit can fail as well as an open.

use super::{ObjectInfo, ObjectReader, ProjectStore, Upload};
use crate::error::Result;
use crate::faults::Faults;
use async_trait::async_trait;
use std::sync::Arc;

/// The calls a plan can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    List,
    Stat,
    Open,
    /// A read through an opened reader.
    Read,
    /// One range GET of a prefetching reader (`FaultyRanges`).
    GetRange,
    BeginUpload,
    Write,
    /// A read of the upload's own bytes (the archive check does this).
    ReadUpload,
    SetLen,
    Commit,
    Delete,
    Rename,
}

pub struct FaultyStore {
    inner: Arc<dyn ProjectStore>,
    faults: Arc<Faults<StoreOp>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ProjectStore>, faults: Arc<Faults<StoreOp>>) -> Self {
        FaultyStore { inner, faults }
    }
}

#[async_trait]
impl ProjectStore for FaultyStore {
    async fn list(&self, bucket: &str) -> Result<Vec<(String, ObjectInfo)>> {
        self.faults.enter(StoreOp::List).await?;
        self.inner.list(bucket).await
    }

    async fn stat(&self, bucket: &str, name: &str) -> Result<Option<ObjectInfo>> {
        self.faults.enter(StoreOp::Stat).await?;
        self.inner.stat(bucket, name).await
    }

    async fn open(&self, bucket: &str, name: &str) -> Result<Box<dyn ObjectReader>> {
        self.faults.enter(StoreOp::Open).await?;
        let inner = self.inner.open(bucket, name).await?;
        Ok(Box::new(FaultyReader {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn begin_upload(&self, bucket: &str, name: &str) -> Result<Box<dyn Upload>> {
        self.faults.enter(StoreOp::BeginUpload).await?;
        let inner = self.inner.begin_upload(bucket, name).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<()> {
        self.faults.enter(StoreOp::Delete).await?;
        self.inner.delete(bucket, name).await
    }

    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        self.faults.enter(StoreOp::Rename).await?;
        self.inner.rename(bucket, from, to).await
    }

    async fn sweep(&self) {
        self.inner.sweep().await
    }
}

struct FaultyReader {
    inner: Box<dyn ObjectReader>,
    faults: Arc<Faults<StoreOp>>,
}

#[async_trait]
impl ObjectReader for FaultyReader {
    fn info(&self) -> ObjectInfo {
        self.inner.info()
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.faults.enter(StoreOp::Read).await?;
        self.inner.read_at(offset, len).await
    }
}

struct FaultyUpload {
    inner: Box<dyn Upload>,
    faults: Arc<Faults<StoreOp>>,
}

#[async_trait]
impl Upload for FaultyUpload {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn write_at(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        self.faults.enter(StoreOp::Write).await?;
        self.inner.write_at(offset, data).await
    }

    async fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.faults.enter(StoreOp::ReadUpload).await?;
        self.inner.read_at(offset, len).await
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        self.faults.enter(StoreOp::SetLen).await?;
        self.inner.set_len(len).await
    }

    /// A failed commit aborts what it wraps, as a real store's failed
    /// commit leaves nothing behind.
    async fn commit(self: Box<Self>, name: &str) -> Result<ObjectInfo> {
        if let Err(e) = self.faults.enter(StoreOp::Commit).await {
            self.inner.abort().await;
            return Err(e);
        }
        self.inner.commit(name).await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

/// A source of range GETs that fails or stalls where a test says
/// (`StoreOp::GetRange`), and otherwise is the source it wraps.
#[cfg(test)]
pub struct FaultyRanges<S> {
    pub inner: S,
    pub faults: Arc<Faults<StoreOp>>,
}

#[cfg(test)]
#[async_trait]
impl<S: super::prefetch::RangeSource> super::prefetch::RangeSource for FaultyRanges<S> {
    async fn get_range(&self, range: std::ops::Range<u64>) -> Result<super::prefetch::Body> {
        self.faults.enter(StoreOp::GetRange).await?;
        self.inner.get_range(range).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_failed_commit_stores_nothing_and_the_next_one_goes_through() {
        let memory = Arc::new(MemoryStore::new(["b"]));
        let faults = Faults::new();
        faults.fail(StoreOp::Commit, 1..=1, Error::provider("injected"));
        let store = FaultyStore::new(memory.clone(), faults.clone());
        for expected in [false, true] {
            let mut upload = store.begin_upload("b", "a.zip").await.expect("begin");
            upload.write_at(0, b"bytes".to_vec()).await.expect("write");
            assert_eq!(upload.commit("a.zip").await.is_ok(), expected);
            assert_eq!(memory.get("b", "a.zip").is_some(), expected);
        }
        assert_eq!(faults.calls(StoreOp::Commit), 2);
    }
}
