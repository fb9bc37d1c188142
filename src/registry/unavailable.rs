//! Stands in for a provider that cannot work (its client is not in this
//! build): reads fail with EIO and `status.json` says why.

use super::{Credential, RegistryProvider};
use crate::error::{Error, Result};
use async_trait::async_trait;

pub struct FailedProvider(pub Error);

#[async_trait]
impl RegistryProvider for FailedProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        Err(self.0.clone())
    }
}
