use super::*;
use crate::error::ErrorKind;
use crate::faults::Faults;
use crate::store::MemoryStore;
use crate::store::faulty::{FaultyRanges, StoreOp};
use crate::store::memory::MemoryRanges;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Small numbers, so that windows fill with little data.
const TUNING: ReadTuning = ReadTuning {
    first: 16 << 10,
    part_size: 64 << 10,
    concurrency: 4,
    keep_behind: 32 << 10,
};

/// Byte `i` of test object `seed`.
fn byte(seed: u64, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8
}

fn object(seed: u64, size: u64) -> Vec<u8> {
    (0..size).map(|i| byte(seed, i)).collect()
}

fn store_with(size: u64) -> MemoryStore {
    let store = MemoryStore::new(["b"]);
    store.insert("b", "o.zip", object(1, size)).expect("insert");
    store
}

fn reader(store: &MemoryStore, tuning: ReadTuning) -> (Prefetcher<MemoryRanges>, Arc<RangeLog>) {
    let (ranges, info) = store.ranges("b", "o.zip").expect("ranges");
    let log = ranges.log.clone();
    (Prefetcher::new(ranges, info, tuning), log)
}

use crate::store::memory::RangeLog;

/// One range, as a list.
fn only(range: Range<u64>) -> Vec<Range<u64>> {
    vec![range]
}

/// A small pseudo-random sequence (no dependency for it).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[tokio::test]
async fn a_small_object_is_one_request_made_at_open() {
    let store = store_with(15 << 10);
    let (reader, log) = reader(&store, TUNING);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(log.requests(), only(0..15 << 10), "asked for at open");
    let mut got = Vec::new();
    for offset in (0..16 << 10).step_by(4 << 10) {
        got.extend(reader.read_at(offset, 4 << 10).await.expect("read"));
    }
    assert_eq!(got, object(1, 15 << 10));
    assert_eq!(log.requests().len(), 1);
    assert!(reader.read_at(15 << 10, 10).await.expect("eof").is_empty());
}

#[tokio::test]
async fn sequential_reads_grow_the_window_to_its_limit_and_no_further() {
    let size = 2 << 20;
    let store = store_with(size);
    let (mut ranges, info) = store.ranges("b", "o.zip").expect("ranges");
    ranges.latency = Duration::from_millis(2);
    let log = ranges.log.clone();
    let reader = Prefetcher::new(ranges, info, TUNING);
    let chunk = 8 << 10;
    for offset in (0..size).step_by(chunk as usize) {
        let got = reader.read_at(offset, chunk as u32).await.expect("read");
        assert_eq!(
            got,
            object(1, size)[offset as usize..(offset + chunk) as usize]
        );
        let requested_to = log.requests().iter().map(|r| r.end).max().unwrap_or(0);
        // Bounded memory: at most `concurrency` ranges ahead of the reader.
        assert!(
            requested_to <= offset + (TUNING.concurrency as u64) * TUNING.part_size,
            "{requested_to} requested at {offset}"
        );
    }
    let lengths: Vec<u64> = log.requests().iter().map(|r| r.end - r.start).collect();
    assert_eq!(&lengths[..4], [16 << 10, 32 << 10, 64 << 10, 64 << 10]);
    let (last, full) = lengths[3..].split_last().expect("more ranges");
    assert!(full.iter().all(|l| *l == 64 << 10), "{lengths:?}");
    assert!(*last <= 64 << 10);
    let covered: u64 = lengths.iter().sum();
    assert_eq!(covered, size, "every byte fetched once");
    assert_eq!(
        log.most_active.load(Ordering::SeqCst),
        TUNING.concurrency as u64,
        "the window reached its limit, in flight at once"
    );
}

#[tokio::test]
async fn out_of_order_reads_nearby_need_no_new_request() {
    let size = 512 << 10;
    let store = store_with(size);
    let (reader, log) = reader(&store, TUNING);
    let chunk = 4u64 << 10;
    let mut offsets: Vec<u64> = (0..size).step_by(chunk as usize).collect();
    for pair in offsets.chunks_mut(3) {
        pair.reverse();
    }
    for offset in offsets {
        let got = reader.read_at(offset, chunk as u32).await.expect("read");
        assert_eq!(
            got,
            object(1, size)[offset as usize..(offset + chunk) as usize]
        );
    }
    let fetched: u64 = log.requests().iter().map(|r| r.end - r.start).sum();
    assert_eq!(fetched, size, "no byte fetched twice");
}

#[tokio::test]
async fn random_and_backward_reads_start_over_with_one_small_range() {
    let size = 1 << 20;
    let store = store_with(size);
    let (reader, log) = reader(&store, TUNING);
    for offset in (0..256 << 10).step_by(8 << 10) {
        reader.read_at(offset, 8 << 10).await.expect("read");
    }
    let before = log.requests().len();
    let got = reader.read_at(900 << 10, 100).await.expect("jump");
    assert_eq!(got, object(1, size)[900 << 10..(900 << 10) + 100]);
    assert_eq!(
        log.requests()[before..],
        only(900 << 10..(900 << 10) + TUNING.first)
    );
    let before = log.requests().len();
    let got = reader.read_at(10, 100).await.expect("back");
    assert_eq!(got, object(1, size)[10..110]);
    assert_eq!(log.requests()[before..], only(10..10 + TUNING.first));
}

#[tokio::test]
async fn random_reads_from_concurrent_tasks_compare_equal() {
    let size = 3 << 20;
    let store = store_with(size);
    let (reader, _) = reader(&store, TUNING);
    let reader = Arc::new(reader);
    let expected = Arc::new(object(1, size));
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 1..=4 {
        let (reader, expected) = (reader.clone(), expected.clone());
        tasks.spawn(async move {
            let mut random = Lcg(seed);
            for _ in 0..300 {
                let offset = random.below(size + 1000);
                let len = random.below(200 << 10) as u32;
                let got = reader.read_at(offset, len).await.expect("read");
                let start = (offset as usize).min(expected.len());
                let end = (start + len as usize).min(expected.len());
                assert_eq!(got, expected[start..end], "{len} at {offset}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("reader task");
    }
}

#[tokio::test]
async fn a_replaced_object_gives_an_error_or_the_old_bytes_never_a_mix() {
    let size = 1 << 20;
    let store = store_with(size);
    let (reader, _) = reader(&store, TUNING);
    let old = object(1, size);
    reader.read_at(0, 100 << 10).await.expect("read");
    store
        .insert("b", "o.zip", object(2, size))
        .expect("replace");
    let mut failed = 0;
    for offset in (100 << 10..size).step_by(16 << 10) {
        match reader.read_at(offset, 16 << 10).await {
            Ok(got) => assert_eq!(got, old[offset as usize..offset as usize + got.len()]),
            Err(e) => {
                assert!(e.message().contains("replaced"), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the new version's ranges were refused");
    let got = reader.read_at(50, 100).await;
    assert!(got.is_err() || got.as_deref().ok() == Some(&old[50..150]));
}

/// Reads the whole object in 8 KiB reads through a reader whose GETs
/// numbered `failing` fail; the number of reads that failed.
async fn read_through_failures(failing: std::ops::RangeInclusive<u64>) -> usize {
    let size = 1 << 20;
    let store = store_with(size);
    let (ranges, info) = store.ranges("b", "o.zip").expect("ranges");
    let faults = Faults::new();
    faults.fail(
        StoreOp::GetRange,
        failing,
        Error::provider("connection reset"),
    );
    let reader = Prefetcher::new(
        FaultyRanges {
            inner: ranges,
            faults: faults.clone(),
        },
        info,
        TUNING,
    );
    let expected = object(1, size);
    let mut failures = 0;
    let mut offset = 0;
    while offset < size {
        match reader.read_at(offset, 8 << 10).await {
            Ok(got) => {
                assert_eq!(got, expected[offset as usize..offset as usize + got.len()]);
                offset += got.len() as u64;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Provider);
                failures += 1;
                assert!(failures < 100, "reads keep failing");
            }
        }
    }
    failures
}

#[tokio::test]
async fn a_range_that_failed_ahead_of_the_reader_is_asked_again_unseen() {
    assert_eq!(read_through_failures(3..=3).await, 0);
}

#[tokio::test]
async fn a_range_that_fails_twice_fails_its_read_and_the_next_read_asks_again() {
    let failures = read_through_failures(3..=30).await;
    assert!((1..30).contains(&failures), "{failures}");
}

#[tokio::test]
async fn a_first_range_from_open_is_used_as_is() {
    let size = 100 << 10;
    let store = store_with(size);
    let (ranges, info) = store.ranges("b", "o.zip").expect("ranges");
    let log = ranges.log.clone();
    let body = ranges.get_range(0..TUNING.first).await.expect("first");
    let reader = Prefetcher::with_first(ranges, info, TUNING, TUNING.first, body);
    let got = reader.read_at(0, size as u32).await.expect("read");
    assert_eq!(got, object(1, size));
    let lengths: Vec<u64> = log.requests().iter().map(|r| r.end - r.start).collect();
    assert_eq!(lengths, [16 << 10, 32 << 10, 52 << 10]);
}
