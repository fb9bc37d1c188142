//! A part's body read from the spool as it is sent: the open spool file
//! (the descriptor that was checked), read with `pread` a chunk at a time, so
//! a part of any size costs one chunk of memory, and parts read in parallel
//! share no file position. The SDK can rebuild it to retry a request.

use crate::store::spool::Spooled;
use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::fs::File;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;

/// Bytes read from the spool at once.
const CHUNK: u64 = 512 << 10;

/// `spool[range]` as a request body the SDK may retry.
pub(super) fn spool_body(spool: &Spooled, range: Range<u64>) -> ByteStream {
    let file = spool.file.clone();
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(SpoolRange {
            file: file.clone(),
            range: range.clone(),
            reading: None,
        })
    }))
}

struct SpoolRange {
    file: Arc<File>,
    /// What is left to send.
    range: Range<u64>,
    reading: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
}

impl Body for SpoolRange {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.range.is_empty() {
            return Poll::Ready(None);
        }
        let reading = this.reading.get_or_insert_with(|| {
            let file = this.file.clone();
            let (offset, length) = (
                this.range.start,
                CHUNK.min(this.range.end - this.range.start),
            );
            tokio::task::spawn_blocking(move || {
                crate::store::spool::read_full_at(&file, offset, length)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        });
        let read = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(read) => read,
        };
        this.reading = None;
        let chunk = match read {
            Ok(Ok(chunk)) if !chunk.is_empty() => chunk,
            Ok(Ok(_)) => {
                this.range.end = this.range.start;
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the upload spool ended early",
                ))));
            }
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(std::io::Error::other(e)))),
        };
        this.range.start += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.range.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.range.end - self.range.start)
    }
}

impl Drop for SpoolRange {
    fn drop(&mut self) {
        if let Some(reading) = self.reading.take() {
            reading.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn a_body_is_its_range_of_the_spool_and_can_be_read_again() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i % 253) as u8).collect();
        file.write_all(&data).unwrap();
        let spool = Spooled {
            file: Arc::new(file),
            log: Arc::default(),
        };
        let range = 7..3 * CHUNK + 50;
        let length = range.end - range.start;
        let body = spool_body(&spool, range.clone()).into_inner();
        let retry = body.try_clone().expect("a retryable body");
        for body in [body, retry] {
            let body = ByteStream::new(body);
            assert_eq!(body.size_hint(), (length, Some(length)));
            let got = body.collect().await.unwrap().into_bytes();
            assert_eq!(got[..], data[range.start as usize..range.end as usize]);
        }
        let past_the_end = spool_body(&spool, 0..data.len() as u64 + 1);
        assert!(past_the_end.collect().await.is_err());
    }
}
