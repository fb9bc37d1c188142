//! Reading an object through one streaming GET from the read position:
//! the server sends ahead as fast as we consume (read-ahead bounded by
//! TCP's window), and the last 8 MiB are kept, so requests the kernel
//! issues slightly out of order are served without a new GET. A jump
//! backwards past those bytes, or far forwards, starts a new GET there.
//! Memory stays bounded whatever the object size, and there are few GETs:
//! some S3-compatibles pay a whole-object cost per request.

use super::{ObjectInfo, ObjectReader};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::VecDeque;
use tokio::sync::Mutex;

pub type Body = BoxStream<'static, Result<Bytes>>;

/// Bytes kept behind the read position.
const KEEP_BEHIND: u64 = 8 << 20;
/// A forward jump smaller than this is read through, not restarted.
const SKIP_AHEAD: u64 = 4 << 20;

/// An object that can be streamed from any offset to its end.
#[async_trait]
pub trait RangeSource: Send + Sync {
    async fn stream_from(&self, offset: u64) -> Result<Body>;
    /// For errors: `s3://bucket/key` and the like.
    fn describe(&self) -> String;
}

#[derive(Default)]
struct Stream {
    body: Option<Body>,
    /// Offset of the next byte the body yields.
    position: u64,
    /// Recent bytes, contiguous, ending at `position`.
    recent: VecDeque<Bytes>,
    recent_start: u64,
}

impl Stream {
    fn covers(&self, offset: u64) -> bool {
        self.body.is_some() && offset >= self.recent_start && offset <= self.position + SKIP_AHEAD
    }

    fn push(&mut self, chunk: Bytes) {
        self.position += chunk.len() as u64;
        self.recent.push_back(chunk);
        while self.position - self.recent_start > KEEP_BEHIND && self.recent.len() > 1 {
            if let Some(old) = self.recent.pop_front() {
                self.recent_start += old.len() as u64;
            }
        }
    }

    fn copy_out(&self, offset: u64, end: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut chunk_start = self.recent_start;
        for chunk in &self.recent {
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end > offset && chunk_start < end {
                let from = offset.saturating_sub(chunk_start) as usize;
                let to = (end.min(chunk_end) - chunk_start) as usize;
                out.extend_from_slice(&chunk[from..to]);
            }
            chunk_start = chunk_end;
        }
        out
    }
}

pub struct StreamingReader<S> {
    source: S,
    info: ObjectInfo,
    stream: Mutex<Stream>,
}

impl<S: RangeSource> StreamingReader<S> {
    pub fn new(source: S, info: ObjectInfo) -> Self {
        StreamingReader {
            source,
            info,
            stream: Mutex::new(Stream::default()),
        }
    }

    /// A reader whose first GET, from offset 0, is already under way.
    pub fn with_body(source: S, info: ObjectInfo, body: Body) -> Self {
        StreamingReader {
            source,
            info,
            stream: Mutex::new(Stream {
                body: Some(body),
                ..Stream::default()
            }),
        }
    }
}

#[async_trait]
impl<S: RangeSource> ObjectReader for StreamingReader<S> {
    fn info(&self) -> ObjectInfo {
        self.info
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = (offset + u64::from(len)).min(self.info.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut stream = self.stream.lock().await;
        if !stream.covers(offset) {
            tracing::debug!(object = %self.source.describe(), offset, "streaming GET");
            *stream = Stream {
                body: Some(self.source.stream_from(offset).await?),
                position: offset,
                recent: VecDeque::new(),
                recent_start: offset,
            };
        }
        while stream.position < end {
            let next = match stream.body.as_mut() {
                Some(body) => body.next().await,
                None => None,
            };
            match next {
                Some(Ok(chunk)) => stream.push(chunk),
                Some(Err(e)) => {
                    *stream = Stream::default();
                    return Err(e);
                }
                None => break,
            }
        }
        if stream.position < end {
            *stream = Stream::default();
            return Err(Error::provider(format!(
                "{} ended before its size",
                self.source.describe()
            )));
        }
        Ok(stream.copy_out(offset, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An object of `size` bytes where byte i is i % 251, counting GETs.
    struct Counting {
        size: u64,
        gets: AtomicUsize,
    }

    #[async_trait]
    impl RangeSource for Counting {
        async fn stream_from(&self, offset: u64) -> Result<Body> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let chunks: Vec<Result<Bytes>> = (offset..self.size)
                .step_by(64 << 10)
                .map(|start| {
                    let end = (start + (64 << 10)).min(self.size);
                    Ok(Bytes::from(
                        (start..end).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
                    ))
                })
                .collect();
            Ok(Box::pin(futures::stream::iter(chunks)))
        }
        fn describe(&self) -> String {
            "test object".into()
        }
    }

    fn expected(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn sequential_and_slightly_out_of_order_reads_share_one_get() {
        let size = 20 << 20;
        let reader = StreamingReader::new(
            Counting {
                size,
                gets: AtomicUsize::new(0),
            },
            ObjectInfo {
                size,
                modified: std::time::SystemTime::UNIX_EPOCH,
                version: 0,
            },
        );
        let chunk = 128 << 10;
        let mut offsets: Vec<u64> = (0..size).step_by(chunk as usize).collect();
        offsets.swap(3, 4);
        offsets.swap(10, 12);
        for offset in offsets {
            assert_eq!(
                reader.read_at(offset, chunk as u32).await.unwrap(),
                expected(offset, chunk)
            );
        }
        assert_eq!(reader.source.gets.load(Ordering::SeqCst), 1);
        // A seek back past the kept bytes starts a new GET; reads past the end are empty.
        assert_eq!(reader.read_at(0, 10).await.unwrap(), expected(0, 10));
        assert_eq!(reader.source.gets.load(Ordering::SeqCst), 2);
        assert!(reader.read_at(size, 10).await.unwrap().is_empty());
        assert_eq!(
            reader.read_at(size - 5, 10).await.unwrap(),
            expected(size - 5, 5)
        );
    }
}
