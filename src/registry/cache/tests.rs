//! The cache's rules, driven with providers that fail, wait and count.
use super::*;
use crate::secret::Secret;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A provider with injected faults: hands out credentials that live
/// `life`, numbered by call, after `delay`; fails while `failing` is set.
struct Faulty {
    calls: AtomicUsize,
    forced_calls: AtomicUsize,
    life: Duration,
    failing: AtomicBool,
    delay: Duration,
}

#[async_trait]
impl RegistryProvider for Faulty {
    async fn fetch(&self, refresh: bool) -> Result<Credential> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if refresh {
            self.forced_calls.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::provider(format!("call {n} failed")));
        }
        Ok(Credential {
            registry: "r".into(),
            username: Secret::from("u".to_string()),
            password: Secret::from(format!("p{n}")),
            token: Secret::from(format!("p{n}")),
            expires_at: Some(SystemTime::now() + self.life),
        })
    }
}

impl Faulty {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

fn faulty(life: Duration, delay: Duration) -> Arc<Faulty> {
    Arc::new(Faulty {
        calls: AtomicUsize::new(0),
        forced_calls: AtomicUsize::new(0),
        life,
        failing: Default::default(),
        delay,
    })
}

fn cache_of(provider: &Arc<Faulty>) -> Arc<CachedRegistry> {
    Arc::new(CachedRegistry::new(provider.clone()))
}

fn retry_of(cache: &CachedRegistry) -> Retry {
    match cache.status() {
        EntryStatus::Error {
            retry: Some(retry), ..
        } => retry,
        other => panic!("no retry time in {other:?}"),
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn refresh_comes_near_half_life() {
    let now = SystemTime::UNIX_EPOCH;
    let at = now + Duration::from_secs(100);
    let again = Refresh::AfterRefresh;
    assert_eq!(refresh_delay(now, at, again, 0.0), Duration::from_secs(50));
    assert_eq!(refresh_delay(now, at, again, 1.0), Duration::from_secs(60));
    assert_eq!(refresh_delay(now, at, again, -1.0), Duration::from_secs(40));
    // The first refresh of a fleet started together spreads over the whole
    // first half of the life.
    let cold = Refresh::AfterColdFetch;
    assert_eq!(refresh_delay(now, at, cold, -1.0), Duration::from_secs(5));
    assert_eq!(
        refresh_delay(now, at, cold, 0.0),
        Duration::from_millis(27_500)
    );
    assert_eq!(refresh_delay(now, at, cold, 1.0), Duration::from_secs(50));
    for _ in 0..100 {
        let j = jitter_unit();
        assert!((-1.0..=1.0).contains(&j));
    }
}

#[test]
fn a_retry_comes_before_a_still_valid_credential_expires() {
    let hour = Some(Duration::from_secs(3600));
    assert_eq!(rest(1, None, 0.0), Duration::from_secs(1));
    assert_eq!(rest(4, None, 0.0), Duration::from_secs(8));
    assert_eq!(rest(30, None, 0.0), backoff::CAP);
    assert_eq!(rest(4, hour, 0.0), Duration::from_secs(8));
    assert_eq!(rest(30, hour, 0.0), Duration::from_secs(300));
    assert_eq!(
        rest(30, Some(Duration::from_secs(40)), 0.0),
        Duration::from_secs(10)
    );
    assert_eq!(rest(30, Some(Duration::from_millis(100)), 0.0), MIN_RETRY);
}

#[tokio::test]
async fn concurrent_first_readers_share_one_call() {
    let provider = faulty(Duration::from_secs(3600), Duration::from_millis(50));
    let cache = cache_of(&provider);
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await.map(|c| c.password.clone()) })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap().expose(), b"p1");
    }
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_queued_behind_a_failing_call_share_its_failure() {
    let provider = faulty(Duration::from_secs(3600), Duration::from_millis(200));
    provider.fail(true);
    let cache = cache_of(&provider);
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await.map(|_| ()) })
        })
        .collect();
    for reader in readers {
        let error = reader.await.unwrap().unwrap_err();
        assert_eq!(error.errno(), libc::EIO);
        assert!(error.message().contains("call 1 failed"), "{error}");
    }
    assert_eq!(provider.calls(), 1, "one call for every reader");
}

#[tokio::test]
async fn after_a_failure_reads_fail_fast_until_the_retry_time_which_doubles() {
    let provider = faulty(Duration::from_secs(3600), Duration::ZERO);
    provider.fail(true);
    let cache = cache_of(&provider);
    assert_eq!(cache.get().await.unwrap_err().errno(), libc::EIO);
    let first = retry_of(&cache);
    assert_eq!(first.failures, 1);
    let rest = first.at.duration_since(SystemTime::now()).unwrap();
    assert!(rest <= backoff::FIRST, "{rest:?}");
    assert!(cache.resting());

    for _ in 0..100 {
        let started = Instant::now();
        let error = cache.get().await.unwrap_err();
        assert_eq!(error.errno(), libc::EIO);
        assert!(error.message().contains("next attempt at"), "{error}");
        assert!(started.elapsed() < Duration::from_millis(50), "fast");
    }
    assert_eq!(provider.calls(), 1, "no call while resting");

    wait_until("the retry time", || !cache.resting()).await;
    assert_eq!(cache.get().await.unwrap_err().errno(), libc::EIO);
    assert_eq!(provider.calls(), 2, "one more call once the rest is over");
    let second = retry_of(&cache);
    assert_eq!(second.failures, 2);
    let rest = second.at.duration_since(SystemTime::now()).unwrap();
    assert!(
        rest > backoff::FIRST.mul_f64(2.0 * (1.0 - backoff::JITTER) - 0.1)
            && rest <= backoff::FIRST * 2,
        "the second rest doubles: {rest:?}"
    );

    provider.fail(false);
    assert!(
        cache.get().await.is_err(),
        "a fixed provider waits its turn"
    );
    assert_eq!(provider.calls(), 2);
}

#[tokio::test]
async fn a_forced_refresh_skips_the_rest_and_clears_the_failure() {
    let provider = faulty(Duration::from_secs(3600), Duration::ZERO);
    provider.fail(true);
    let cache = cache_of(&provider);
    assert!(cache.get().await.is_err());
    provider.fail(false);
    assert!(cache.get().await.is_err());
    assert_eq!(provider.calls(), 1);

    assert_eq!(cache.refresh().await.unwrap().password.expose(), b"p2");
    assert_eq!(provider.forced_calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get().await.unwrap().password.expose(), b"p2");
    assert!(matches!(cache.status(), EntryStatus::Ok { .. }));
    assert!(!cache.resting());

    // The count starts again: the next failure rests one second.
    provider.fail(true);
    assert!(cache.refresh().await.is_err());
    assert_eq!(retry_of(&cache).failures, 1);
}

#[tokio::test]
async fn a_reader_that_stops_waiting_leaves_the_call_running() {
    let provider = faulty(Duration::from_secs(3600), Duration::from_millis(400));
    let cache = cache_of(&provider);
    let wait = Duration::from_millis(100);
    let error = cache.get_within(wait).await.unwrap_err();
    assert_eq!(error.errno(), libc::EIO);
    assert!(error.message().contains("within 100ms"), "{error}");

    // That call already kept someone waiting its full allowance.
    let started = Instant::now();
    assert!(cache.get_within(wait).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(50));

    assert_eq!(cache.get().await.unwrap().password.expose(), b"p1");
    assert_eq!(provider.calls(), 1, "the call went on and was shared");
    assert_eq!(
        cache.get_within(wait).await.unwrap().password.expose(),
        b"p1"
    );
}

#[tokio::test]
async fn a_forced_refresh_does_not_take_an_unforced_calls_answer() {
    let provider = faulty(Duration::from_secs(3600), Duration::from_millis(100));
    let cache = cache_of(&provider);
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get().await.map(|c| c.password.clone()) })
    };
    wait_until("the reader's call", || provider.calls() == 1).await;
    let refreshed = cache.refresh().await.unwrap();
    assert_eq!(reader.await.unwrap().unwrap().expose(), b"p1");
    assert_eq!(refreshed.password.expose(), b"p2");
    assert_eq!(provider.forced_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refreshes_before_expiry_and_keeps_serving_through_failures() {
    let provider = faulty(Duration::from_millis(600), Duration::ZERO);
    let cache = cache_of(&provider);
    assert_eq!(cache.get().await.unwrap().password.expose(), b"p1");
    let refreshed = || cache.cached().is_some_and(|c| c.password.expose() == b"p2");
    wait_until("a background refresh", refreshed).await;
    assert_eq!(provider.calls(), 2, "refreshed before any reader needed it");
    provider.fail(true);
    let err = cache.refresh().await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        cache.get().await.unwrap().password.expose(),
        b"p2",
        "still valid, still served"
    );
    let retry = retry_of(&cache);
    assert!(
        retry.at <= SystemTime::now() + MIN_RETRY,
        "retried while the credential still serves"
    );
    // Once it expires with every refresh failing, reads fail.
    wait_until("the expiry", || cache.cached().is_none()).await;
    assert_eq!(cache.get().await.unwrap_err().errno(), libc::EIO);
}

#[tokio::test]
async fn an_expired_answer_is_a_failure() {
    let provider = faulty(Duration::ZERO, Duration::ZERO);
    let cache = cache_of(&provider);
    let error = cache.get().await.unwrap_err();
    assert!(error.message().contains("already expired"), "{error}");
    assert!(cache.resting());
    assert!(cache.cached().is_none());
}

struct Panicking;

#[async_trait]
impl RegistryProvider for Panicking {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        panic!("a provider bug");
    }
}

#[tokio::test]
async fn a_panicking_provider_is_a_failure_that_rests() {
    let cache = Arc::new(CachedRegistry::new(Arc::new(Panicking)));
    let error = cache.get().await.unwrap_err();
    assert_eq!(error.errno(), libc::EIO);
    assert!(error.message().contains("panicked"), "{error}");
    assert!(cache.resting(), "the failure was recorded");
    assert!(cache.refresh().await.is_err(), "and a new call can start");
    assert_eq!(retry_of(&cache).failures, 2);
}

#[test]
fn status_json_shows_the_error_and_the_retry_time() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
    let status = EntryStatus::failing("helper failed", Retry { at, failures: 3 });
    let json = status.to_json();
    assert_eq!(json["state"], "error");
    assert_eq!(json["reason"], "helper failed");
    assert_eq!(json["retry_at"], "2023-11-14T22:13:20.250Z");
    assert_eq!(json["failures"], 3);
    assert!(EntryStatus::error("x").to_json().get("retry_at").is_none());
}
