//! Where the namespace gets its stores and registry providers. The daemon
//! uses the real ones; tests pass in-memory stores and fault-injecting
//! wrappers, so the core runs without servers, root or a mount.

use crate::config::{RegistryProviderConfig, StoreConfig};
use crate::error::Result;
use crate::registry::{self, RegistryProvider};
use crate::store::{self, ProjectStore};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;

type StoreFactory =
    dyn Fn(&StoreConfig) -> BoxFuture<'static, Result<Arc<dyn ProjectStore>>> + Send + Sync;
type RegistryFactory = dyn Fn(&RegistryProviderConfig) -> Arc<dyn RegistryProvider> + Send + Sync;

/// Opens a store for a `[stores.*]` entry and makes the provider of a
/// `[registries.*]` entry; asked at start and at each reload for the
/// entries whose config changed.
#[derive(Clone)]
pub struct Providers {
    store: Arc<StoreFactory>,
    registry: Arc<RegistryFactory>,
}

impl Providers {
    /// What the config names: the daemon's providers.
    pub fn real() -> Self {
        Providers::new(
            |config: &StoreConfig| {
                let config = config.clone();
                async move { store::open_store(&config).await }
            },
            registry::provider_for,
        )
    }

    /// The store future owns what it needs (it may outlive the borrow of
    /// the config), so a factory clones what it keeps.
    pub fn new<S, F, R>(store: S, registry: R) -> Self
    where
        S: Fn(&StoreConfig) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Arc<dyn ProjectStore>>> + Send + 'static,
        R: Fn(&RegistryProviderConfig) -> Arc<dyn RegistryProvider> + Send + Sync + 'static,
    {
        Providers {
            store: Arc::new(move |config: &StoreConfig| -> BoxFuture<'static, _> {
                Box::pin(store(config))
            }),
            registry: Arc::new(registry),
        }
    }

    pub(crate) async fn open_store(&self, config: &StoreConfig) -> Result<Arc<dyn ProjectStore>> {
        (self.store)(config).await
    }

    pub(crate) fn registry(&self, config: &RegistryProviderConfig) -> Arc<dyn RegistryProvider> {
        (self.registry)(config)
    }
}
