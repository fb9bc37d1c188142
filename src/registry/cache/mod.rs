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
use crate::sync::lock;
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

/// What a credential's refresh follows: the first fetch of an entry, or a
/// refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    AfterColdFetch,
    AfterRefresh,
}

/// When to refresh a credential fetched at `now` that expires at
/// `expires_at`; `jitter` is a number in [-1, 1).
///
/// After a cold fetch the refresh falls anywhere between 5% and 50% of the
/// life: a fleet started together (a cluster boot, a DaemonSet rollout)
/// then spreads its refreshes evenly over one refresh period from the
/// start, instead of refreshing in waves that only slowly blur. Later
/// refreshes come at half-life ± `JITTER`, which keeps them spread
/// (`benches/refresh_sim.rs` measures both).
pub fn refresh_delay(
    now: SystemTime,
    expires_at: SystemTime,
    after: Refresh,
    jitter: f64,
) -> Duration {
    let life = expires_at.duration_since(now).unwrap_or_default();
    let fraction = match after {
        Refresh::AfterColdFetch => 0.275 + 0.225 * jitter,
        Refresh::AfterRefresh => 0.5 + JITTER * jitter,
    };
    life.mul_f64(fraction.clamp(0.0, 1.0))
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
        lock(&self.state)
    }

    /// Called after every change of the credential (to tell the kernel).
    pub fn set_on_change(&self, hook: OnChange) {
        *lock(&self.on_change) = Some(hook);
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
        let changed = {
            let mut state = self.state();
            let after = if state.current.is_none() {
                Refresh::AfterColdFetch
            } else {
                Refresh::AfterRefresh
            };
            let refresher = credential.expires_at.map(|at| {
                let delay = refresh_delay(SystemTime::now(), at, after, jitter_unit());
                tokio::spawn(refresh_later(Arc::downgrade(self), delay))
            });
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
        if changed && let Some(hook) = lock(&self.on_change).as_ref() {
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
mod tests;
