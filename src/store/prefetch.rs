//! Reading an object through ranged GETs, all of one version, for any store
//! that can fetch a byte range (`RangeSource`).
//!
//! A handle starts with one small range at open (`ReadTuning::first`: a small
//! archive is one request, and its first byte comes as soon as that GET
//! answers). While the reader stays sequential, the window grows: each time
//! the reader gets halfway through a range, the number of ranges it may have
//! ahead doubles, up to `concurrency`, and the ranges themselves double in
//! length up to `part_size`; each range is its own GET, all in flight at
//! once. A read the window does not hold (a random read, or a backward one
//! past the bytes kept behind) starts over with one small range there.
//!
//! Memory is bounded by the window, whatever the object size: the ranges
//! requested ahead (at most `concurrency` of at most `part_size`, plus the one
//! being read) and `keep_behind` bytes already read, kept for the slightly
//! out-of-order reads the kernel sends. Every range is fetched from the
//! version the source pinned at open (S3 and Azure send `If-Match` with the
//! ETag they saw), so one handle never mixes two versions of an object.

use super::{ObjectInfo, ObjectReader};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

#[cfg(test)]
mod tests;

pub type Body = BoxStream<'static, Result<Bytes>>;

/// An object whose byte ranges can be fetched, every one from the version
/// the source was opened on.
#[async_trait]
pub trait RangeSource: Send + Sync + 'static {
    /// The bytes `range` of that version; a body that ends early is an
    /// error, one that runs on is cut.
    async fn get_range(&self, range: Range<u64>) -> Result<Body>;
    /// For errors: `s3://bucket/key` and the like.
    fn describe(&self) -> String;
}

/// The first range of a handle: 1 MiB, the size of a common read, plus the
/// 128 KiB of read-ahead the kernel adds to it, so that a reader of the
/// first megabyte waits for one request.
pub const FIRST_RANGE: u64 = (1 << 20) + (128 << 10);

/// Bytes kept behind the reader, for the kernel's out-of-order reads.
const KEEP_BEHIND: u64 = 2 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTuning {
    /// Length of the first range at open and after a reset.
    pub first: u64,
    /// Longest range.
    pub part_size: u64,
    /// Most ranges ahead of the reader, counting the one it is in.
    pub concurrency: usize,
    pub keep_behind: u64,
}

impl ReadTuning {
    pub fn new(part_size: u64, concurrency: usize) -> ReadTuning {
        let part_size = part_size.max(1);
        ReadTuning {
            first: FIRST_RANGE.min(part_size),
            part_size,
            concurrency: concurrency.max(1),
            keep_behind: KEEP_BEHIND,
        }
    }
}

/// One range: its GET runs in a task that passes the body's chunks on.
struct Fetch {
    range: Range<u64>,
    /// Chunks received and kept, covering `kept_from..received_to`.
    chunks: VecDeque<Bytes>,
    kept_from: u64,
    received_to: u64,
    incoming: mpsc::UnboundedReceiver<Result<Bytes>>,
    task: JoinHandle<()>,
    /// The reader got halfway through it (the window grew then).
    grew: bool,
}

impl Drop for Fetch {
    /// A range nobody will read stops downloading.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fetch {
    fn start<S: RangeSource>(source: &Arc<S>, range: Range<u64>) -> Fetch {
        let source = source.clone();
        let wanted = range.clone();
        Fetch::spawn(range, move |chunks| async move {
            match source.get_range(wanted.clone()).await {
                Ok(body) => pump(body, wanted.end - wanted.start, &chunks).await,
                Err(e) => {
                    let _ = chunks.send(Err(e));
                }
            }
        })
    }

    /// A range whose GET already answered (the one made at open).
    fn with_body(range: Range<u64>, body: Body) -> Fetch {
        let length = range.end - range.start;
        Fetch::spawn(range, move |chunks| async move {
            pump(body, length, &chunks).await;
        })
    }

    fn spawn<F, Fut>(range: Range<u64>, run: F) -> Fetch
    where
        F: FnOnce(mpsc::UnboundedSender<Result<Bytes>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (sender, incoming) = mpsc::unbounded_channel();
        Fetch {
            chunks: VecDeque::new(),
            kept_from: range.start,
            received_to: range.start,
            incoming,
            task: tokio::spawn(run(sender)),
            grew: false,
            range,
        }
    }

    /// Waits until the bytes before `to` (within the range) have arrived.
    async fn receive_to(&mut self, to: u64) -> Result<()> {
        while self.received_to < to {
            match self.incoming.recv().await {
                Some(Ok(chunk)) => {
                    self.received_to += chunk.len() as u64;
                    self.chunks.push_back(chunk);
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::provider("a range GET stopped")),
            }
        }
        Ok(())
    }

    /// Appends `from..to` (received and kept) to `out`.
    fn copy(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        let mut start = self.kept_from;
        for chunk in &self.chunks {
            let end = start + chunk.len() as u64;
            if end > from && start < to {
                let a = from.saturating_sub(start) as usize;
                let b = (to.min(end) - start) as usize;
                out.extend_from_slice(&chunk[a..b]);
            }
            if end >= to {
                break;
            }
            start = end;
        }
    }

    /// Drops the chunks that end at or before `offset`.
    fn forget_before(&mut self, offset: u64) {
        while let Some(chunk) = self.chunks.front() {
            let end = self.kept_from + chunk.len() as u64;
            if end > offset {
                break;
            }
            self.kept_from = end;
            self.chunks.pop_front();
        }
    }
}

/// Passes the body's chunks on, cut at `length` bytes; an early end is an
/// error.
async fn pump(mut body: Body, length: u64, chunks: &mpsc::UnboundedSender<Result<Bytes>>) {
    let mut got = 0u64;
    while got < length {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                let _ = chunks.send(Err(e));
                return;
            }
            None => break,
        };
        let take = chunk.len().min((length - got) as usize);
        got += take as u64;
        if chunks.send(Ok(chunk.slice(..take))).is_err() {
            return;
        }
    }
    if got < length {
        let _ = chunks.send(Err(Error::provider(format!(
            "a range GET ended after {got} of {length} bytes"
        ))));
    }
}

/// The ranges of one handle: contiguous, from the bytes kept behind the
/// reader to `requested_to`.
struct Window {
    fetches: VecDeque<Fetch>,
    /// Where the next range starts.
    requested_to: u64,
    /// Most ranges ahead of the reader, counting the one it is in.
    limit: usize,
    /// Length of the next range.
    next_len: u64,
}

impl Window {
    fn new(offset: u64, tuning: &ReadTuning) -> Window {
        Window {
            fetches: VecDeque::new(),
            requested_to: offset,
            limit: 1,
            next_len: tuning.first,
        }
    }

    /// First byte the window holds or will hold.
    fn kept_from(&self) -> u64 {
        self.fetches
            .front()
            .map_or(self.requested_to, |f| f.kept_from)
    }

    /// Whether a read at `offset` is the window's: held, in flight, or
    /// close enough after it to be fetched on the way.
    fn serves(&self, offset: u64, tuning: &ReadTuning) -> bool {
        offset >= self.kept_from() && offset <= self.requested_to + tuning.first
    }

    /// Forgets what lies more than `keep_behind` before `offset`.
    fn trim(&mut self, offset: u64, tuning: &ReadTuning) {
        let keep_from = offset.saturating_sub(tuning.keep_behind);
        while self
            .fetches
            .front()
            .is_some_and(|f| f.range.end <= keep_from)
        {
            self.fetches.pop_front();
        }
        if let Some(front) = self.fetches.front_mut() {
            front.forget_before(keep_from);
        }
    }

    /// A reader halfway through its range doubles the ranges it may have
    /// ahead, once per range.
    fn grow(&mut self, offset: u64, end: u64, tuning: &ReadTuning) {
        let current = self.fetches.iter_mut().find(|f| f.range.contains(&offset));
        if let Some(fetch) = current
            && !fetch.grew
            && end > fetch.range.start + (fetch.range.end - fetch.range.start) / 2
        {
            fetch.grew = true;
            self.limit = (self.limit * 2).min(tuning.concurrency);
        }
    }

    /// Requests ranges until `limit` are ahead of `offset` and `..end` is
    /// covered.
    fn fill<S: RangeSource>(
        &mut self,
        source: &Arc<S>,
        (offset, end): (u64, u64),
        size: u64,
        tuning: &ReadTuning,
    ) {
        let mut ahead = self.fetches.iter().filter(|f| f.range.end > offset).count();
        while self.requested_to < size && (ahead < self.limit || self.requested_to < end) {
            let range = self.requested_to..(self.requested_to + self.next_len).min(size);
            self.requested_to = range.end;
            self.fetches.push_back(Fetch::start(source, range));
            self.next_len = (self.next_len * 2).min(tuning.part_size);
            ahead += 1;
        }
    }

    /// The bytes `offset..end`, waiting for those in flight.
    async fn copy(&mut self, offset: u64, end: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity((end - offset) as usize);
        for fetch in self.fetches.iter_mut() {
            if fetch.range.end <= offset {
                continue;
            }
            if fetch.range.start >= end {
                break;
            }
            let to = end.min(fetch.range.end);
            fetch.receive_to(to).await?;
            fetch.copy(offset.max(fetch.range.start), to, &mut out);
        }
        Ok(out)
    }
}

pub struct Prefetcher<S> {
    source: Arc<S>,
    info: ObjectInfo,
    tuning: ReadTuning,
    window: Mutex<Window>,
}

impl<S: RangeSource> Prefetcher<S> {
    /// A reader whose first range is requested now.
    pub fn new(source: S, info: ObjectInfo, tuning: ReadTuning) -> Self {
        let source = Arc::new(source);
        let mut window = Window::new(0, &tuning);
        window.fill(&source, (0, 0), info.size, &tuning);
        Prefetcher {
            source,
            info,
            tuning,
            window: Mutex::new(window),
        }
    }

    /// A reader whose first range, `0..first_end`, is the body of a GET made
    /// at open (the one that gave the size and the version).
    pub fn with_first(
        source: S,
        info: ObjectInfo,
        tuning: ReadTuning,
        first_end: u64,
        body: Body,
    ) -> Self {
        let mut window = Window::new(0, &tuning);
        let first_end = first_end.min(info.size);
        if first_end > 0 {
            window
                .fetches
                .push_back(Fetch::with_body(0..first_end, body));
            window.requested_to = first_end;
            window.next_len = (tuning.first * 2).min(tuning.part_size);
        }
        Prefetcher {
            source: Arc::new(source),
            info,
            tuning,
            window: Mutex::new(window),
        }
    }
}

#[async_trait]
impl<S: RangeSource> ObjectReader for Prefetcher<S> {
    fn info(&self) -> ObjectInfo {
        self.info
    }

    async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(u64::from(len)).min(self.info.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let tuning = &self.tuning;
        let mut window = self.window.lock().await;
        if !window.serves(offset, tuning) {
            tracing::debug!(object = %self.source.describe(), offset, "read outside the window: starting over there");
            *window = Window::new(offset, tuning);
        }
        window.trim(offset, tuning);
        window.grow(offset, end, tuning);
        window.fill(&self.source, (offset, end), self.info.size, tuning);
        let read = window.copy(offset, end).await;
        if read.is_err() {
            // The next read asks again, from where it reads.
            *window = Window::new(offset, tuning);
        }
        read
    }
}
