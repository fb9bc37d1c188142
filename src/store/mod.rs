//! Project archives in object storage: stores behind `ProjectStore`, one file
//! each. A store knows buckets and `<name>.zip` objects; checking archives
//! and the staging rules live in `crate::upload`.

mod azure;
pub mod faulty;
mod filesystem;
mod instance;
mod journal;
mod memory;
mod part_plan;
mod part_streamer;
mod parts;
mod prefetch;
mod s3;
mod spool;

pub use filesystem::FilesystemStore;
pub use instance::release;
pub use memory::MemoryStore;

use crate::config::{StoreConfig, StoreProviderConfig};
use crate::error::{Error, Result};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub modified: SystemTime,
    /// Tells two objects of the same size and time apart (S3's times have
    /// 1 s steps): a hash of the ETag, the file's inode number; 0 when the
    /// store cannot tell.
    pub version: u64,
}

/// An object's `version` from its ETag.
pub(crate) fn version_of(etag: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    etag.hash(&mut hasher);
    hasher.finish()
}

#[async_trait]
pub trait ProjectStore: Send + Sync {
    /// Every `.zip` object of the bucket, by name.
    async fn list(&self, bucket: &str) -> Result<Vec<(String, ObjectInfo)>>;
    async fn stat(&self, bucket: &str, name: &str) -> Result<Option<ObjectInfo>>;
    async fn open(&self, bucket: &str, name: &str) -> Result<Box<dyn ObjectReader>>;
    /// Starts an upload. `name` is the file being written: an archive name
    /// keeps it at commit (so a store may start sending it early), a
    /// staging name gets its archive name from a rename.
    async fn begin_upload(&self, bucket: &str, name: &str) -> Result<Box<dyn Upload>>;
    async fn delete(&self, bucket: &str, name: &str) -> Result<()>;
    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo>;
    /// Removes what daemons that are gone left behind (spool files, and
    /// where the provider bills for them, unfinished multipart uploads);
    /// never anything of a live daemon. Run by the daemon for each store it
    /// opens, never by `check --probe`.
    async fn sweep(&self) {}
}

#[async_trait]
pub trait ObjectReader: Send + Sync {
    fn info(&self) -> ObjectInfo;
    async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>>;
}

/// Bytes on their way into a store. Nothing is visible under any name until
/// `commit`; a dropped or aborted upload leaves nothing behind.
#[async_trait]
pub trait Upload: Send + Sync {
    fn size(&self) -> u64;
    async fn write_at(&mut self, offset: u64, data: Vec<u8>) -> Result<()>;
    async fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>>;
    async fn set_len(&mut self, len: u64) -> Result<()>;
    async fn commit(self: Box<Self>, name: &str) -> Result<ObjectInfo>;
    async fn abort(self: Box<Self>);
}

pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn ProjectStore>> {
    let buckets = &config.buckets;
    Ok(match &config.provider {
        StoreProviderConfig::Filesystem(fs) => Arc::new(FilesystemStore::open(fs, buckets).await?),
        StoreProviderConfig::S3(s3) => Arc::new(s3::S3Store::open(s3, buckets).await?),
        StoreProviderConfig::Azure(azure) => Arc::new(azure::AzureStore::open(azure, buckets)?),
    })
}

/// Runs blocking file-system work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::provider(format!("storage task failed: {e}")))?
}

/// Stands in for a store that could not be opened (or whose client is not
/// in this build), so the rest of the tree keeps serving and its buckets
/// answer with the reason.
pub struct FailedStore(pub Error);

#[async_trait]
impl ProjectStore for FailedStore {
    async fn list(&self, _: &str) -> Result<Vec<(String, ObjectInfo)>> {
        Err(self.0.clone())
    }
    async fn stat(&self, _: &str, _: &str) -> Result<Option<ObjectInfo>> {
        Err(self.0.clone())
    }
    async fn open(&self, _: &str, _: &str) -> Result<Box<dyn ObjectReader>> {
        Err(self.0.clone())
    }
    async fn begin_upload(&self, _: &str, _: &str) -> Result<Box<dyn Upload>> {
        Err(self.0.clone())
    }
    async fn delete(&self, _: &str, _: &str) -> Result<()> {
        Err(self.0.clone())
    }
    async fn rename(&self, _: &str, _: &str, _: &str) -> Result<ObjectInfo> {
        Err(self.0.clone())
    }
}
