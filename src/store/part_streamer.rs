//! Sending an archive's full parts while it is still being written. The
//! archive is written to a spool file: a task watches the file grow and sends each full
//! part as one part of a multipart upload, one part in memory at a time.
//! At commit, every sent part is checked against the spool (a CRC-32 each:
//! a writer may seek back and rewrite), the rest is sent and the upload
//! completed. A mismatch or a failure aborts the multipart upload and the
//! store uploads from the spool instead; nothing is visible at the key
//! before completion.

use super::ObjectInfo;
use super::blocking;
use super::spool::{Committer, SpoolFile, read_full_at};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

const POLL: Duration = Duration::from_millis(50);

/// One multipart upload in progress.
#[async_trait]
pub trait PartSink: Send {
    /// Sends the next part; parts are numbered in the order they are sent.
    async fn send(&mut self, part: Bytes) -> Result<()>;
    /// Sends `length` bytes of the spool at `offset` as the next part, read
    /// from the open spool (the file that was checked, never reopened by
    /// name) into memory: one part at a time, and a retry resends the same
    /// bytes.
    async fn send_from(&mut self, spool: &Spooled, offset: u64, length: u64) -> Result<()> {
        let part = read_part(&spool.file, offset, length).await?;
        self.send(part).await
    }
    async fn complete(&mut self) -> Result<()>;
    async fn abort(&mut self);
}

/// Starts multipart uploads to one object.
#[async_trait]
pub trait PartSinks: Send + Sync {
    async fn start(&self) -> Result<Box<dyn PartSink>>;
}

/// The spool file being sent, as the descriptor that was checked.
#[derive(Clone)]
pub struct Spooled {
    pub file: Arc<File>,
}

/// Sends `spool[offset..size]` in parts of `part_size` through `sink`,
/// completes it, and aborts it on any failure.
pub async fn send_rest(
    mut sink: Box<dyn PartSink>,
    spool: &Spooled,
    mut offset: u64,
    size: u64,
    part_size: u64,
) -> Result<()> {
    let sent = async {
        while offset < size {
            let length = part_size.min(size - offset);
            sink.send_from(spool, offset, length).await?;
            offset += length;
        }
        sink.complete().await
    }
    .await;
    if sent.is_err() {
        sink.abort().await;
    }
    sent
}

async fn read_part(file: &Arc<File>, offset: u64, length: u64) -> Result<Bytes> {
    let file = file.clone();
    let bytes = blocking(move || read_full_at(&file, offset, length)).await?;
    if bytes.len() as u64 != length {
        return Err(Error::provider("the upload spool ended early"));
    }
    Ok(Bytes::from(bytes))
}

#[derive(Default)]
struct Sent {
    sink: Option<Box<dyn PartSink>>,
    fingerprints: Vec<u32>,
    /// Bytes covered by the parts sent.
    bytes: u64,
}

pub struct PartStreamer {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<(Sent, Result<()>)>>,
    spool: Spooled,
    part_size: u64,
}

impl PartStreamer {
    pub fn start(sinks: Arc<dyn PartSinks>, spool: Spooled, part_size: u64) -> PartStreamer {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(Self::run(
            sinks,
            spool.file.clone(),
            part_size,
            stop.clone(),
        ));
        PartStreamer {
            stop,
            task: Some(task),
            spool,
            part_size,
        }
    }

    async fn run(
        sinks: Arc<dyn PartSinks>,
        file: Arc<File>,
        part_size: u64,
        stop: Arc<AtomicBool>,
    ) -> (Sent, Result<()>) {
        let mut sent = Sent::default();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            while !stop.load(Ordering::Acquire) && size >= sent.bytes + part_size {
                let step = async {
                    if sent.sink.is_none() {
                        sent.sink = Some(sinks.start().await?);
                    }
                    let part = read_part(&file, sent.bytes, part_size).await?;
                    let fingerprint = crc32fast::hash(&part);
                    if let Some(sink) = sent.sink.as_mut() {
                        sink.send(part).await?;
                    }
                    sent.fingerprints.push(fingerprint);
                    sent.bytes += part_size;
                    Ok::<(), Error>(())
                };
                if let Err(e) = step.await {
                    return (sent, Err(e));
                }
            }
            if stopping {
                return (sent, Ok(()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn finish(&mut self) -> (Sent, Result<()>) {
        self.stop.store(true, Ordering::Release);
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| {
                (
                    Sent::default(),
                    Err(Error::provider(format!("part upload task: {e}"))),
                )
            }),
            None => (Sent::default(), Ok(())),
        }
    }

    async fn still_matches(&self, fingerprints: &[u32], bytes: u64, size: u64) -> Result<bool> {
        if bytes > size {
            return Ok(false);
        }
        for (index, fingerprint) in fingerprints.iter().enumerate() {
            let part = read_part(
                &self.spool.file,
                index as u64 * self.part_size,
                self.part_size,
            )
            .await?;
            if crc32fast::hash(&part) != *fingerprint {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Completes the streamed upload with the rest of the spool (`size`
    /// bytes in all). `Ok(false)`: nothing usable was streamed (too small,
    /// rewritten, failed): the caller uploads from the spool.
    pub async fn complete(mut self, size: u64) -> Result<bool> {
        let (mut sent, outcome) = self.finish().await;
        let Some(mut sink) = sent.sink.take() else {
            return Ok(false);
        };
        if outcome.is_err()
            || !self
                .still_matches(&sent.fingerprints, sent.bytes, size)
                .await?
        {
            sink.abort().await;
            return Ok(false);
        }
        send_rest(sink, &self.spool, sent.bytes, size, self.part_size).await?;
        Ok(true)
    }

    pub async fn abort(mut self) {
        let (mut sent, _) = self.finish().await;
        if let Some(mut sink) = sent.sink.take() {
            sink.abort().await;
        }
    }
}

impl Drop for PartStreamer {
    /// An upload dropped without commit or abort leaves no parts behind.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let (Some(task), Ok(runtime)) = (self.task.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                if let Ok((mut sent, _)) = task.await
                    && let Some(mut sink) = sent.sink.take()
                {
                    sink.abort().await;
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
    fn part_size(&self) -> u64;
    /// Multipart uploads to `key`.
    fn sinks(&self, key: &str) -> Arc<dyn PartSinks>;
    /// Stores a small object in one request.
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
}

/// Commits a spool to an object store: the upload streamed while writing
/// if it is still good, else one PUT when small, else a multipart upload.
pub struct StreamingCommit<T> {
    target: T,
    /// Parts sent while writing, and the key they go to.
    streamer: Option<(PartStreamer, String)>,
}

impl<T: PartTarget> StreamingCommit<T> {
    /// An archive keeps its name, so its full parts go up while it is
    /// being written; a staging file waits for its rename.
    pub fn begin(target: T, spool: &SpoolFile, name: &str) -> Self {
        let streamer = crate::upload::is_archive_name(name).then(|| {
            let key = target.key(name);
            let streamer =
                PartStreamer::start(target.sinks(&key), spool.spooled(), target.part_size());
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
        let part_size = self.target.part_size();
        if !streamed && size <= part_size {
            // The whole size: a part may be larger than a u32 (5 GiB).
            let bytes = spool.read_at(0, size).await?;
            self.target.put(&key, bytes).await?;
        } else if !streamed {
            let sink = self.target.sinks(&key).start().await?;
            send_rest(sink, &spool.spooled(), 0, size, part_size).await?;
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
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// Records what reaches the "server".
    #[derive(Default)]
    struct Log {
        parts: Vec<Bytes>,
        completed: bool,
        aborted: usize,
    }

    struct Sinks(Arc<Mutex<Log>>);
    struct Sink(Arc<Mutex<Log>>);

    #[async_trait]
    impl PartSinks for Sinks {
        async fn start(&self) -> Result<Box<dyn PartSink>> {
            self.0.lock().unwrap().parts.clear();
            Ok(Box::new(Sink(self.0.clone())))
        }
    }

    #[async_trait]
    impl PartSink for Sink {
        async fn send(&mut self, part: Bytes) -> Result<()> {
            self.0.lock().unwrap().parts.push(part);
            Ok(())
        }
        async fn complete(&mut self) -> Result<()> {
            self.0.lock().unwrap().completed = true;
            Ok(())
        }
        async fn abort(&mut self) {
            self.0.lock().unwrap().aborted += 1;
        }
    }

    fn joined(log: &Log) -> Vec<u8> {
        log.parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[tokio::test]
    async fn parts_go_while_written_and_a_rewrite_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut writer = File::create(&path).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let log = Arc::new(Mutex::new(Log::default()));
        let spooled = Spooled { file: file.clone() };
        let streamer = PartStreamer::start(Arc::new(Sinks(log.clone())), spooled.clone(), 4);
        writer.write_all(b"abcdefghij").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while log.lock().unwrap().parts.len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "full parts were not sent while writing"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(streamer.complete(10).await.unwrap());
        assert_eq!(joined(&log.lock().unwrap()), b"abcdefghij");
        assert!(log.lock().unwrap().completed);

        // A write back into a sent part: the streamed upload is dropped.
        let log = Arc::new(Mutex::new(Log::default()));
        let streamer = PartStreamer::start(Arc::new(Sinks(log.clone())), spooled, 4);
        while log.lock().unwrap().parts.len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::os::unix::fs::FileExt::write_at(&writer, b"X", 1).unwrap();
        assert!(!streamer.complete(10).await.unwrap());
        assert_eq!(log.lock().unwrap().aborted, 1);
    }
}
