//! `azure`: Azure Blob Storage through the `object_store` crate (the Arrow
//! project's, maintained and used widely; the official Azure SDK crates for
//! Rust are still being rewritten). Each bucket is a container; objects are
//! `<prefix><name>.zip`. Reads prefetch ranges like S3's: the first range's
//! GET at open gives the size and the ETag, and every later range carries
//! `If-Match` with it (one handle, one version). Uploads go through a spool
//! file like S3's: blocks are staged while an archive is written,
//! `write_concurrency` at once (each read into memory, as object_store
//! takes it, so the bytes in flight are bounded too), and the block list
//! committed after its check (one PUT when small), aborted on failure.

use super::instance;
use super::part_plan::PartPlan;
use super::part_streamer::{PartTarget, Spooled, StreamingCommit};
use super::parts::{PartFuture, PartSink, PartSinks, SentPart};
use super::prefetch::{Body, Prefetcher, RangeSource, ReadTuning};
use super::spool::{SpoolFile, SpooledUpload, TrustedDir};
use super::{ObjectInfo, ObjectReader, ProjectStore, Upload};
use crate::config::AzureConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

/// Size of each block of a multipart upload, and the PUT/multipart cut-over.
const PART_SIZE: u64 = 8 << 20;

pub struct AzureStore {
    containers: HashMap<String, Arc<dyn ObjectStore>>,
    prefix: String,
    spool_dir: Arc<TrustedDir>,
    /// How each open handle reads.
    tuning: ReadTuning,
    /// Blocks each upload may have in flight.
    write_concurrency: usize,
}

fn azure_error(operation: &str, what: &str, error: object_store::Error) -> Error {
    // object_store reports most HTTP failures as `Generic`; the status it
    // got is only in the message.
    let message = error.to_string();
    let kind = match &error {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        _ if message.contains("403 Forbidden") || message.contains("401 Unauthorized") => {
            ErrorKind::PermissionDenied
        }
        _ if message.contains("404 Not Found") => ErrorKind::NotFound,
        _ => ErrorKind::Provider,
    };
    Error::new(kind, format!("Azure {operation} {what}: {message}"))
}

/// `AccountName=…;AccountKey=…;BlobEndpoint=…` → (account, key, endpoint).
fn parse_connection_string(text: &str) -> Result<(String, String, Option<String>)> {
    let mut fields = HashMap::new();
    for part in text.split(';').filter(|p| !p.trim().is_empty()) {
        if let Some((key, value)) = part.split_once('=') {
            fields.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    let invalid = || Error::invalid("the Azure connection string needs AccountName and AccountKey");
    let account = fields.remove("AccountName").ok_or_else(invalid)?;
    let key = fields.remove("AccountKey").ok_or_else(invalid)?;
    Ok((account, key, fields.remove("BlobEndpoint")))
}

fn text(secret: &Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
}

impl AzureStore {
    pub fn open(config: &AzureConfig, containers: &[String]) -> Result<Self> {
        let (account, key, endpoint) = match &config.connection_string {
            Some(connection) => parse_connection_string(&text(connection))?,
            None => (
                config.account.clone().unwrap_or_default(),
                config.access_key.as_ref().map(text).unwrap_or_default(),
                None,
            ),
        };
        let endpoint = config.endpoint_url.clone().or(endpoint);
        let mut stores = HashMap::new();
        for container in containers {
            let mut builder = MicrosoftAzureBuilder::new()
                .with_account(&account)
                .with_access_key(&key)
                .with_container_name(container);
            if let Some(url) = &endpoint {
                builder = builder
                    .with_endpoint(url.clone())
                    .with_allow_http(url.starts_with("http://"));
            }
            let store = builder
                .build()
                .map_err(|e| azure_error("setup", container, e))?;
            stores.insert(container.clone(), Arc::new(store) as Arc<dyn ObjectStore>);
        }
        let spool_dir = TrustedDir::open(&config.spool_dir, "spool directory")?;
        Ok(AzureStore {
            containers: stores,
            prefix: config.prefix.clone(),
            spool_dir: Arc::new(spool_dir),
            tuning: ReadTuning::new(
                config.transfer.read_part_size,
                config.transfer.read_concurrency,
            ),
            write_concurrency: config.transfer.write_concurrency,
        })
    }

    fn container(&self, name: &str) -> Result<&Arc<dyn ObjectStore>> {
        self.containers
            .get(name)
            .ok_or_else(|| Error::not_found(format!("container {name}")))
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.prefix))
    }
}

fn info_of(meta: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        size: meta.size,
        modified: SystemTime::from(meta.last_modified),
        version: meta.e_tag.as_deref().map_or(0, super::version_of),
    }
}

#[async_trait]
impl ProjectStore for AzureStore {
    async fn list(&self, container: &str) -> Result<Vec<(String, ObjectInfo)>> {
        let store = self.container(container)?;
        let prefix =
            (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.trim_end_matches('/')));
        let metas: Vec<object_store::ObjectMeta> = store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| azure_error("List", container, e))?;
        Ok(metas
            .iter()
            .filter_map(|meta| {
                let name = meta.location.as_ref().strip_prefix(&self.prefix)?;
                (!name.contains('/') && crate::upload::is_archive_name(name))
                    .then(|| (name.to_string(), info_of(meta)))
            })
            .collect())
    }

    async fn stat(&self, container: &str, name: &str) -> Result<Option<ObjectInfo>> {
        if !crate::upload::is_archive_name(name) {
            return Ok(None);
        }
        match self.container(container)?.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(info_of(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(azure_error("HEAD", &format!("{container}/{name}"), e)),
        }
    }

    /// The first range's GET gives the size and the ETag, which every
    /// later GET of the handle must match.
    async fn open(&self, container: &str, name: &str) -> Result<Box<dyn ObjectReader>> {
        let what = format!("{container}/{name}");
        if !crate::upload::is_archive_name(name) {
            return Err(Error::not_found(what));
        }
        let mut source = Blob {
            store: self.container(container)?.clone(),
            path: self.path(name),
            etag: None,
            what,
        };
        let first = GetOptions {
            range: Some(GetRange::Bounded(0..self.tuning.first)),
            ..GetOptions::default()
        };
        match source.store.get_opts(&source.path, first).await {
            Ok(result) => {
                let info = info_of(&result.meta);
                source.etag = result.meta.e_tag.clone();
                let first_end = result.range.end;
                let body = source.body(result);
                Ok(Box::new(Prefetcher::with_first(
                    source,
                    info,
                    self.tuning,
                    first_end,
                    body,
                )))
            }
            Err(object_store::Error::NotFound { .. }) => Err(Error::not_found(source.what)),
            Err(e) => {
                // An empty blob has no range to give: its HEAD says so.
                let meta = source.store.head(&source.path).await;
                match meta {
                    Ok(meta) if meta.size == 0 => {
                        source.etag = meta.e_tag.clone();
                        Ok(Box::new(Prefetcher::new(
                            source,
                            info_of(&meta),
                            self.tuning,
                        )))
                    }
                    _ => Err(azure_error("GET", &source.what, e)),
                }
            }
        }
    }

    async fn begin_upload(&self, container: &str, name: &str) -> Result<Box<dyn Upload>> {
        let spool_dir = self.spool_dir.clone();
        let own = super::blocking(move || instance::claim(&spool_dir, "spool directory")).await?;
        let spool = SpoolFile::create(&own).await?;
        let target = Container {
            store: self.container(container)?.clone(),
            name: container.to_string(),
            prefix: self.prefix.clone(),
            concurrency: self.write_concurrency,
        };
        let committer = StreamingCommit::begin(target, &spool, name);
        Ok(Box::new(SpooledUpload::new(spool, committer)))
    }

    /// Blocks a dead daemon left uncommitted cost little and Azure drops
    /// them after a week: only spool files are swept.
    async fn sweep(&self) {
        instance::sweep_spool(&self.spool_dir).await;
    }

    async fn delete(&self, container: &str, name: &str) -> Result<()> {
        self.container(container)?
            .delete(&self.path(name))
            .await
            .map_err(|e| azure_error("DELETE", &format!("{container}/{name}"), e))
    }

    async fn rename(&self, container: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        let store = self.container(container)?;
        store
            .copy(&self.path(from), &self.path(to))
            .await
            .map_err(|e| azure_error("COPY", &format!("{container}/{from}"), e))?;
        self.delete(container, from).await?;
        self.stat(container, to)
            .await?
            .ok_or_else(|| Error::provider(format!("{container}/{to} vanished after its copy")))
    }
}

struct Blob {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    /// The version the handle reads.
    etag: Option<String>,
    what: String,
}

impl Blob {
    /// EIO: the handle never mixes the bytes of two versions.
    fn replaced(&self) -> Error {
        Error::provider(format!(
            "{} was replaced since it was opened; open it again",
            self.what
        ))
    }
}

impl Blob {
    fn body(&self, result: object_store::GetResult) -> Body {
        let what = self.what.clone();
        result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| azure_error("GET", &what, e)))
            .boxed()
    }
}

#[async_trait]
impl RangeSource for Blob {
    async fn get_range(&self, range: Range<u64>) -> Result<Body> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: self.etag.clone(),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&self.path, options)
            .await
            .map_err(|e| match e {
                object_store::Error::Precondition { .. } => self.replaced(),
                e => azure_error("GET", &self.what, e),
            })?;
        if self.etag.is_some() && result.meta.e_tag != self.etag {
            return Err(self.replaced());
        }
        Ok(self.body(result))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// One container, as the part streamer sees it.
struct Container {
    store: Arc<dyn ObjectStore>,
    name: String,
    prefix: String,
    concurrency: usize,
}

#[async_trait]
impl PartTarget for Container {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn plan(&self) -> PartPlan {
        PartPlan::azure(PART_SIZE)
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn sinks(&self, key: &str) -> Arc<dyn PartSinks> {
        Arc::new(BlobBlocks {
            store: self.store.clone(),
            path: ObjectPath::from(key),
            what: format!("{}/{key}", self.name),
        })
    }

    async fn put(&self, key: &str, spool: &Spooled, size: u64) -> Result<()> {
        let bytes = read_block(spool, 0..size).await?;
        self.store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| azure_error("PUT", &format!("{}/{key}", self.name), e))
    }
}

/// `spool[range]` in memory, as object_store sends it.
async fn read_block(spool: &Spooled, range: Range<u64>) -> Result<Vec<u8>> {
    let file = spool.file.clone();
    let length = range.end - range.start;
    let bytes =
        super::blocking(move || super::spool::read_full_at(&file, range.start, length)).await?;
    if bytes.len() as u64 != length {
        return Err(Error::provider("the upload spool ended early"));
    }
    Ok(bytes)
}

/// Block-list uploads to one blob.
struct BlobBlocks {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    what: String,
}

#[async_trait]
impl PartSinks for BlobBlocks {
    async fn start(&self) -> Result<Box<dyn PartSink>> {
        let upload = self
            .store
            .put_multipart(&self.path)
            .await
            .map_err(|e| azure_error("PUT", &self.what, e))?;
        Ok(Box::new(BlockSink {
            upload,
            what: self.what.clone(),
        }))
    }
}

struct BlockSink {
    upload: Box<dyn object_store::MultipartUpload>,
    what: String,
}

#[async_trait]
impl PartSink for BlockSink {
    /// Blocks are staged in the order they are prepared (the block list
    /// keeps that order) and sent in parallel; each is read into memory
    /// first, as object_store takes it.
    async fn part(
        &mut self,
        spool: &Spooled,
        number: u32,
        range: Range<u64>,
    ) -> Result<PartFuture> {
        let bytes = read_block(spool, range).await?;
        let staged = self.upload.put_part(PutPayload::from(bytes));
        let what = self.what.clone();
        Ok(Box::pin(async move {
            staged
                .await
                .map_err(|e| azure_error("PUT block", &what, e))?;
            Ok(SentPart { number, etag: None })
        }))
    }

    fn buffers_parts(&self) -> bool {
        true
    }

    async fn complete(&mut self, _: Vec<SentPart>) -> Result<()> {
        self.upload
            .complete()
            .await
            .map(|_| ())
            .map_err(|e| azure_error("PUT block list", &self.what, e))
    }

    async fn abort(&mut self) {
        let _ = self.upload.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse() {
        let (account, key, endpoint) = parse_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/dev;",
        )
        .unwrap();
        assert_eq!((account.as_str(), key.as_str()), ("dev", "a2V5"));
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:10000/dev"));
        let err = parse_connection_string("AccountName=dev").unwrap_err();
        assert!(
            !err.message().contains("dev"),
            "names the missing part only"
        );
    }
}
