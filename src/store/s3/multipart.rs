//! Writing an object: one PUT, or a multipart upload whose parts stream
//! from the spool while the archive is written, several at once; and the
//! server-side copy of an object too large for CopyObject, in
//! UploadPartCopy ranges. Every multipart upload is journaled until it
//! completes or is aborted.

use super::body::spool_body;
use super::client::s3_error;

use crate::error::{Error, Result};
use crate::store::journal;
use crate::store::part_plan::PartPlan;
use crate::store::part_streamer::{PartTarget, Spooled};
use crate::store::parts::{ParallelParts, PartFuture, PartSink, PartSinks, SentPart};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::ops::Range;
use std::sync::Arc;

/// One bucket, as the part streamer sees it.
pub(super) struct S3Bucket {
    pub(super) client: Client,
    pub(super) endpoint: String,
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) plan: PartPlan,
    pub(super) concurrency: usize,
}

impl S3Bucket {
    fn parts(&self, key: &str) -> S3Parts {
        S3Parts {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
        }
    }

    /// Copies `source` (`size` bytes, of version `etag`) to
    /// `target` in UploadPartCopy ranges, several at once: CopyObject takes
    /// at most 5 GiB.
    pub(super) async fn copy_in_parts(
        &self,
        source: &str,
        target: &str,
        size: u64,
        etag: String,
    ) -> Result<()> {
        let sink = self.parts(target).begin().await?;
        let copier = Copier {
            client: sink.client.clone(),
            bucket: sink.bucket.clone(),
            key: sink.key.clone(),
            upload_id: sink.upload_id.clone(),
            source: format!("{}/{}", self.bucket, super::client::urlencode_key(source)),
            etag,
        };
        let mut parts = ParallelParts::new(Box::new(sink), self.concurrency, 0);
        for range in PartPlan::s3_copy().parts(size) {
            let copier = copier.clone();
            if let Err(e) = parts.push(move |number| copier.part(number, range)).await {
                parts.abort().await;
                return Err(e);
            }
        }
        parts.complete().await
    }
}

#[async_trait]
impl PartTarget for S3Bucket {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn plan(&self) -> PartPlan {
        self.plan
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn sinks(&self, key: &str) -> Arc<dyn PartSinks> {
        Arc::new(self.parts(key))
    }

    /// Streamed from the spool, as a part is.
    async fn put(&self, key: &str, spool: &Spooled, size: u64) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(size as i64)
            .body(spool_body(spool, 0..size))
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

impl S3Parts {
    /// Creates the upload and journals it.
    async fn begin(&self) -> Result<S3PartSink> {
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
        let entry = crate::store::blocking(move || journal::record(&record))
            .await
            .map_err(|e| tracing::warn!(error = %e, "cannot journal a multipart upload"))
            .ok();
        Ok(S3PartSink {
            entry,
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            what,
            upload_id,
        })
    }
}

#[async_trait]
impl PartSinks for S3Parts {
    async fn start(&self) -> Result<Box<dyn PartSink>> {
        Ok(Box::new(self.begin().await?))
    }
}

struct S3PartSink {
    /// Removed once the upload is completed or aborted.
    entry: Option<journal::Entry>,
    client: Client,
    bucket: String,
    key: String,
    what: String,
    upload_id: String,
}

impl S3PartSink {
    /// The upload is over: its journal entry goes.
    async fn forget(&mut self) {
        forget(self.entry.take()).await;
    }
}

async fn forget(entry: Option<journal::Entry>) {
    if let Some(entry) = entry {
        let _ = crate::store::blocking(move || {
            entry.remove();
            Ok(())
        })
        .await;
    }
}

/// UploadPartCopy requests of one multipart upload.
#[derive(Clone)]
struct Copier {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    /// `bucket/key`, percent-encoded.
    source: String,
    /// The source's version: each range must come from it.
    etag: String,
}

impl Copier {
    fn part(&self, number: u32, range: Range<u64>) -> PartFuture {
        let request = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number as i32)
            .copy_source(&self.source)
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .copy_source_if_match(&self.etag);
        let what = format!("s3://{}/{}", self.bucket, self.key);
        Box::pin(async move {
            let copied = request
                .send()
                .await
                .map_err(|e| s3_error("UploadPartCopy", &what, e))?;
            Ok(SentPart {
                number,
                etag: copied
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string),
            })
        })
    }
}

#[async_trait]
impl PartSink for S3PartSink {
    /// The part streams from the spool as it is sent: no part sits in
    /// memory, and its payload is not hashed for the signature.
    async fn part(
        &mut self,
        spool: &Spooled,
        number: u32,
        range: Range<u64>,
    ) -> Result<PartFuture> {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number as i32)
            .content_length((range.end - range.start) as i64)
            .body(spool_body(spool, range));
        let what = self.what.clone();
        Ok(Box::pin(async move {
            let sent = request
                .send()
                .await
                .map_err(|e| s3_error("UploadPart", &what, e))?;
            Ok(SentPart {
                number,
                etag: sent.e_tag().map(str::to_string),
            })
        }))
    }

    async fn complete(&mut self, parts: Vec<SentPart>) -> Result<()> {
        let parts = parts
            .into_iter()
            .map(|part| {
                CompletedPart::builder()
                    .part_number(part.number as i32)
                    .set_e_tag(part.etag)
                    .build()
            })
            .collect();
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
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
            if aborted {
                forget(entry).await;
            } else {
                // The journal entry stays: the next start tries again.
                tracing::warn!(upload = %what, "could not abort a failed multipart upload; the next start retries");
            }
        });
    }
}

/// Retries of an abort the server did not take.
const ABORT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const ABORT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);
const ABORT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(600);
