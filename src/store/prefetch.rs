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
//! requested ahead (at most `concurrency` of at most `part_size`, counting the
//! one being read) and the last range read, kept until the reader is
//! `keep_behind` past it for the slightly out-of-order reads the kernel
//! sends. Every range is fetched from the
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
use tokio::sync::{Mutex, watch};
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

/// What a range's task has received: its bytes so far, in one buffer (each
/// chunk is copied in as it arrives, so the HTTP client's read buffers are
/// never held by a range waiting to be read), and how it ended.
struct Received {
    /// The range's length.
    length: usize,
    bytes: std::sync::Mutex<Vec<u8>>,
}

#[derive(Clone, Default)]
struct Progress {
    received: u64,
    failed: Option<Error>,
}

/// One range: its GET runs in a task that fills the range's buffer.
struct Fetch {
    range: Range<u64>,
    received: Arc<Received>,
    progress: watch::Receiver<Progress>,
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
    fn start<S: RangeSource>(source: &Arc<S>, range: Range<u64>, buffer: Vec<u8>) -> Fetch {
        let source = source.clone();
        let wanted = range.clone();
        Fetch::spawn(range, buffer, move |received, progress| async move {
            match source.get_range(wanted).await {
                Ok(body) => fill(body, &received, &progress).await,
                Err(e) => progress.send_modify(|p| p.failed = Some(e)),
            }
        })
    }

    /// A range whose GET already answered (the one made at open).
    fn with_body(range: Range<u64>, body: Body) -> Fetch {
        Fetch::spawn(range, Vec::new(), move |received, progress| async move {
            fill(body, &received, &progress).await;
        })
    }

    /// Runs `run` on a task with `buffer` (cleared, grown to the range's
    /// length) to fill.
    fn spawn<F, Fut>(range: Range<u64>, mut buffer: Vec<u8>, run: F) -> Fetch
    where
        F: FnOnce(Arc<Received>, watch::Sender<Progress>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let length = usize::try_from(range.end - range.start).unwrap_or(0);
        buffer.clear();
        buffer.reserve_exact(length);
        let received = Arc::new(Received {
            length,
            bytes: std::sync::Mutex::new(buffer),
        });
        let (sender, progress) = watch::channel(Progress::default());
        Fetch {
            task: tokio::spawn(run(received.clone(), sender)),
            received,
            progress,
            grew: false,
            range,
        }
    }

    /// The range's buffer, for another range, once its task is done with it.
    fn into_buffer(mut self) -> Option<Vec<u8>> {
        if !self.task.is_finished() {
            return None;
        }
        let received = std::mem::replace(
            &mut self.received,
            Arc::new(Received {
                length: 0,
                bytes: std::sync::Mutex::new(Vec::new()),
            }),
        );
        Arc::into_inner(received).map(|r| r.bytes.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until the bytes before `to` (within the range) have arrived.
    async fn receive_to(&mut self, to: u64) -> Result<()> {
        let needed = to - self.range.start;
        let progress = self
            .progress
            .wait_for(|p| p.received >= needed || p.failed.is_some())
            .await
            .map_err(|_| Error::provider("a range GET stopped"))?;
        match &progress.failed {
            Some(e) if progress.received < needed => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Appends `from..to` (received) to `out`.
    fn copy(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        let bytes = crate::sync::lock(&self.received.bytes);
        let (a, b) = (
            (from - self.range.start) as usize,
            (to - self.range.start) as usize,
        );
        out.extend_from_slice(&bytes[a..b]);
    }
}

/// Copies the body into the range's buffer, cut at its length; an early
/// end is an error.
async fn fill(mut body: Body, received: &Received, progress: &watch::Sender<Progress>) {
    let length = received.length;
    let mut got = 0;
    while got < length {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                progress.send_modify(|p| p.failed = Some(e));
                return;
            }
            None => break,
        };
        let take = chunk.len().min(length - got);
        crate::sync::lock(&received.bytes).extend_from_slice(&chunk[..take]);
        got += take;
        progress.send_modify(|p| p.received = got as u64);
    }
    if got < length {
        let failed = Error::provider(format!("a range GET ended after {got} of {length} bytes"));
        progress.send_modify(|p| p.failed = Some(failed));
    }
}

/// The ranges of one handle: contiguous, from the bytes kept behind the
/// reader to `requested_to`.
struct Window {
    fetches: VecDeque<Fetch>,
    /// Buffers of ranges read, for the next ranges: a handle allocates its
    /// window once.
    spare: Vec<Vec<u8>>,
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
            spare: Vec::new(),
            requested_to: offset,
            limit: 1,
            next_len: tuning.first,
        }
    }

    /// Starts over at `offset`. The buffers go too: a reader that jumps
    /// about reads small ranges, and should not keep a whole window's
    /// memory resident for them.
    fn restart(&mut self, offset: u64, tuning: &ReadTuning) {
        *self = Window::new(offset, tuning);
    }

    /// First byte the window holds or will hold.
    fn kept_from(&self) -> u64 {
        self.fetches
            .front()
            .map_or(self.requested_to, |f| f.range.start)
    }

    /// Whether a read at `offset` is the window's: held, in flight, or
    /// close enough after it to be fetched on the way.
    fn serves(&self, offset: u64, tuning: &ReadTuning) -> bool {
        offset >= self.kept_from() && offset <= self.requested_to + tuning.first
    }

    /// Forgets the ranges that end more than `keep_behind` before `offset`.
    fn trim(&mut self, offset: u64, tuning: &ReadTuning) {
        let keep_from = offset.saturating_sub(tuning.keep_behind);
        while self
            .fetches
            .front()
            .is_some_and(|f| f.range.end <= keep_from)
        {
            let buffer = self.fetches.pop_front().and_then(Fetch::into_buffer);
            self.spare.extend(buffer);
            self.spare.truncate(tuning.concurrency + 1);
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
            let buffer = self.spare.pop().unwrap_or_default();
            self.fetches.push_back(Fetch::start(source, range, buffer));
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
            window.restart(offset, tuning);
        }
        window.trim(offset, tuning);
        window.grow(offset, end, tuning);
        window.fill(&self.source, (offset, end), self.info.size, tuning);
        let mut read = window.copy(offset, end).await;
        if read.is_err() {
            // A range fetched ahead may have failed while nobody waited for
            // it (a connection reset mid-body): ask once more, from here,
            // before the reader sees EIO. Each range is pinned to the
            // version, so this never mixes two.
            window.restart(offset, tuning);
            window.fill(&self.source, (offset, end), self.info.size, tuning);
            read = window.copy(offset, end).await;
            if read.is_err() {
                // The next read asks again, from where it reads.
                window.restart(offset, tuning);
            }
        }
        read
    }
}
