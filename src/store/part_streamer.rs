//! Sending an archive's parts while it is still being written. The archive
//! is written to a spool file; a task wakes at each write, and each part
//! the spool already holds (by the `PartPlan`: the part size grows for very
//! large archives) goes up as part of a multipart upload, up to the
//! target's concurrency in flight (`ParallelParts`). At commit the rest is
//! sent and the upload completed. A write into bytes already handed off
//! (`WriteLog`), a failure, or a rename to another name aborts the
//! multipart upload and the store uploads from the spool instead; nothing
//! is visible at the key before completion.

use super::ObjectInfo;
use super::part_plan::PartPlan;
use super::parts::{ParallelParts, PartSinks};
use super::spool::{Committer, SpoolFile};
use crate::error::{Error, Result};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

pub use super::spool::Spooled;

/// How often the spool's size is looked at when no write wakes the task.
const POLL: Duration = Duration::from_millis(50);

/// Sends the parts of `spool[offset..size]` from part `index` on, then
/// completes the upload; aborts it on any failure.
pub async fn send_rest(
    mut parts: ParallelParts,
    spool: &Spooled,
    plan: &PartPlan,
    (index, offset): (u64, u64),
    size: u64,
) -> Result<()> {
    for (_, range) in plan.parts_from(index, offset, size) {
        if let Err(e) = parts.send(spool, range).await {
            parts.abort().await;
            return Err(e);
        }
    }
    parts.complete().await
}

/// What the streaming task sent.
#[derive(Default)]
struct Streamed {
    parts: Option<ParallelParts>,
    /// The next part: its index in the plan and where it starts.
    next: (u64, u64),
    failed: Option<Error>,
}

pub struct PartStreamer {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<Streamed>>,
    spool: Spooled,
    plan: PartPlan,
}

impl PartStreamer {
    pub fn start(
        sinks: Arc<dyn PartSinks>,
        spool: Spooled,
        plan: PartPlan,
        concurrency: usize,
    ) -> PartStreamer {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(Self::run(
            sinks,
            spool.clone(),
            plan,
            concurrency,
            stop.clone(),
        ));
        PartStreamer {
            stop,
            task: Some(task),
            spool,
            plan,
        }
    }

    async fn run(
        sinks: Arc<dyn PartSinks>,
        spool: Spooled,
        plan: PartPlan,
        concurrency: usize,
        stop: Arc<AtomicBool>,
    ) -> Streamed {
        let mut streamed = Streamed::default();
        loop {
            let changed = spool.log.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stopping = stop.load(Ordering::Acquire);
            let size = spool.file.metadata().map(|m| m.len()).unwrap_or(0);
            loop {
                let (index, offset) = streamed.next;
                let end = offset.saturating_add(plan.len(index));
                // A spoiled upload is thrown away at commit: send no more of it.
                if stop.load(Ordering::Acquire)
                    || spool.log.spoiled()
                    || size < end
                    || !spool.log.hand_off(end)
                {
                    break;
                }
                let step = async {
                    if streamed.parts.is_none() {
                        let sink = sinks.start().await?;
                        streamed.parts = Some(ParallelParts::new(sink, concurrency, plan.len(0)));
                    }
                    if let Some(parts) = streamed.parts.as_mut() {
                        parts.send(&spool, offset..end).await?;
                    }
                    Ok::<(), Error>(())
                };
                if let Err(e) = step.await {
                    streamed.failed = Some(e);
                    return streamed;
                }
                streamed.next = (index + 1, end);
            }
            if stopping {
                return streamed;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn finish(&mut self) -> Streamed {
        self.stop.store(true, Ordering::Release);
        self.spool.log.wake();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Streamed {
                failed: Some(Error::provider(format!("part upload task: {e}"))),
                ..Streamed::default()
            }),
            None => Streamed::default(),
        }
    }

    /// Completes the streamed upload with the rest of the spool (`size`
    /// bytes in all). `Ok(false)`: nothing usable was streamed (too small,
    /// written into after it went, failed): the caller uploads from the
    /// spool.
    pub async fn complete(mut self, size: u64) -> Result<bool> {
        let streamed = self.finish().await;
        let Some(mut parts) = streamed.parts else {
            return Ok(false);
        };
        // A part that failed while the archive was written, noticed now or
        // earlier, sends the caller to the spool alike.
        let usable = streamed.failed.is_none()
            && !self.spool.log.spoiled()
            && streamed.next.1 <= size
            && parts.settle().await.is_ok();
        if !usable {
            parts.abort().await;
            return Ok(false);
        }
        send_rest(parts, &self.spool, &self.plan, streamed.next, size).await?;
        Ok(true)
    }

    pub async fn abort(mut self) {
        if let Some(parts) = self.finish().await.parts {
            parts.abort().await;
        }
    }
}

impl Drop for PartStreamer {
    /// An upload dropped without commit or abort leaves no parts behind.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.spool.log.wake();
        if let (Some(task), Ok(runtime)) = (self.task.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                if let Ok(Streamed {
                    parts: Some(parts), ..
                }) = task.await
                {
                    parts.abort().await;
                }
            });
        }
    }
}

/// A bucket or container that takes multipart uploads.
#[async_trait]
pub trait PartTarget: Send + Sync {
    /// The object key of archive `name`.
    fn key(&self, name: &str) -> String;
    fn plan(&self) -> PartPlan;
    /// Parts of one upload in flight at once.
    fn concurrency(&self) -> usize;
    /// Multipart uploads to `key`.
    fn sinks(&self, key: &str) -> Arc<dyn PartSinks>;
    /// Stores a small object, the first `size` bytes of the spool, in one
    /// request.
    async fn put(&self, key: &str, spool: &Spooled, size: u64) -> Result<()>;
}

/// Commits a spool to an object store: the upload streamed while writing
/// if it is still good, else one PUT when small, else a multipart upload.
pub struct StreamingCommit<T> {
    target: T,
    /// Parts sent while writing, and the key they go to.
    streamer: Option<(PartStreamer, String)>,
}

impl<T: PartTarget> StreamingCommit<T> {
    /// An archive keeps its name, so its parts go up while it is being
    /// written; a staging file waits for its rename.
    pub fn begin(target: T, spool: &SpoolFile, name: &str) -> Self {
        let streamer = crate::upload::is_archive_name(name).then(|| {
            let key = target.key(name);
            let streamer = PartStreamer::start(
                target.sinks(&key),
                spool.spooled(),
                target.plan(),
                target.concurrency(),
            );
            (streamer, key)
        });
        StreamingCommit { target, streamer }
    }
}

#[async_trait]
impl<T: PartTarget> Committer for StreamingCommit<T> {
    async fn commit(&mut self, spool: SpoolFile, name: &str) -> Result<ObjectInfo> {
        let key = self.target.key(name);
        let size = spool.size();
        let streamed = match self.streamer.take() {
            Some((streamer, streamed_key)) if streamed_key == key => {
                streamer.complete(size).await?
            }
            Some((streamer, _)) => {
                streamer.abort().await;
                false
            }
            None => false,
        };
        let plan = self.target.plan();
        if !streamed && !plan.is_multipart(size) {
            self.target.put(&key, &spool.spooled(), size).await?;
        } else if !streamed {
            let sink = self.target.sinks(&key).start().await?;
            let parts = ParallelParts::new(sink, self.target.concurrency(), plan.len(0));
            send_rest(parts, &spool.spooled(), &plan, (0, 0), size).await?;
        }
        spool.remove().await;
        Ok(ObjectInfo {
            size,
            modified: std::time::SystemTime::now(),
            version: 0,
        })
    }

    async fn abort(&mut self) {
        if let Some((streamer, _)) = self.streamer.take() {
            streamer.abort().await;
        }
    }
}

#[cfg(test)]
mod tests;
