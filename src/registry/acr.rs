//! `acr`: Azure Container Registry. An Entra ID access token (`entra`) is
//! exchanged at the registry's `/oauth2/exchange` for an ACR refresh
//! token, which docker clients use as the password of the all-zero GUID.
//! The refresh token's expiry is its JWT `exp` claim (read without
//! verifying), else ACR's usual three hours.

use super::entra::Entra;
use super::oauth::{Http, Route, unverified_claim};
use super::{Credential, RegistryProvider};
use crate::config::AcrConfig;
use crate::error::{Error, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use std::time::{Duration, SystemTime};

pub const USERNAME: &str = "00000000-0000-0000-0000-000000000000";
/// An ACR refresh token's life when it does not say.
const REFRESH_TOKEN_LIFE: Duration = Duration::from_secs(3 * 3600);

pub struct AcrProvider {
    registry: String,
    /// The registry's host, the exchange's `service`.
    service: String,
    exchange_url: String,
    entra: Entra,
    http: Http,
}

impl AcrProvider {
    pub fn new(config: &AcrConfig) -> Self {
        let host = config.registry.split('/').next().unwrap_or_default();
        AcrProvider {
            registry: config.registry.clone(),
            service: host.to_string(),
            exchange_url: config.exchange_url.clone(),
            entra: Entra::new(&config.identity, &config.scope),
            http: Http::new(Route::Proxied),
        }
    }
}

/// When a refresh token fetched at `now` expires: its `exp`, a JWT
/// NumericDate (seconds, which RFC 7519 lets carry a fraction).
fn refresh_token_expiry(token: &Secret, now: SystemTime) -> SystemTime {
    unverified_claim::<f64>(token, "exp")
        .and_then(|exp| Duration::try_from_secs_f64(exp).ok())
        .map_or(now + REFRESH_TOKEN_LIFE, |exp| SystemTime::UNIX_EPOCH + exp)
}

#[async_trait]
impl RegistryProvider for AcrProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        let access = self.entra.token().await?;
        // A managed identity's tenant is the one its token was issued in.
        let tenant = match self.entra.tenant() {
            Some(tenant) => Some(tenant.to_string()),
            None => unverified_claim::<String>(&access.token, "tid"),
        };
        let access_token = std::str::from_utf8(access.token.expose())
            .map_err(|_| Error::provider("Entra ID answered an access token that is not text"))?;
        let mut form = vec![
            ("grant_type", "access_token"),
            ("service", self.service.as_str()),
            ("access_token", access_token),
        ];
        if let Some(tenant) = &tenant {
            form.push(("tenant", tenant));
        }
        let now = SystemTime::now();
        let refresh = self
            .http
            .post_form("ACR token exchange", &self.exchange_url, &form)
            .await?
            .secret_field("refresh_token")?;
        Ok(Credential {
            registry: self.registry.clone(),
            username: Secret::from(USERNAME.to_string()),
            password: refresh.clone(),
            expires_at: Some(refresh_token_expiry(&refresh, now)),
            token: refresh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn the_expiry_is_the_tokens_own_else_three_hours() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":1005000}"#);
        let jwt = Secret::from(format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln"));
        assert_eq!(
            refresh_token_expiry(&jwt, now),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_005_000)
        );
        let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":1005000.25}"#);
        let fraction = Secret::from(format!("e30.{claims}."));
        assert_eq!(
            refresh_token_expiry(&fraction, now),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_005_000_250)
        );
        let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":-1}"#);
        let negative = Secret::from(format!("e30.{claims}."));
        assert_eq!(
            refresh_token_expiry(&negative, now),
            now + Duration::from_secs(3 * 3600)
        );
        let opaque = Secret::from("not-a-jwt".to_string());
        assert_eq!(
            refresh_token_expiry(&opaque, now),
            now + Duration::from_secs(3 * 3600)
        );
    }
}
