//! `s3`: AWS S3 and S3-compatibles (MinIO, GCS through HMAC keys, TOS, R2).
//! Objects are `<prefix><name>.zip` in each bucket. A reader streams one
//! ranged GET from its position (read-ahead bounded by TCP's window) and
//! keeps the last 8 MiB, so memory stays bounded whatever the object size;
//! a seek starts a new GET. Few GETs matter: some S3-compatibles pay a
//! whole-object cost per request. Every GET of one handle asks for the
//! ETag its first GET returned (`If-Match`), so a handle never mixes two
//! versions of an object.
//! Uploads are written to a local spool file. While an archive is being
//! written, each full part goes up as part of a multipart upload; commit
//! checks the archive, sends the rest and completes it (a small archive is
//! one PUT). A write back into a part already sent, or a rename to another
//! name, makes commit start over from the spool. Any failure aborts the
//! multipart upload, so nothing is visible at the key until the archive is
//! checked and complete. Each multipart upload is in the journal
//! (`journal`) until it is completed or aborted, so that the next start
//! aborts those a dead daemon left.
//! Checksums are only those S3 requires unless `checksums =
//! "when_supported"`: S3-compatibles reject AWS-only checksum headers.

use super::part_streamer::{PartSink, PartSinks, PartTarget, StreamingCommit};
use super::spool::{SpoolFile, SpooledUpload, TrustedDir};
use super::streaming::{Body, RangeSource, StreamingReader};
use super::{ObjectInfo, ObjectReader, ProjectStore, Upload};
use super::{instance, journal};
use crate::config::S3Config;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::sync::Arc;
use std::time::SystemTime;

pub struct S3Store {
    client: Client,
    prefix: String,
    part_size: u64,
    /// The spool directory; uploads go to this daemon's own in it.
    spool_dir: Arc<TrustedDir>,
    /// The endpoint as the multipart journal names it.
    endpoint: String,
    buckets: Vec<String>,
    /// Whether listings carry ETags (s3s-fs's do not): a reader's version
    /// goes into the page-cache fingerprint only then, so that a stat and
    /// an open of the same object agree.
    listed_etags: std::sync::atomic::AtomicBool,
}

fn text(secret: &Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
}

/// Maps an SDK failure to the errno a reader acts on: missing ENOENT,
/// denied EACCES, anything else (down, timing out after the SDK's retries)
/// EIO. The message names the operation and object, never a key.
fn s3_error<E>(operation: &str, what: &str, error: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or_default()
        .to_string();
    let kind = match (status, code.as_str()) {
        (Some(404), _) | (_, "NoSuchKey" | "NotFound" | "NoSuchBucket") => ErrorKind::NotFound,
        (Some(403), _) | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::Provider,
    };
    Error::new(
        kind,
        format!("S3 {operation} {what}: {}", DisplayErrorContext(&error)),
    )
}

fn modified(at: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    at.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl S3Store {
    pub async fn open(config: &S3Config, buckets: &[String]) -> Result<Self> {
        let region = config.region.clone().unwrap_or_else(|| "us-east-1".into());
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region));
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            let credentials = aws_sdk_s3::config::Credentials::new(
                text(id),
                text(secret),
                None,
                None,
                "credfs config",
            );
            loader = loader.credentials_provider(credentials);
        }
        let shared = loader.load().await;
        let mut sdk =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style);
        if let Some(url) = &config.endpoint_url {
            sdk = sdk.endpoint_url(url);
        }
        if !config.checksums {
            sdk = sdk
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
        }
        let spool_dir = TrustedDir::open(&config.spool_dir, "spool directory")?;
        Ok(S3Store {
            client: Client::from_conf(sdk.build()),
            prefix: config.prefix.clone(),
            part_size: config.part_size,
            spool_dir: Arc::new(spool_dir),
            endpoint: config.endpoint_url.clone().unwrap_or_else(|| "aws".into()),
            buckets: buckets.to_vec(),
            listed_etags: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The page-cache version of an object with `etag`; `listed`: the
    /// ETag comes from a listing (else from a GET).
    fn version(&self, etag: Option<&str>, listed: bool) -> u64 {
        use std::sync::atomic::Ordering;
        if listed && etag.is_some() {
            self.listed_etags.store(true, Ordering::Relaxed);
        }
        match etag {
            Some(etag) if self.listed_etags.load(Ordering::Relaxed) => super::version_of(etag),
            _ => 0,
        }
    }

    /// Aborts the multipart uploads of dead daemons to this store's
    /// buckets, as their journal lists them.
    async fn abort_orphans(&self) {
        let (endpoint, buckets) = (self.endpoint.clone(), self.buckets.clone());
        let orphans = super::blocking(move || {
            journal::orphans(|r| r.endpoint == endpoint && buckets.contains(&r.bucket))
        })
        .await;
        let orphans = match orphans {
            Ok(orphans) => orphans,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the multipart journal");
                return;
            }
        };
        for orphan in orphans {
            let record = &orphan.record;
            let what = format!("s3://{}/{}", record.bucket, record.key);
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&record.bucket)
                .key(&record.key)
                .upload_id(&record.upload_id)
                .send()
                .await;
            match aborted {
                Ok(_) => {
                    tracing::info!(upload = %what, "aborted the multipart upload of a stopped daemon")
                }
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
                Err(e) => {
                    // Kept: the next start tries again.
                    tracing::warn!(error = %s3_error("AbortMultipartUpload", &what, e), "cannot abort the multipart upload of a stopped daemon");
                    continue;
                }
            }
            let _ = super::blocking(move || {
                orphan.forget();
                Ok(())
            })
            .await;
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[async_trait]
impl ProjectStore for S3Store {
    async fn list(&self, bucket: &str) -> Result<Vec<(String, ObjectInfo)>> {
        // No delimiter: some S3-compatibles answer an empty one with nothing.
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", bucket, e))?;
            for object in page.contents() {
                let Some(name) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                if name.contains('/') || !crate::upload::is_archive_name(name) {
                    continue;
                }
                let info = ObjectInfo {
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: modified(object.last_modified()),
                    version: self.version(object.e_tag(), true),
                };
                objects.push((name.to_string(), info));
            }
        }
        Ok(objects)
    }

    /// A one-key listing rather than a HEAD: the same answer, and some
    /// S3-compatibles (s3s-fs) read the whole object to answer a HEAD.
    async fn stat(&self, bucket: &str, name: &str) -> Result<Option<ObjectInfo>> {
        if !crate::upload::is_archive_name(name) {
            return Ok(None);
        }
        let key = self.key(name);
        let listed = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| s3_error("ListObjectsV2", &format!("s3://{bucket}/{key}"), e))?;
        // The key itself sorts first among the keys it prefixes.
        Ok(listed
            .contents()
            .first()
            .filter(|object| object.key() == Some(key.as_str()))
            .map(|object| ObjectInfo {
                size: object.size().unwrap_or(0).max(0) as u64,
                modified: modified(object.last_modified()),
                version: self.version(object.e_tag(), true),
            }))
    }

    /// Starts the first GET at once and learns the size and ETag from it: a
    /// HEAD first would cost a request (a whole-object one on some
    /// servers). Every later GET of the handle must match that ETag.
    async fn open(&self, bucket: &str, name: &str) -> Result<Box<dyn ObjectReader>> {
        if !crate::upload::is_archive_name(name) {
            return Err(Error::not_found(format!(
                "s3://{bucket}/{}",
                self.key(name)
            )));
        }
        let mut source = S3Object {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            key: self.key(name),
            etag: None,
        };
        let first = self
            .client
            .get_object()
            .bucket(bucket)
            .key(&source.key)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", &source.describe(), e))?;
        source.etag = first.e_tag().map(str::to_string);
        let info = ObjectInfo {
            size: first.content_length().unwrap_or(0).max(0) as u64,
            modified: modified(first.last_modified()),
            version: self.version(first.e_tag(), false),
        };
        let body = S3Object::chunks(first.body, source.describe());
        Ok(Box::new(StreamingReader::with_body(source, info, body)))
    }

    async fn begin_upload(&self, bucket: &str, name: &str) -> Result<Box<dyn Upload>> {
        let spool_dir = self.spool_dir.clone();
        let own = super::blocking(move || instance::claim(&spool_dir, "spool directory")).await?;
        let spool = SpoolFile::create(&own).await?;
        let target = S3Bucket {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            bucket: bucket.to_string(),
            prefix: self.prefix.clone(),
            part_size: self.part_size,
        };
        let committer = StreamingCommit::begin(target, &spool, name);
        Ok(Box::new(SpooledUpload::new(spool, committer)))
    }

    async fn sweep(&self) {
        instance::sweep_spool(&self.spool_dir).await;
        self.abort_orphans().await;
    }

    async fn delete(&self, bucket: &str, name: &str) -> Result<()> {
        let key = self.key(name);
        self.client
            .delete_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    /// A server-side copy, then a delete of the old key.
    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        let (source, target) = (self.key(from), self.key(to));
        self.client
            .copy_object()
            .bucket(bucket)
            .key(&target)
            .copy_source(format!("{bucket}/{}", urlencode_key(&source)))
            .send()
            .await
            .map_err(|e| s3_error("CopyObject", &format!("s3://{bucket}/{source}"), e))?;
        self.delete(bucket, from).await?;
        self.stat(bucket, to).await?.ok_or_else(|| {
            Error::provider(format!("s3://{bucket}/{target} vanished after its copy"))
        })
    }
}

/// Percent-encodes a key for x-amz-copy-source, keeping `/`.
fn urlencode_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where a reader's GETs go.
struct S3Object {
    client: Client,
    bucket: String,
    key: String,
    /// The version the handle reads; `None` when the server gave none.
    etag: Option<String>,
}

impl S3Object {
    /// EIO: the handle never mixes the bytes of two versions.
    fn replaced(&self) -> Error {
        Error::provider(format!(
            "{} was replaced since it was opened; open it again",
            self.describe()
        ))
    }

    fn chunks(body: ByteStream, what: String) -> Body {
        let chunks = futures::stream::unfold(Some(body), move |body| {
            let what = what.clone();
            async move {
                let mut body = body?;
                match body.try_next().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(Error::provider(format!("S3 GetObject {what}: {e}"))),
                        None,
                    )),
                }
            }
        });
        Box::pin(chunks)
    }
}

#[async_trait]
impl RangeSource for S3Object {
    async fn stream_from(&self, offset: u64) -> Result<Body> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={offset}-"))
            .set_if_match(self.etag.clone())
            .send()
            .await
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) => self.replaced(),
                _ => s3_error("GetObject", &self.describe(), e),
            })?;
        // Checked here too: not every S3-compatible honours If-Match.
        if self.etag.is_some() && object.e_tag() != self.etag.as_deref() {
            return Err(self.replaced());
        }
        Ok(Self::chunks(object.body, self.describe()))
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// One bucket, as the part streamer sees it.
struct S3Bucket {
    client: Client,
    endpoint: String,
    bucket: String,
    prefix: String,
    part_size: u64,
}

#[async_trait]
impl PartTarget for S3Bucket {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn part_size(&self) -> u64 {
        self.part_size
    }

    fn sinks(&self, key: &str) -> Arc<dyn PartSinks> {
        Arc::new(S3Parts {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
        })
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &format!("s3://{}/{key}", self.bucket), e))?;
        Ok(())
    }
}

/// Multipart uploads to one key.
struct S3Parts {
    client: Client,
    endpoint: String,
    bucket: String,
    key: String,
}

#[async_trait]
impl PartSinks for S3Parts {
    async fn start(&self) -> Result<Box<dyn PartSink>> {
        let what = format!("s3://{}/{}", self.bucket, self.key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", &what, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                Error::provider(format!("S3 CreateMultipartUpload {what}: no upload id"))
            })?
            .to_string();
        let record = journal::Record {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            upload_id: upload_id.clone(),
        };
        // Without a journal the upload still goes ahead: only a crash in
        // the middle of it would then leave its parts.
        let entry = super::blocking(move || journal::record(&record))
            .await
            .map_err(|e| tracing::warn!(error = %e, "cannot journal a multipart upload"))
            .ok();
        Ok(Box::new(S3PartSink {
            entry,
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            what,
            upload_id,
            sent: Vec::new(),
            in_flight: tokio::task::JoinSet::new(),
            next_number: 1,
        }))
    }
}

/// Parts in flight at once: one request leaves the link idle while the
/// next part is prepared and while each response comes back.
const PARTS_IN_FLIGHT: usize = 2;

struct S3PartSink {
    /// Removed once the upload is completed or aborted.
    entry: Option<journal::Entry>,
    client: Client,
    bucket: String,
    key: String,
    what: String,
    upload_id: String,
    sent: Vec<CompletedPart>,
    in_flight: tokio::task::JoinSet<Result<CompletedPart>>,
    next_number: i32,
}

impl S3PartSink {
    async fn send_body(&mut self, body: ByteStream) -> Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.collect_one().await?;
        }
        let number = self.next_number;
        self.next_number += 1;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(body);
        let what = self.what.clone();
        self.in_flight.spawn(async move {
            let sent = request
                .send()
                .await
                .map_err(|e| s3_error("UploadPart", &what, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    /// The upload is over: its journal entry goes.
    async fn forget(&mut self) {
        if let Some(entry) = self.entry.take() {
            let _ = super::blocking(move || {
                entry.remove();
                Ok(())
            })
            .await;
        }
    }

    async fn collect_one(&mut self) -> Result<()> {
        if let Some(done) = self.in_flight.join_next().await {
            let part = done.map_err(|e| Error::provider(format!("UploadPart task: {e}")))??;
            self.sent.push(part);
        }
        Ok(())
    }
}

#[async_trait]
impl PartSink for S3PartSink {
    async fn send(&mut self, part: bytes::Bytes) -> Result<()> {
        self.send_body(ByteStream::from(part)).await
    }

    async fn complete(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        let mut sent = std::mem::take(&mut self.sent);
        sent.sort_by_key(|part| part.part_number());
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(sent))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", &self.what, e))?;
        self.forget().await;
        Ok(())
    }

    /// No orphaned parts: a failed upload leaves nothing behind. When the
    /// server cannot be reached (it may be why the upload failed), the abort
    /// is retried in the background until it is.
    async fn abort(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id);
        if request.clone().send().await.is_ok() {
            self.forget().await;
            return;
        }
        let what = self.what.clone();
        let entry = self.entry.take();
        tokio::spawn(async move {
            let mut delay = ABORT_RETRY_FIRST;
            let deadline = tokio::time::Instant::now() + ABORT_RETRY_FOR;
            let mut aborted = false;
            while !aborted && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(delay).await;
                match request.clone().send().await {
                    Ok(_) => aborted = true,
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                        aborted = true;
                    }
                    Err(_) => delay = (delay * 2).min(ABORT_RETRY_MAX),
                }
            }
            if !aborted {
                // The journal entry stays: the next start tries again.
                tracing::warn!(upload = %what, "could not abort a failed multipart upload; the next start retries");
            } else if let Some(entry) = entry {
                let _ = super::blocking(move || {
                    entry.remove();
                    Ok(())
                })
                .await;
            }
        });
    }
}

/// Retries of an abort the server did not take.
const ABORT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const ABORT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);
const ABORT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(urlencode_key("p/a b+c.zip"), "p/a%20b%2Bc.zip");
    }
}
