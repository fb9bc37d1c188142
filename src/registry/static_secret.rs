//! `static`: a username and password from the config (Docker Hub, GHCR,
//! GitLab, NGC access tokens).

use super::{Credential, RegistryProvider};
use crate::error::Result;
use crate::secret::Secret;
use async_trait::async_trait;

pub struct StaticProvider {
    credential: Credential,
}

impl StaticProvider {
    pub fn new(registry: &str, username: &Secret, password: &Secret) -> Self {
        StaticProvider {
            credential: Credential {
                registry: registry.to_string(),
                username: username.clone(),
                password: password.clone(),
                token: password.clone(),
                expires_at: None,
            },
        }
    }
}

#[async_trait]
impl RegistryProvider for StaticProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        Ok(self.credential.clone())
    }
}
