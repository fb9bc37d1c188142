//! Reading an object: ranged GETs from a position, pinned to the ETag the
//! first GET returned.

use super::client::s3_error;

use crate::error::{Error, Result};
use crate::store::streaming::{Body, RangeSource};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

/// Where a reader's GETs go.
pub(super) struct S3Object {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) key: String,
    /// The version the handle reads; `None` when the server gave none.
    pub(super) etag: Option<String>,
}

impl S3Object {
    /// EIO: the handle never mixes the bytes of two versions.
    fn replaced(&self) -> Error {
        Error::provider(format!(
            "{} was replaced since it was opened; open it again",
            self.describe()
        ))
    }

    pub(super) fn chunks(body: ByteStream, what: String) -> Body {
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
