//! One registry's cached credential: concurrent first readers share one
//! provider call, and an expired credential is never returned.

use super::{Credential, RegistryProvider};
use crate::error::Result;
use crate::status::EntryStatus;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub struct CachedRegistry {
    provider: Arc<dyn RegistryProvider>,
    current: tokio::sync::Mutex<Option<Arc<Credential>>>,
    status: Mutex<EntryStatus>,
}

impl CachedRegistry {
    pub fn new(provider: Arc<dyn RegistryProvider>) -> Self {
        CachedRegistry {
            provider,
            current: tokio::sync::Mutex::new(None),
            status: Mutex::new(EntryStatus::Idle),
        }
    }

    pub async fn get(&self) -> Result<Arc<Credential>> {
        // Held across the fetch so that concurrent first readers wait for
        // the one call in flight instead of starting their own.
        let mut current = self.current.lock().await;
        if let Some(credential) = current.as_ref()
            && credential
                .expires_at
                .is_none_or(|at| at > SystemTime::now())
        {
            return Ok(credential.clone());
        }
        *current = None;
        let fetched = self.provider.fetch().await;
        self.set_status(match &fetched {
            Ok(c) => EntryStatus::ok(c.expires_at),
            Err(e) => EntryStatus::error(e.message()),
        });
        let credential = Arc::new(fetched?);
        *current = Some(credential.clone());
        Ok(credential)
    }

    pub fn status(&self) -> EntryStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or(EntryStatus::Idle)
    }

    fn set_status(&self, status: EntryStatus) {
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }
}
