use super::*;
use crate::store::parts::{PartFuture, PartSink, SentPart};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Records what reaches the "server".
#[derive(Default)]
struct Log {
    parts: Vec<(u32, Vec<u8>)>,
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
    async fn part(
        &mut self,
        spool: &Spooled,
        number: u32,
        range: Range<u64>,
    ) -> Result<PartFuture> {
        let (log, file) = (self.0.clone(), spool.file.clone());
        Ok(Box::pin(async move {
            let mut bytes = vec![0; (range.end - range.start) as usize];
            file.read_exact_at(&mut bytes, range.start)
                .map_err(|e| Error::from_io("spool", &e))?;
            log.lock().unwrap().parts.push((number, bytes));
            Ok(SentPart { number, etag: None })
        }))
    }
    async fn complete(&mut self, parts: Vec<SentPart>) -> Result<()> {
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
        self.0.lock().unwrap().completed = true;
        Ok(())
    }
    async fn abort(&mut self) {
        self.0.lock().unwrap().aborted += 1;
    }
}

fn joined(log: &Log) -> Vec<u8> {
    let mut parts = log.parts.clone();
    parts.sort_by_key(|(number, _)| *number);
    parts.into_iter().flat_map(|(_, bytes)| bytes).collect()
}

/// A spool written the way `SpoolFile::write_at` writes it.
fn spool() -> Spooled {
    Spooled {
        file: Arc::new(tempfile::tempfile().unwrap()),
        log: Arc::default(),
    }
}

fn write(spool: &Spooled, offset: u64, data: &[u8]) {
    let _writing = spool.log.begin(offset);
    spool.file.write_all_at(data, offset).unwrap();
}

fn file(spool: &Spooled) -> &File {
    &spool.file
}

async fn wait_for_parts(log: &Arc<Mutex<Log>>, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.lock().unwrap().parts.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "parts were not sent while writing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn parts_go_while_written_and_the_rest_at_commit() {
    let (spool, log, streamer) = streaming();
    write(&spool, 0, b"abcdefghij");
    wait_for_parts(&log, 2).await;
    assert!(!log.lock().unwrap().completed);
    assert!(streamer.complete(10).await.unwrap());
    let log = log.lock().unwrap();
    assert_eq!(joined(&log), b"abcdefghij");
    assert_eq!(log.parts.len(), 3);
    assert!(log.completed);
    assert_eq!(file(&spool).metadata().unwrap().len(), 10);
}

#[tokio::test]
async fn a_write_into_a_part_already_sent_spoils_the_upload() {
    let (spool, log, streamer) = streaming();
    write(&spool, 0, b"abcdefghij");
    wait_for_parts(&log, 2).await;
    write(&spool, 1, b"X");
    assert!(!streamer.complete(10).await.unwrap());
    let log = log.lock().unwrap();
    assert_eq!(log.aborted, 1);
    assert!(!log.completed);
}

#[tokio::test]
async fn a_part_waits_for_a_write_still_running_below_its_end() {
    let (spool, log, streamer) = streaming();
    let slow = spool.log.begin(2);
    write(&spool, 0, b"ab\0\0efghij");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(log.lock().unwrap().parts.is_empty(), "held back");
    file(&spool).write_all_at(b"cd", 2).unwrap();
    drop(slow);
    wait_for_parts(&log, 2).await;
    assert!(streamer.complete(10).await.unwrap());
    assert_eq!(joined(&log.lock().unwrap()), b"abcdefghij");
}

/// A spool whose parts of 4 bytes stream, 2 at once, to a logging sink.
fn streaming() -> (Spooled, Arc<Mutex<Log>>, PartStreamer) {
    let spool = spool();
    let log = Arc::new(Mutex::new(Log::default()));
    let streamer = PartStreamer::start(
        Arc::new(Sinks(log.clone())),
        spool.clone(),
        PartPlan::fixed(4),
        2,
    );
    (spool, log, streamer)
}
