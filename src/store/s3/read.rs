//! Reading an object: a first ranged GET at open gives the size and the
//! ETag; every later range of the handle is a ranged GET pinned to that ETag.

use super::client::{modified, s3_error};

use crate::error::{Error, Result};
use crate::store::ObjectInfo;
use crate::store::prefetch::{Body, RangeSource};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use std::ops::Range;

/// Where a reader's GETs go.
pub(super) struct S3Object {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) key: String,
    /// The version the handle reads; `None` when the server gave none.
    pub(super) etag: Option<String>,
}

/// What the GET made at open found.
pub(super) struct Opened {
    pub(super) etag: Option<String>,
    /// Size of the whole object.
    pub(super) size: u64,
    pub(super) modified: std::time::SystemTime,
    /// The first bytes: `0..first_end`.
    pub(super) first_end: u64,
    pub(super) body: Body,
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

    /// The first `first` bytes (fewer when the object is smaller), with the
    /// object's size and ETag: one request. An empty object, which has no
    /// range to give, takes a second, plain GET.
    pub(super) async fn open(&self, first: u64) -> Result<Opened> {
        let ranged = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes=0-{}", first.max(1) - 1))
            .send()
            .await;
        let object = match ranged {
            Ok(object) => object,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .send()
                .await
                .map_err(|e| s3_error("GetObject", &self.describe(), e))?,
            Err(e) => return Err(s3_error("GetObject", &self.describe(), e)),
        };
        let length = object.content_length().unwrap_or(0).max(0) as u64;
        // No Content-Range: the whole object (a server that ignores Range,
        // or the plain GET of an empty one).
        let size = match object.content_range() {
            None => length,
            Some(value) => match parse_content_range(value) {
                Some((0, total)) => total,
                _ => {
                    return Err(Error::provider(format!(
                        "{}: GetObject answered the first range with Content-Range `{value}`",
                        self.describe()
                    )));
                }
            },
        };
        Ok(Opened {
            etag: object.e_tag().map(str::to_string),
            size,
            modified: modified(object.last_modified()),
            // Only the first range is kept from this body, whatever the
            // server sent: the rest comes through the window.
            first_end: length.min(first.max(1)),
            body: Self::chunks(object.body, self.describe()),
        })
    }

    /// Checks that a response is the range asked for, of the version read.
    fn check(&self, object: &GetObjectOutput, range: &Range<u64>) -> Result<()> {
        // Checked here too: not every S3-compatible honours If-Match.
        if self.etag.is_some() && object.e_tag() != self.etag.as_deref() {
            return Err(self.replaced());
        }
        let start = object
            .content_range()
            .and_then(parse_content_range)
            .map_or(0, |(start, _)| start);
        if start != range.start {
            return Err(Error::provider(format!(
                "{}: asked for bytes from {}, got them from {start}",
                self.describe(),
                range.start
            )));
        }
        Ok(())
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (span, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

#[async_trait]
impl RangeSource for S3Object {
    async fn get_range(&self, range: Range<u64>) -> Result<Body> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={}-{}", range.start, range.end.max(1) - 1))
            .set_if_match(self.etag.clone())
            .send()
            .await
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) => self.replaced(),
                _ => s3_error("GetObject", &self.describe(), e),
            })?;
        self.check(&object, &range)?;
        Ok(Self::chunks(object.body, self.describe()))
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

impl Opened {
    pub(super) fn info(&self, version: u64) -> ObjectInfo {
        ObjectInfo {
            size: self.size,
            modified: self.modified,
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_ranges_give_the_start_and_the_whole_size() {
        assert_eq!(
            parse_content_range("bytes 0-1179647/1073742054"),
            Some((0, 1073742054))
        );
        assert_eq!(parse_content_range("bytes 8-9/10"), Some((8, 10)));
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }
}
