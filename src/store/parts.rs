//! The parts of one multipart upload, sent in parallel: a store says how to
//! send one part (`PartSink`), `ParallelParts` keeps up to `concurrency` of
//! them in flight, collects what each gives back, and completes or aborts
//! the upload.

use super::part_streamer::Spooled;
use crate::error::{Error, Result};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::ops::Range;
use tokio::task::JoinSet;

/// A part that went up: its number (from 1) and the ETag S3 gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentPart {
    pub number: u32,
    pub etag: Option<String>,
}

/// Sends one part; runs on its own task.
pub type PartFuture = BoxFuture<'static, Result<SentPart>>;

/// One multipart upload in progress, as a store runs it.
#[async_trait]
pub trait PartSink: Send {
    /// Prepares part `number` with the bytes `range` of the spool, read from
    /// the open spool (the file that was checked, never reopened by name);
    /// the future sends it. Parts are prepared in order.
    async fn part(&mut self, spool: &Spooled, number: u32, range: Range<u64>)
    -> Result<PartFuture>;
    /// Whether a part sits in memory while it is sent: then the bytes in
    /// flight are bounded too, not only the parts.
    fn buffers_parts(&self) -> bool {
        false
    }
    /// Completes the upload with the parts sent, in order.
    async fn complete(&mut self, parts: Vec<SentPart>) -> Result<()>;
    async fn abort(&mut self);
}

/// Starts multipart uploads to one object.
#[async_trait]
pub trait PartSinks: Send + Sync {
    async fn start(&self) -> Result<Box<dyn PartSink>>;
}

pub struct ParallelParts {
    sink: Box<dyn PartSink>,
    in_flight: JoinSet<(u64, Result<SentPart>)>,
    /// Bytes of the parts in flight.
    bytes: u64,
    sent: Vec<SentPart>,
    next_number: u32,
    concurrency: usize,
    /// Most bytes in flight for a sink that buffers its parts.
    budget: Option<u64>,
    /// Completed or aborted: nothing to clean up when dropped.
    finished: bool,
}

impl ParallelParts {
    /// Up to `concurrency` parts in flight; for a sink that holds its parts
    /// in memory, also at most `concurrency` parts of `part_size` bytes (one
    /// part at least, whatever its size).
    pub fn new(sink: Box<dyn PartSink>, concurrency: usize, part_size: u64) -> ParallelParts {
        let concurrency = concurrency.max(1);
        let budget = sink
            .buffers_parts()
            .then(|| part_size.saturating_mul(concurrency as u64));
        ParallelParts {
            sink,
            in_flight: JoinSet::new(),
            bytes: 0,
            sent: Vec::new(),
            next_number: 1,
            concurrency,
            budget,
            finished: false,
        }
    }

    /// Sends `spool[range]` as the next part, once there is room for it.
    pub async fn send(&mut self, spool: &Spooled, range: Range<u64>) -> Result<()> {
        let length = range.end - range.start;
        self.make_room(length).await?;
        let part = self.sink.part(spool, self.next_number, range).await?;
        self.spawn(length, part);
        Ok(())
    }

    /// Sends the part `make` gives for the next number, once there is room:
    /// for parts that are not read from a spool (a server-side copy).
    pub async fn push(&mut self, make: impl FnOnce(u32) -> PartFuture) -> Result<()> {
        self.make_room(0).await?;
        let part = make(self.next_number);
        self.spawn(0, part);
        Ok(())
    }

    fn spawn(&mut self, length: u64, part: PartFuture) {
        self.next_number += 1;
        self.bytes += length;
        self.in_flight.spawn(async move { (length, part.await) });
    }

    async fn make_room(&mut self, length: u64) -> Result<()> {
        while !self.in_flight.is_empty()
            && (self.in_flight.len() >= self.concurrency
                || self.budget.is_some_and(|b| self.bytes + length > b))
        {
            self.collect_one().await?;
        }
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<()> {
        let Some(done) = self.in_flight.join_next().await else {
            return Ok(());
        };
        let (length, sent) = done.map_err(|e| Error::provider(format!("part upload task: {e}")))?;
        self.bytes -= length;
        self.sent.push(sent?);
        Ok(())
    }

    /// Waits for every part in flight; the first failure.
    pub async fn settle(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Waits for every part, then completes the upload; aborts it on any
    /// failure.
    pub async fn complete(mut self) -> Result<()> {
        let completed = async {
            self.settle().await?;
            let mut sent = std::mem::take(&mut self.sent);
            sent.sort_by_key(|part| part.number);
            self.sink.complete(sent).await
        }
        .await;
        match completed {
            Ok(()) => self.finished = true,
            Err(_) => self.abort().await,
        }
        completed
    }

    /// Stops the parts in flight and aborts the upload: nothing is left
    /// behind.
    pub async fn abort(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.sink.abort().await;
        self.finished = true;
    }
}

impl Drop for ParallelParts {
    /// A commit cancelled half-way (its future dropped) leaves no parts
    /// stored: the upload is aborted in the background.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.in_flight.abort_all();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut sink = std::mem::replace(&mut self.sink, Box::new(Finished));
            runtime.spawn(async move { sink.abort().await });
        }
    }
}

/// What a dropped upload leaves in place of its sink.
struct Finished;

#[async_trait]
impl PartSink for Finished {
    async fn part(&mut self, _: &Spooled, _: u32, _: Range<u64>) -> Result<PartFuture> {
        Err(Error::provider("the upload is finished"))
    }
    async fn complete(&mut self, _: Vec<SentPart>) -> Result<()> {
        Err(Error::provider("the upload is finished"))
    }
    async fn abort(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    struct Log {
        active: usize,
        most_active: usize,
        completed: Vec<SentPart>,
        aborted: bool,
    }

    struct Sink {
        log: Arc<Mutex<Log>>,
        buffers: bool,
        fail: Option<u32>,
    }

    #[async_trait]
    impl PartSink for Sink {
        async fn part(&mut self, _: &Spooled, number: u32, _: Range<u64>) -> Result<PartFuture> {
            let (log, fail) = (self.log.clone(), self.fail);
            Ok(Box::pin(async move {
                {
                    let mut log = log.lock().unwrap();
                    log.active += 1;
                    log.most_active = log.most_active.max(log.active);
                }
                // Later parts finish first.
                tokio::time::sleep(Duration::from_millis(40 - u64::from(number % 4) * 10)).await;
                log.lock().unwrap().active -= 1;
                if fail == Some(number) {
                    return Err(Error::provider("part refused"));
                }
                Ok(SentPart {
                    number,
                    etag: Some(format!("e{number}")),
                })
            }))
        }
        fn buffers_parts(&self) -> bool {
            self.buffers
        }
        async fn complete(&mut self, parts: Vec<SentPart>) -> Result<()> {
            self.log.lock().unwrap().completed = parts;
            Ok(())
        }
        async fn abort(&mut self) {
            self.log.lock().unwrap().aborted = true;
        }
    }

    fn spool() -> Spooled {
        let file = tempfile::tempfile().unwrap();
        Spooled {
            file: Arc::new(file),
            log: Arc::default(),
        }
    }

    async fn run(buffers: bool, fail: Option<u32>, length: u64) -> (Result<()>, Log) {
        let log = Arc::new(Mutex::new(Log::default()));
        let sink = Sink {
            log: log.clone(),
            buffers,
            fail,
        };
        let mut parts = ParallelParts::new(Box::new(sink), 4, 10);
        let spool = spool();
        let mut outcome = Ok(());
        for index in 0..12 {
            if let Err(e) = parts
                .send(&spool, index * length..(index + 1) * length)
                .await
            {
                outcome = Err(e);
                break;
            }
        }
        let outcome = match outcome {
            Ok(()) => parts.complete().await,
            Err(e) => {
                parts.abort().await;
                Err(e)
            }
        };
        let log = std::mem::take(&mut *log.lock().unwrap());
        (outcome, log)
    }

    #[tokio::test]
    async fn parts_go_in_parallel_and_complete_in_order() {
        let (outcome, log) = run(false, None, 10).await;
        outcome.expect("completed");
        assert_eq!(log.most_active, 4);
        let numbers: Vec<u32> = log.completed.iter().map(|p| p.number).collect();
        assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
        assert_eq!(log.completed[4].etag.as_deref(), Some("e5"));
    }

    #[tokio::test]
    async fn buffered_parts_stay_within_their_bytes() {
        // Parts of twice the size: two in flight fill the budget of 4 x 10.
        let (outcome, log) = run(true, None, 20).await;
        outcome.expect("completed");
        assert_eq!(log.most_active, 2);
        // A part larger than the whole budget still goes, alone.
        let (outcome, log) = run(true, None, 100).await;
        outcome.expect("completed");
        assert_eq!(log.most_active, 1);
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload() {
        let (outcome, log) = run(false, Some(3), 10).await;
        assert!(outcome.is_err());
        assert!(log.aborted);
        assert!(log.completed.is_empty());
    }

    #[tokio::test]
    async fn an_upload_dropped_half_way_is_aborted_and_a_finished_one_is_not() {
        let log = Arc::new(Mutex::new(Log::default()));
        let sink = |log: &Arc<Mutex<Log>>| {
            Box::new(Sink {
                log: log.clone(),
                buffers: false,
                fail: None,
            })
        };
        let mut parts = ParallelParts::new(sink(&log), 4, 10);
        parts.send(&spool(), 0..10).await.expect("sent");
        drop(parts);
        for _ in 0..100 {
            if log.lock().unwrap().aborted {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(log.lock().unwrap().aborted, "a dropped upload is aborted");

        let log = Arc::new(Mutex::new(Log::default()));
        let mut parts = ParallelParts::new(sink(&log), 4, 10);
        parts.send(&spool(), 0..10).await.expect("sent");
        parts.complete().await.expect("completed");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let log = log.lock().unwrap();
        assert_eq!(log.completed.len(), 1);
        assert!(!log.aborted, "a completed upload is left alone");
    }
}
