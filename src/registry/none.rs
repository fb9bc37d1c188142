//! `none`: an open registry that needs no token.

use super::{Credential, RegistryProvider};
use crate::error::Result;
use crate::secret::Secret;
use async_trait::async_trait;

pub struct NoneProvider {
    registry: String,
}

impl NoneProvider {
    pub fn new(registry: &str) -> Self {
        NoneProvider {
            registry: registry.to_string(),
        }
    }
}

#[async_trait]
impl RegistryProvider for NoneProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        Ok(Credential {
            registry: self.registry.clone(),
            username: Secret::empty(),
            password: Secret::empty(),
            token: Secret::empty(),
            expires_at: None,
        })
    }
}
