//! One registry's cached credential, shared by all providers' entries:
//! concurrent readers share one provider call, whatever its outcome; a
//! credential with an expiry is refreshed in the background before it
//! expires (at half its life, with jitter), so warm readers never wait; an
//! expired credential is never returned; a failed refresh keeps serving the
//! still-valid one. After a failure the provider rests (`backoff`): reads
//! with nothing valid cached fail at once until the retry time, and only a
//! forced refresh skips the rest.

use super::{Credential, RegistryProvider, backoff};
use crate::error::{Error, Result};
use crate::status::{EntryStatus, Retry};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Spread of refresh times around half-life, so a fleet started together
/// does not refresh in step.
const JITTER: f64 = 0.1;
/// The soonest retry of a failed background refresh: a credential about to
/// expire is still not refreshed in a busy loop.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// How long a file that gathers several registries (`docker/config.json`,
/// and `credfs get` over the mount) waits for their providers, all asked at
/// once: past it, the ones still fetching are left out. Ten seconds covers a
/// healthy helper or ECR call and keeps a pull from stalling on a hung one.
pub const AGGREGATE_WAIT: Duration = Duration::from_secs(10);

type OnChange = Box<dyn Fn() + Send + Sync>;
type Outcome = Result<Arc<Credential>>;

pub struct CachedRegistry {
    provider: Arc<dyn RegistryProvider>,
    state: Mutex<State>,
    on_change: Mutex<Option<OnChange>>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Credential>>,
    status: Option<EntryStatus>,
    refresher: Option<JoinHandle<()>>,
    /// The provider call in flight, which every reader joins.
    attempt: Option<Attempt>,
    /// The failures since the last success, and when to try again.
    failure: Option<Failure>,
}

/// One provider call. It runs in its own task, so a reader that stops
/// waiting (a deadline, an interrupted read) neither cancels it nor loses
/// its result for the others.
#[derive(Clone)]
struct Attempt {
    forced: bool,
    started: Instant,
    outcome: Shared<BoxFuture<'static, Outcome>>,
}

struct Failure {
    error: Error,
    in_a_row: u32,
    retry_at: Instant,
    retry_at_wall: SystemTime,
}

impl Failure {
    /// What a read that does not ask the provider answers.
    fn fast_error(&self) -> Error {
        Error::provider(format!(
            "{} (next attempt at {})",
            self.error.message(),
            crate::status::timestamp_millis(self.retry_at_wall)
        ))
    }
}

fn valid(credential: &Credential) -> bool {
    credential
        .expires_at
        .is_none_or(|at| at > SystemTime::now())
}

/// A number in [-1, 1), different in every process and call.
fn jitter_unit() -> f64 {
    let seed = RandomState::new().hash_one(std::time::Instant::now());
    (seed % 2_000_001) as f64 / 1_000_000.0 - 1.0
}

/// When to refresh a credential fetched at `now` that expires at `expires_at`.
pub fn refresh_delay(now: SystemTime, expires_at: SystemTime, jitter: f64) -> Duration {
    let life = expires_at.duration_since(now).unwrap_or_default();
    life.mul_f64((0.5 + JITTER * jitter).clamp(0.0, 1.0))
}

/// How long to rest after `in_a_row` failures, with `left` of a still-valid
/// credential: a retry must come while that credential still serves.
fn rest(in_a_row: u32, left: Option<Duration>, jitter: f64) -> Duration {
    let rest = backoff::delay(in_a_row, jitter);
    match left {
        Some(left) => rest.min((left / 4).max(MIN_RETRY)),
        None => rest,
    }
}

impl State {
    /// The cached credential if it is still valid; an expired one is
    /// dropped so that it can never be served.
    fn valid_current(&mut self) -> Option<Arc<Credential>> {
        match &self.current {
            Some(c) if valid(c) => Some(c.clone()),
            Some(_) => {
                self.current = None;
                let reason = "the credential expired and no refresh succeeded";
                self.status = Some(match &self.failure {
                    Some(f) => EntryStatus::failing(reason, f.retry()),
                    None => EntryStatus::error(reason),
                });
                None
            }
            None => None,
        }
    }

    fn remaining(&self) -> Option<Duration> {
        let at = self.current.as_ref()?.expires_at?;
        at.duration_since(SystemTime::now()).ok()
    }
}

impl Failure {
    fn retry(&self) -> Retry {
        Retry {
            at: self.retry_at_wall,
            failures: self.in_a_row,
        }
    }
}

/// What a read does, decided under the state lock.
enum Next {
    Done(Outcome),
    Join(Attempt),
    /// Wait for someone else's unforced call, then force a new one.
    AwaitThenForce(Attempt),
}

impl CachedRegistry {
    pub fn new(provider: Arc<dyn RegistryProvider>) -> Self {
        CachedRegistry {
            provider,
            state: Mutex::new(State::default()),
            on_change: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called after every change of the credential (to tell the kernel).
    pub fn set_on_change(&self, hook: OnChange) {
        if let Ok(mut slot) = self.on_change.lock() {
            *slot = Some(hook);
        }
    }

    /// The cached credential if it is still valid, without waiting.
    pub fn cached(&self) -> Option<Arc<Credential>> {
        self.state().valid_current()
    }

    /// Nothing valid is cached, no call is in flight and the provider is
    /// resting after a failure: a read now would fail at once.
    pub fn resting(&self) -> bool {
        let mut state = self.state();
        state.valid_current().is_none()
            && state.attempt.is_none()
            && state
                .failure
                .as_ref()
                .is_some_and(|f| Instant::now() < f.retry_at)
    }

    /// The credential: the cached one, else the outcome of the provider
    /// call in flight or of a new one; while resting after a failure, that
    /// failure at once.
    pub async fn get(self: &Arc<Self>) -> Result<Arc<Credential>> {
        self.obtain(false, None).await
    }

    /// Like `get`, but waits for a provider call at most `wait`, counted
    /// from now and from the call's start: a call that has already kept
    /// one aggregate reader (`docker/config.json`) waiting that long is not
    /// waited for again. The call goes on, and a later read gets its result.
    pub async fn get_within(self: &Arc<Self>, wait: Duration) -> Result<Arc<Credential>> {
        self.obtain(false, Some(wait)).await
    }

    /// A new credential from the provider now (the `refresh` file), even
    /// while resting after a failure.
    pub async fn refresh(self: &Arc<Self>) -> Result<Arc<Credential>> {
        self.obtain(true, None).await
    }

    async fn obtain(self: &Arc<Self>, force: bool, wait: Option<Duration>) -> Outcome {
        let asked = Instant::now();
        loop {
            let next = self.next_step(force);
            let attempt = match next {
                Next::Done(outcome) => return outcome,
                Next::Join(attempt) => attempt,
                Next::AwaitThenForce(attempt) => {
                    // Its result is not what a forced refresh asked for.
                    let _ = attempt.outcome.await;
                    continue;
                }
            };
            let Some(wait) = wait else {
                return attempt.outcome.await;
            };
            let until = (asked + wait).min(attempt.started + wait);
            return tokio::time::timeout_at(until.into(), attempt.outcome)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::provider(format!(
                        "no answer from the provider within {}",
                        humantime::format_duration(wait)
                    )))
                });
        }
    }

    fn next_step(self: &Arc<Self>, force: bool) -> Next {
        let mut state = self.state();
        if force {
            return match &state.attempt {
                Some(attempt) if attempt.forced => Next::Join(attempt.clone()),
                Some(attempt) => Next::AwaitThenForce(attempt.clone()),
                None => Next::Join(self.start(&mut state, true)),
            };
        }
        if let Some(credential) = state.valid_current() {
            return Next::Done(Ok(credential));
        }
        if let Some(attempt) = &state.attempt {
            return Next::Join(attempt.clone());
        }
        if let Some(failure) = &state.failure
            && Instant::now() < failure.retry_at
        {
            return Next::Done(Err(failure.fast_error()));
        }
        Next::Join(self.start(&mut state, false))
    }

    /// Starts a provider call; the caller holds the state lock, so no
    /// other reader can start a second one meanwhile.
    fn start(self: &Arc<Self>, state: &mut State, forced: bool) -> Attempt {
        let registry = self.clone();
        let task = tokio::spawn(async move { registry.call_provider(forced).await });
        let outcome = async move {
            task.await
                .unwrap_or_else(|_| Err(Error::provider("the credential fetch stopped")))
        }
        .boxed()
        .shared();
        let attempt = Attempt {
            forced,
            started: Instant::now(),
            outcome,
        };
        state.attempt = Some(attempt.clone());
        attempt
    }

    async fn call_provider(self: Arc<Self>, forced: bool) -> Outcome {
        // A panicking provider is a failed call like any other: the call
        // must end in `store` or `failed`, which let the next one start.
        let called = AssertUnwindSafe(self.provider.fetch(forced))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(Error::provider("the provider panicked")));
        let fetched = called.and_then(|credential| {
            if valid(&credential) {
                Ok(credential)
            } else {
                Err(Error::provider(
                    "the provider returned a credential that has already expired",
                ))
            }
        });
        match fetched {
            Ok(credential) => Ok(self.store(credential)),
            Err(error) => {
                self.failed(&error);
                Err(error)
            }
        }
    }

    fn store(self: &Arc<Self>, credential: Credential) -> Arc<Credential> {
        let credential = Arc::new(credential);
        let refresher = credential.expires_at.map(|at| {
            let delay = refresh_delay(SystemTime::now(), at, jitter_unit());
            tokio::spawn(refresh_later(Arc::downgrade(self), delay))
        });
        let changed = {
            let mut state = self.state();
            let changed = state.current.as_deref() != Some(&*credential);
            state.current = Some(credential.clone());
            state.status = Some(EntryStatus::ok(credential.expires_at));
            state.attempt = None;
            state.failure = None;
            if let Some(old) = std::mem::replace(&mut state.refresher, refresher) {
                old.abort();
            }
            changed
        };
        if changed
            && let Ok(hook) = self.on_change.lock()
            && let Some(hook) = hook.as_ref()
        {
            hook();
        }
        credential
    }

    /// Records a failure and when to try again; a still-valid credential
    /// keeps being served.
    fn failed(&self, error: &Error) {
        let mut state = self.state();
        state.attempt = None;
        let in_a_row = state.failure.as_ref().map_or(0, |f| f.in_a_row) + 1;
        let serving = state.current.as_deref().is_some_and(valid);
        let left = serving.then(|| state.remaining()).flatten();
        let wait = rest(in_a_row, left, (jitter_unit() + 1.0) / 2.0);
        let failure = Failure {
            error: error.clone(),
            in_a_row,
            retry_at: Instant::now() + wait,
            retry_at_wall: SystemTime::now() + wait,
        };
        let retry_at = crate::status::timestamp_millis(failure.retry_at_wall);
        if serving {
            warn!(error = %error, %retry_at, "refresh failed; serving the cached credential until it expires");
        } else {
            warn!(error = %error, %retry_at, failures = in_a_row, "credential fetch failed; reads fail until the retry");
        }
        state.status = Some(EntryStatus::failing(error.message(), failure.retry()));
        state.failure = Some(failure);
    }

    pub fn status(&self) -> EntryStatus {
        self.state().status.clone().unwrap_or(EntryStatus::Idle)
    }

    /// Time left before the cached credential expires, if it does.
    fn remaining(&self) -> Option<Duration> {
        self.state().remaining()
    }

    /// How long until the provider may be asked again after a failure.
    fn until_retry(&self) -> Option<Duration> {
        let state = self.state();
        let failure = state.failure.as_ref()?;
        Some(failure.retry_at.saturating_duration_since(Instant::now()))
    }
}

impl Drop for CachedRegistry {
    fn drop(&mut self) {
        if let Some(refresher) = self.state().refresher.take() {
            refresher.abort();
        }
    }
}

/// Refreshes after `delay`, retrying failures at their retry times while
/// the old credential is still valid; once it has expired, readers drive
/// the retries, so a registry nobody reads costs no provider calls. Holds
/// only a weak reference: a registry removed from the config stops
/// refreshing.
async fn refresh_later(registry: Weak<CachedRegistry>, delay: Duration) {
    tokio::time::sleep(delay).await;
    loop {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        // A success schedules the next refresh (and aborts this task).
        if registry.refresh().await.is_ok() {
            info!("credential refreshed in the background");
            return;
        }
        if registry.remaining().is_none() {
            return;
        }
        let wait = registry.until_retry().unwrap_or(MIN_RETRY);
        drop(registry);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(refresh_delay(now, at, 0.0), Duration::from_secs(50));
        assert_eq!(refresh_delay(now, at, 1.0), Duration::from_secs(60));
        assert_eq!(refresh_delay(now, at, -1.0), Duration::from_secs(40));
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
}
