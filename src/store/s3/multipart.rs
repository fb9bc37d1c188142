//! Writing an object: one PUT, or a multipart upload whose parts stream
//! while the archive is written; every multipart upload is journaled until
//! it completes or is aborted.

use super::client::s3_error;

use crate::error::{Error, Result};
use crate::store::journal;
use crate::store::part_streamer::{PartSink, PartSinks, PartTarget};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::sync::Arc;

/// One bucket, as the part streamer sees it.
pub(super) struct S3Bucket {
    pub(super) client: Client,
    pub(super) endpoint: String,
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) part_size: u64,
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
        let entry = crate::store::blocking(move || journal::record(&record))
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
            let _ = crate::store::blocking(move || {
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
                let _ = crate::store::blocking(move || {
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
