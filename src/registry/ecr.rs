//! `ecr`: AWS ECR GetAuthorizationToken through the default AWS chain
//! (environment, profile files, container and instance metadata). `token` is
//! the raw base64 authorizationToken (what estela returns), the password is
//! its decoded second half (what `aws ecr get-login-password` prints).

use super::{Credential, RegistryProvider};
use crate::config::EcrConfig;
use crate::error::{Error, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use aws_sdk_ecr::error::DisplayErrorContext;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::time::SystemTime;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

pub struct EcrProvider {
    config: EcrConfig,
    client: OnceCell<aws_sdk_ecr::Client>,
}

impl EcrProvider {
    pub fn new(config: &EcrConfig) -> Self {
        EcrProvider {
            config: config.clone(),
            client: OnceCell::new(),
        }
    }

    /// Built on first use: loading the AWS chain may read files and query
    /// instance metadata.
    async fn client(&self) -> &aws_sdk_ecr::Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.config.region.clone()));
                if let Some(profile) = &self.config.profile {
                    loader = loader.profile_name(profile);
                }
                if let Some(url) = &self.config.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                aws_sdk_ecr::Client::new(&loader.load().await)
            })
            .await
    }
}

/// `https://123.dkr.ecr.us-east-1.amazonaws.com` → the host (and port).
fn registry_host(proxy_endpoint: &str) -> String {
    let host = proxy_endpoint
        .split_once("://")
        .map_or(proxy_endpoint, |(_, rest)| rest);
    host.trim_end_matches('/').to_string()
}

/// Splits a decoded `AWS:password` token.
fn split_token(token: &str) -> Result<(Secret, Secret)> {
    let decoded =
        Zeroizing::new(BASE64.decode(token).map_err(|_| {
            Error::provider("ECR returned an authorization token that is not base64")
        })?);
    let colon = decoded.iter().position(|&b| b == b':').ok_or_else(|| {
        Error::provider("ECR returned an authorization token without `user:password`")
    })?;
    Ok((
        Secret::new(decoded[..colon].to_vec()),
        Secret::new(decoded[colon + 1..].to_vec()),
    ))
}

#[async_trait]
impl RegistryProvider for EcrProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        // Deprecated for permissions, but the registry id still selects the
        // proxy endpoint (the registry host) the credential is shown for.
        #[allow(deprecated)]
        let request = self
            .client()
            .await
            .get_authorization_token()
            .set_registry_ids(self.config.registry_id.clone().map(|id| vec![id]));
        let output = request.send().await.map_err(|e| {
            Error::provider(format!(
                "ECR GetAuthorizationToken in {}: {}",
                self.config.region,
                DisplayErrorContext(&e)
            ))
        })?;
        let data = output
            .authorization_data()
            .first()
            .ok_or_else(|| Error::provider("ECR returned no authorization data"))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| Error::provider("ECR returned no authorization token"))?;
        let (username, password) = split_token(token)?;
        let registry = match &self.config.registry {
            Some(registry) => registry.clone(),
            None => data
                .proxy_endpoint()
                .map(registry_host)
                .ok_or_else(|| Error::provider("ECR returned no proxy endpoint"))?,
        };
        let expires_at = data
            .expires_at()
            .and_then(|at| SystemTime::try_from(*at).ok());
        Ok(Credential {
            registry,
            username,
            password,
            token: Secret::from(token.to_string()),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_user_and_password() {
        let (user, pass) = split_token(&BASE64.encode("AWS:secret:with:colons")).unwrap();
        assert_eq!(user.expose(), b"AWS");
        assert_eq!(pass.expose(), b"secret:with:colons");
        assert!(split_token("not base64!").is_err());
        assert!(split_token(&BASE64.encode("nocolon")).is_err());
    }

    #[test]
    fn the_registry_is_the_proxy_endpoint_host() {
        assert_eq!(
            registry_host("https://123.dkr.ecr.us-east-1.amazonaws.com"),
            "123.dkr.ecr.us-east-1.amazonaws.com"
        );
        assert_eq!(registry_host("http://127.0.0.1:5000/"), "127.0.0.1:5000");
    }
}
