//! One registry's cached credential, shared by all providers' entries:
//! concurrent first readers share one provider call; a credential with an
//! expiry is refreshed in the background before it expires (at half its
//! life, with jitter), so warm readers never wait; an expired credential is
//! never returned; a failed refresh keeps serving the still-valid one.

use super::{Credential, RegistryProvider};
use crate::error::{Error, Result};
use crate::status::EntryStatus;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Spread of refresh times around half-life, so a fleet started together
/// does not refresh in step.
const JITTER: f64 = 0.1;
/// Retries of a failed background refresh, within the credential's life.
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

type OnChange = Box<dyn Fn() + Send + Sync>;

pub struct CachedRegistry {
    provider: Arc<dyn RegistryProvider>,
    state: Mutex<State>,
    /// Held across a provider call: concurrent callers wait for the one in
    /// flight instead of starting their own.
    fetching: tokio::sync::Mutex<()>,
    on_change: Mutex<Option<OnChange>>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Credential>>,
    status: Option<EntryStatus>,
    refresher: Option<JoinHandle<()>>,
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

impl CachedRegistry {
    pub fn new(provider: Arc<dyn RegistryProvider>) -> Self {
        CachedRegistry {
            provider,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            on_change: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
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
        self.current()
    }

    fn current(&self) -> Option<Arc<Credential>> {
        let mut state = self.state();
        match &state.current {
            Some(c) if valid(c) => Some(c.clone()),
            Some(_) => {
                state.current = None;
                state.status = Some(EntryStatus::error(
                    "the credential expired and no refresh succeeded",
                ));
                None
            }
            None => None,
        }
    }

    /// The credential, fetched if there is no valid one.
    pub async fn get(self: &Arc<Self>) -> Result<Arc<Credential>> {
        if let Some(credential) = self.current() {
            return Ok(credential);
        }
        self.fetch(false).await
    }

    /// A new credential from the provider now (the `refresh` file).
    pub async fn refresh(self: &Arc<Self>) -> Result<Arc<Credential>> {
        self.fetch(true).await
    }

    async fn fetch(self: &Arc<Self>, force: bool) -> Result<Arc<Credential>> {
        let _in_flight = self.fetching.lock().await;
        if !force && let Some(credential) = self.current() {
            return Ok(credential);
        }
        match self.provider.fetch(force).await {
            Ok(credential) if !valid(&credential) => {
                let error =
                    Error::provider("the provider returned a credential that has already expired");
                self.failed(&error);
                Err(error)
            }
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

    /// Records a failure; a still-valid credential keeps being served.
    fn failed(&self, error: &Error) {
        let mut state = self.state();
        let serving = state.current.as_deref().is_some_and(valid);
        if serving {
            warn!(error = %error, "refresh failed; serving the cached credential until it expires");
        }
        state.status = Some(EntryStatus::error(error.message()));
    }

    pub fn status(&self) -> EntryStatus {
        self.state().status.clone().unwrap_or(EntryStatus::Idle)
    }

    /// Time left before the cached credential expires, if it does.
    fn remaining(&self) -> Option<Duration> {
        let state = self.state();
        let at = state.current.as_ref()?.expires_at?;
        at.duration_since(SystemTime::now()).ok()
    }
}

impl Drop for CachedRegistry {
    fn drop(&mut self) {
        if let Some(refresher) = self.state().refresher.take() {
            refresher.abort();
        }
    }
}

/// Refreshes after `delay`, retrying failures while the old credential is
/// still valid. Holds only a weak reference: a registry removed from the
/// config stops refreshing.
async fn refresh_later(registry: Weak<CachedRegistry>, delay: Duration) {
    tokio::time::sleep(delay).await;
    loop {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        // A success schedules the next refresh (and aborts this task).
        match registry.fetch(true).await {
            Ok(_) => {
                info!("credential refreshed in the background");
                return;
            }
            Err(_) => match registry.remaining() {
                Some(left) => {
                    let retry = (left / 4).clamp(MIN_RETRY, MAX_RETRY);
                    drop(registry);
                    tokio::time::sleep(retry).await;
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out credentials that live `life`, numbered by call; fails
    /// while `failing` is set.
    struct Counting {
        calls: AtomicUsize,
        life: Duration,
        failing: std::sync::atomic::AtomicBool,
        delay: Duration,
    }

    #[async_trait]
    impl RegistryProvider for Counting {
        async fn fetch(&self, _refresh: bool) -> Result<Credential> {
            tokio::time::sleep(self.delay).await;
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
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

    fn counting(life: Duration, delay: Duration) -> Arc<Counting> {
        Arc::new(Counting {
            calls: AtomicUsize::new(0),
            life,
            failing: Default::default(),
            delay,
        })
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

    #[tokio::test]
    async fn concurrent_first_readers_share_one_call() {
        let provider = counting(Duration::from_secs(3600), Duration::from_millis(50));
        let cache = Arc::new(CachedRegistry::new(provider.clone()));
        let readers: Vec<_> = (0..64)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await.map(|c| c.password.clone()) })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap().expose(), b"p1");
        }
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refreshes_before_expiry_and_keeps_serving_through_failures() {
        let provider = counting(Duration::from_millis(600), Duration::ZERO);
        let cache = Arc::new(CachedRegistry::new(provider.clone()));
        assert_eq!(cache.get().await.unwrap().password.expose(), b"p1");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while provider.calls.load(Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background refresh"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            cache.get().await.unwrap().password.expose(),
            b"p2",
            "a reader never waited"
        );
        provider.failing.store(true, Ordering::SeqCst);
        let err = cache.refresh().await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert_eq!(
            cache.get().await.unwrap().password.expose(),
            b"p2",
            "still valid, still served"
        );
        assert!(matches!(cache.status(), EntryStatus::Error { .. }));
        // Once it expires with every refresh failing, reads fail.
        while cache.current().is_some() {
            assert!(std::time::Instant::now() < deadline + Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.get().await.unwrap_err().errno(), libc::EIO);
    }
}
