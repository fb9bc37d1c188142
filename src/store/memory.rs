//! A store in memory, for tests of everything above `ProjectStore`: the
//! same naming rules as the real stores, uploads buffered until an atomic
//! commit, and readers that keep the version they opened (as a file's
//! descriptor does) while a commit replaces it.

use super::{ObjectInfo, ObjectReader, ProjectStore, Upload};
use crate::error::{Error, ErrorKind, Result};
use crate::names::is_archive_name;
use crate::sync::lock;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

#[derive(Clone)]
struct Object {
    bytes: Arc<Vec<u8>>,
    info: ObjectInfo,
}

type Key = (String, String);

#[derive(Default)]
struct Shelves {
    objects: Mutex<BTreeMap<Key, Object>>,
    /// Versions are never reused: two commits of the same bytes differ.
    versions: AtomicU64,
}

impl Shelves {
    fn objects(&self) -> MutexGuard<'_, BTreeMap<Key, Object>> {
        lock(&self.objects)
    }
}

pub struct MemoryStore {
    buckets: BTreeSet<String>,
    shelves: Arc<Shelves>,
}

impl MemoryStore {
    pub fn new<I, S>(buckets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MemoryStore {
            buckets: buckets.into_iter().map(Into::into).collect(),
            shelves: Arc::default(),
        }
    }

    /// Puts `bytes` under `name` at once, as another host writing the store
    /// would.
    pub fn insert(&self, bucket: &str, name: &str, bytes: Vec<u8>) -> Result<ObjectInfo> {
        self.check_bucket(bucket)?;
        commit_into(&self.shelves, bucket, name, bytes)
    }

    /// The bytes of `name`, if committed.
    pub fn get(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        let objects = self.shelves.objects();
        let object = objects.get(&(bucket.to_string(), name.to_string()))?;
        Some(object.bytes.as_ref().clone())
    }

    /// Every committed object, as (bucket, name).
    pub fn names(&self) -> Vec<(String, String)> {
        self.shelves.objects().keys().cloned().collect()
    }

    fn check_bucket(&self, bucket: &str) -> Result<()> {
        match self.buckets.contains(bucket) {
            true => Ok(()),
            false => Err(Error::not_found(format!("bucket {bucket}"))),
        }
    }
}

fn key(bucket: &str, name: &str) -> Key {
    (bucket.to_string(), name.to_string())
}

/// A store keeps only `<name>.zip`: anything else is staging, which lives
/// above the store until a rename gives it an archive name.
fn check_archive_name(bucket: &str, name: &str) -> Result<()> {
    match is_archive_name(name) {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{bucket}/{name}: not an archive name"
        ))),
    }
}

fn commit_into(shelves: &Shelves, bucket: &str, name: &str, bytes: Vec<u8>) -> Result<ObjectInfo> {
    check_archive_name(bucket, name)?;
    let info = ObjectInfo {
        size: bytes.len() as u64,
        modified: SystemTime::now(),
        version: shelves.versions.fetch_add(1, Ordering::Relaxed) + 1,
    };
    let object = Object {
        bytes: Arc::new(bytes),
        info,
    };
    shelves.objects().insert(key(bucket, name), object);
    Ok(info)
}

#[async_trait]
impl ProjectStore for MemoryStore {
    async fn list(&self, bucket: &str) -> Result<Vec<(String, ObjectInfo)>> {
        self.check_bucket(bucket)?;
        Ok(self
            .shelves
            .objects()
            .iter()
            .filter(|((b, _), _)| b == bucket)
            .map(|((_, name), object)| (name.clone(), object.info))
            .collect())
    }

    async fn stat(&self, bucket: &str, name: &str) -> Result<Option<ObjectInfo>> {
        self.check_bucket(bucket)?;
        if !is_archive_name(name) {
            return Ok(None);
        }
        Ok(self
            .shelves
            .objects()
            .get(&key(bucket, name))
            .map(|o| o.info))
    }

    async fn open(&self, bucket: &str, name: &str) -> Result<Box<dyn ObjectReader>> {
        self.check_bucket(bucket)?;
        let object = self.shelves.objects().get(&key(bucket, name)).cloned();
        match object {
            Some(object) => Ok(Box::new(object)),
            None => Err(Error::not_found(format!("{bucket}/{name}"))),
        }
    }

    async fn begin_upload(&self, bucket: &str, _name: &str) -> Result<Box<dyn Upload>> {
        self.check_bucket(bucket)?;
        Ok(Box::new(MemoryUpload {
            shelves: self.shelves.clone(),
            bucket: bucket.to_string(),
            bytes: Vec::new(),
        }))
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<()> {
        self.check_bucket(bucket)?;
        match self.shelves.objects().remove(&key(bucket, name)) {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("{bucket}/{name}"))),
        }
    }

    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        self.check_bucket(bucket)?;
        check_archive_name(bucket, to)?;
        let mut objects = self.shelves.objects();
        let object = objects
            .remove(&key(bucket, from))
            .ok_or_else(|| Error::not_found(format!("{bucket}/{from}")))?;
        let info = object.info;
        objects.insert(key(bucket, to), object);
        Ok(info)
    }
}

#[async_trait]
impl ObjectReader for Object {
    fn info(&self) -> ObjectInfo {
        self.info
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        Ok(slice(&self.bytes, offset, len).to_vec())
    }
}

fn slice(bytes: &[u8], offset: u64, len: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start.saturating_add(len as usize).min(bytes.len());
    &bytes[start..end]
}

struct MemoryUpload {
    shelves: Arc<Shelves>,
    bucket: String,
    bytes: Vec<u8>,
}

/// A length the buffer cannot hold (a huge offset): refused as a real
/// file system would refuse it.
fn usize_len(len: u64) -> Result<usize> {
    usize::try_from(len).map_err(|_| {
        Error::new(
            ErrorKind::TooBig,
            format!("{len} bytes do not fit in memory"),
        )
    })
}

#[async_trait]
impl Upload for MemoryUpload {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    async fn write_at(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        let start = usize_len(offset)?;
        let end = usize_len(offset.saturating_add(data.len() as u64))?;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[start..end].copy_from_slice(&data);
        Ok(())
    }

    async fn read_at(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        Ok(slice(&self.bytes, offset, len).to_vec())
    }

    async fn set_len(&mut self, len: u64) -> Result<()> {
        self.bytes.resize(usize_len(len)?, 0);
        Ok(())
    }

    async fn commit(self: Box<Self>, name: &str) -> Result<ObjectInfo> {
        let MemoryUpload {
            shelves,
            bucket,
            bytes,
        } = *self;
        commit_into(&shelves, &bucket, name, bytes)
    }

    async fn abort(self: Box<Self>) {}
}

/// An object of a `MemoryStore` as a source of range GETs pinned to the
/// version seen when it was made, as `If-Match` pins S3's: once a commit
/// replaces the object, every range fails. It records the ranges asked for
/// and the most GETs in flight at once; `latency` delays each GET's answer.
#[cfg(test)]
pub struct MemoryRanges {
    shelves: Arc<Shelves>,
    key: Key,
    version: u64,
    pub latency: std::time::Duration,
    pub log: Arc<RangeLog>,
}

#[cfg(test)]
#[derive(Default)]
pub struct RangeLog {
    pub requests: Mutex<Vec<std::ops::Range<u64>>>,
    active: AtomicU64,
    pub most_active: AtomicU64,
}

#[cfg(test)]
impl RangeLog {
    pub fn requests(&self) -> Vec<std::ops::Range<u64>> {
        lock(&self.requests).clone()
    }
}

/// Counts a GET as in flight until its body is dropped.
#[cfg(test)]
struct InFlight(Arc<RangeLog>);

#[cfg(test)]
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
impl MemoryStore {
    pub fn ranges(&self, bucket: &str, name: &str) -> Result<(MemoryRanges, ObjectInfo)> {
        let info = self
            .shelves
            .objects()
            .get(&key(bucket, name))
            .map(|o| o.info)
            .ok_or_else(|| Error::not_found(format!("{bucket}/{name}")))?;
        let ranges = MemoryRanges {
            shelves: self.shelves.clone(),
            key: key(bucket, name),
            version: info.version,
            latency: std::time::Duration::ZERO,
            log: Arc::default(),
        };
        Ok((ranges, info))
    }
}

#[cfg(test)]
#[async_trait]
impl super::prefetch::RangeSource for MemoryRanges {
    async fn get_range(&self, range: std::ops::Range<u64>) -> Result<super::prefetch::Body> {
        let log = self.log.clone();
        lock(&log.requests).push(range.clone());
        let now = log.active.fetch_add(1, Ordering::SeqCst) + 1;
        log.most_active.fetch_max(now, Ordering::SeqCst);
        let in_flight = InFlight(log);
        tokio::time::sleep(self.latency).await;
        let object = self.shelves.objects().get(&self.key).cloned();
        let bytes = match object {
            Some(object) if object.info.version == self.version => object.bytes,
            _ => return Err(Error::provider(format!("{} was replaced", self.describe()))),
        };
        let end = (range.end as usize).min(bytes.len());
        let start = (range.start as usize).min(end);
        let chunks: Vec<bytes::Bytes> = bytes[start..end]
            .chunks(64 << 10)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let body = futures::stream::unfold(
            (chunks.into_iter(), in_flight),
            |(mut chunks, in_flight)| async move { chunks.next().map(|c| (Ok(c), (chunks, in_flight))) },
        );
        Ok(Box::pin(body))
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.key.0, self.key.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_keeps_the_version_it_opened() {
        let store = MemoryStore::new(["b"]);
        store
            .insert("b", "a.zip", b"first".to_vec())
            .expect("insert");
        let reader = store.open("b", "a.zip").await.expect("open");
        let mut upload = store.begin_upload("b", "a.zip").await.expect("begin");
        upload.write_at(2, b"cond".to_vec()).await.expect("write");
        assert_eq!(upload.read_at(0, 10).await.expect("read"), b"\0\0cond");
        let second = upload.commit("a.zip").await.expect("commit");
        assert_ne!(second.version, reader.info().version);
        assert_eq!(reader.read_at(1, 3).await.expect("read"), b"irs");
        assert_eq!(store.get("b", "a.zip").as_deref(), Some(&b"\0\0cond"[..]));
    }

    #[tokio::test]
    async fn only_archive_names_are_stored() {
        let store = MemoryStore::new(["b"]);
        let upload = store.begin_upload("b", "zi123").await.expect("begin");
        let refused = upload.commit("zi123").await.expect_err("refused");
        assert_eq!(refused.kind(), ErrorKind::InvalidInput);
        assert!(store.insert("b", "Bad Name.zip", Vec::new()).is_err());
        assert_eq!(store.stat("b", "zi123").await.expect("stat"), None);
        assert!(store.list("nope").await.is_err(), "unknown bucket");
        assert!(store.names().is_empty());
    }
}
