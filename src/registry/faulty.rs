//! A registry provider that fails or stalls where a test says
//! (`crate::faults`), and otherwise is the provider it wraps.

use super::{Credential, RegistryProvider};
use crate::error::Result;
use crate::faults::Faults;
use async_trait::async_trait;
use std::sync::Arc;

/// The calls a plan can name: a provider has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryOp {
    Fetch,
}

pub struct FaultyRegistry {
    inner: Arc<dyn RegistryProvider>,
    faults: Arc<Faults<RegistryOp>>,
}

impl FaultyRegistry {
    pub fn new(inner: Arc<dyn RegistryProvider>, faults: Arc<Faults<RegistryOp>>) -> Self {
        FaultyRegistry { inner, faults }
    }
}

#[async_trait]
impl RegistryProvider for FaultyRegistry {
    async fn fetch(&self, refresh: bool) -> Result<Credential> {
        self.faults.enter(RegistryOp::Fetch).await?;
        self.inner.fetch(refresh).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::secret::Secret;

    struct Open;

    #[async_trait]
    impl RegistryProvider for Open {
        async fn fetch(&self, _refresh: bool) -> Result<Credential> {
            Ok(Credential {
                registry: "r.example".into(),
                username: Secret::empty(),
                password: Secret::empty(),
                token: Secret::empty(),
                expires_at: None,
            })
        }
    }

    #[tokio::test]
    async fn the_nth_fetch_fails() {
        let faults = Faults::new();
        faults.fail(RegistryOp::Fetch, 2..=2, Error::provider("injected"));
        let provider = FaultyRegistry::new(Arc::new(Open), faults);
        assert!(provider.fetch(false).await.is_ok());
        assert!(provider.fetch(false).await.is_err());
        assert_eq!(
            provider.fetch(true).await.map(|c| c.registry),
            Ok("r.example".to_string())
        );
    }
}
