//! `s3`: AWS S3 and S3-compatibles (MinIO, GCS through HMAC keys, TOS, R2).
//! Objects are `<prefix><name>.zip` in each bucket. A reader is a
//! `Prefetcher` of ranged GETs: the first, small, at open (it gives the size
//! and the ETag), then a window that grows to `read_concurrency` ranges of
//! `read_part_size` in flight while the reader stays sequential. Every
//! range asks for the ETag of the first (`If-Match`, and the answer's ETag
//! is compared too), so a handle never mixes two versions of an object.
//! Uploads are written to a local spool file. While an archive is being
//! written, its parts go up as a multipart upload, `write_concurrency` at
//! once, each streamed from the spool (`body`); the part size grows for
//! very large archives (`PartPlan`). Commit checks the archive, sends the
//! rest and completes it (a small archive is one PUT). A write back into a
//! part already sent, or a rename to another name, makes commit start over
//! from the spool. Any failure aborts the multipart upload, so nothing is
//! visible at the key until the archive is checked and complete. Each
//! multipart upload is in the journal (`journal`) until it is completed or
//! aborted, so that the next start aborts those a dead daemon left. A
//! rename is a server-side copy: CopyObject, or UploadPartCopy ranges for
//! an object over 5 GiB.
//! Checksums are only those S3 requires unless `checksums =
//! "when_supported"`: S3-compatibles reject AWS-only checksum headers.

mod body;
mod client;
mod multipart;
mod read;

use client::{modified, s3_error, text, urlencode_key};
use multipart::S3Bucket;
use read::S3Object;

use super::part_plan::{PartPlan, s3_copy_in_parts};
use super::part_streamer::StreamingCommit;
use super::prefetch::{Prefetcher, ReadTuning};
use super::spool::{SpoolFile, SpooledUpload, TrustedDir};
use super::{ObjectInfo, ObjectReader, ProjectStore, Upload};
use super::{instance, journal};
use crate::config::S3Config;
use crate::error::{Error, Result};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use std::sync::Arc;

pub struct S3Store {
    client: Client,
    prefix: String,
    part_size: u64,
    /// How each open handle reads.
    tuning: ReadTuning,
    /// Parts each upload may have in flight.
    write_concurrency: usize,
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
            tuning: ReadTuning::new(
                config.transfer.read_part_size,
                config.transfer.read_concurrency,
            ),
            write_concurrency: config.transfer.write_concurrency,
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

    /// `key` as a one-key listing finds it.
    async fn listed(&self, bucket: &str, key: &str) -> Result<Option<aws_sdk_s3::types::Object>> {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| s3_error("ListObjectsV2", &format!("s3://{bucket}/{key}"), e))?;
        // The key itself sorts first among the keys it prefixes.
        Ok(listed
            .contents()
            .first()
            .filter(|object| object.key() == Some(key))
            .cloned())
    }

    fn bucket(&self, bucket: &str) -> S3Bucket {
        S3Bucket {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            bucket: bucket.to_string(),
            prefix: self.prefix.clone(),
            plan: PartPlan::s3(self.part_size),
            concurrency: self.write_concurrency,
        }
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
        let listed = self.listed(bucket, &self.key(name)).await?;
        Ok(listed.map(|object| ObjectInfo {
            size: object.size().unwrap_or(0).max(0) as u64,
            modified: modified(object.last_modified()),
            version: self.version(object.e_tag(), true),
        }))
    }

    /// Starts the first GET at once, for the first range only, and learns
    /// the size and ETag from it: a HEAD first would cost a request (a
    /// whole-object one on some servers). Every later GET of the handle
    /// must match that ETag.
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
        let opened = source.open(self.tuning.first).await?;
        let info = opened.info(self.version(opened.etag.as_deref(), false));
        source.etag = opened.etag;
        Ok(Box::new(Prefetcher::with_first(
            source,
            info,
            self.tuning,
            opened.first_end,
            opened.body,
        )))
    }

    async fn begin_upload(&self, bucket: &str, name: &str) -> Result<Box<dyn Upload>> {
        let spool_dir = self.spool_dir.clone();
        let own = super::blocking(move || instance::claim(&spool_dir, "spool directory")).await?;
        let spool = SpoolFile::create(&own).await?;
        let committer = StreamingCommit::begin(self.bucket(bucket), &spool, name);
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

    /// A server-side copy (CopyObject, or UploadPartCopy ranges over
    /// 5 GiB), then a delete of the old key.
    async fn rename(&self, bucket: &str, from: &str, to: &str) -> Result<ObjectInfo> {
        let (source, target) = (self.key(from), self.key(to));
        let what = format!("s3://{bucket}/{source}");
        let listed = self
            .listed(bucket, &source)
            .await?
            .ok_or_else(|| Error::not_found(what.clone()))?;
        let size = listed.size().unwrap_or(0).max(0) as u64;
        if s3_copy_in_parts(size) {
            // Minutes of copying: every range must come from one version.
            // Some S3-compatibles (s3s-fs) list no ETags; a HEAD has one.
            let etag = match listed.e_tag() {
                Some(etag) => Some(etag.to_string()),
                None => self
                    .client
                    .head_object()
                    .bucket(bucket)
                    .key(&source)
                    .send()
                    .await
                    .map_err(|e| s3_error("HeadObject", &what, e))?
                    .e_tag()
                    .map(str::to_string),
            };
            let etag = etag.ok_or_else(|| {
                Error::provider(format!("{what}: no ETag to pin a copy in parts to"))
            })?;
            self.bucket(bucket)
                .copy_in_parts(&source, &target, size, etag)
                .await?;
        } else {
            self.client
                .copy_object()
                .bucket(bucket)
                .key(&target)
                .copy_source(format!("{bucket}/{}", urlencode_key(&source)))
                .send()
                .await
                .map_err(|e| s3_error("CopyObject", &what, e))?;
        }
        self.delete(bucket, from).await?;
        self.stat(bucket, to).await?.ok_or_else(|| {
            Error::provider(format!("s3://{bucket}/{target} vanished after its copy"))
        })
    }
}
