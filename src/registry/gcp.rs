//! `gcp`: Google Artifact Registry and GCR. The username is
//! `oauth2accesstoken`, the password an OAuth2 access token: from a
//! service-account key (an RS256-signed JWT exchanged at the key's token
//! URI, RFC 7523) or, without a key, from the GCE metadata server. The
//! token's expiry is the reply's `expires_in`.

use super::oauth::{AccessToken, Http, Route};
use super::{Credential, RegistryProvider};
use crate::config::{GcpConfig, GcpSource, ServiceAccountKey};
use crate::error::{Error, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

pub const USERNAME: &str = "oauth2accesstoken";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The longest life Google accepts for an assertion.
const ASSERTION_LIFE: Duration = Duration::from_secs(3600);
/// What Google's libraries use when `GCE_METADATA_HOST` is not set.
const METADATA_HOST: &str = "metadata.google.internal";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The key a service-account key's `private_key` signs with; signing once
/// proves it (reading the PEM alone does not parse the RSA key).
pub fn signing_key(pem: &Secret) -> std::result::Result<EncodingKey, String> {
    let invalid = |_| "the service-account key's `private_key` is not an RSA private key in PEM";
    let key = EncodingKey::from_rsa_pem(pem.expose()).map_err(invalid)?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &serde_json::Map::new(),
        &key,
    )
    .map_err(invalid)?;
    Ok(key)
}

/// The claims Google's token endpoint checks in the assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

enum Source {
    Key {
        key: ServiceAccountKey,
        signer: std::result::Result<EncodingKey, String>,
    },
    Metadata {
        url: String,
    },
}

pub struct GcpProvider {
    registry: String,
    source: Source,
    http: Http,
}

impl GcpProvider {
    pub fn new(config: &GcpConfig) -> Self {
        let (source, route) = match &config.source {
            GcpSource::ServiceAccount(key) => (
                Source::Key {
                    key: key.clone(),
                    signer: signing_key(&key.private_key),
                },
                Route::Proxied,
            ),
            GcpSource::Metadata { host } => {
                let host = host
                    .clone()
                    .or_else(|| std::env::var("GCE_METADATA_HOST").ok())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| METADATA_HOST.to_string());
                let url = format!("http://{host}{METADATA_TOKEN_PATH}");
                (Source::Metadata { url }, Route::Direct)
            }
        };
        GcpProvider {
            registry: config.registry.clone(),
            source,
            http: Http::new(route),
        }
    }

    async fn key_token(
        &self,
        key: &ServiceAccountKey,
        signer: &std::result::Result<EncodingKey, String>,
    ) -> Result<AccessToken> {
        let signer = signer.as_ref().map_err(|e| Error::provider(e.clone()))?;
        let now = SystemTime::now();
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Error::provider("the clock is before 1970"))?
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key.private_key_id.clone();
        let claims = Claims {
            iss: &key.client_email,
            scope: SCOPE,
            aud: &key.token_uri,
            iat,
            exp: iat + ASSERTION_LIFE.as_secs(),
        };
        let assertion = Zeroizing::new(
            jsonwebtoken::encode(&header, &claims, signer)
                .map_err(|_| Error::provider("cannot sign with the service-account key"))?,
        );
        let form = [
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.as_str()),
        ];
        self.http
            .post_form("GCP token request", &key.token_uri, &form)
            .await?
            .access_token(now)
    }

    async fn metadata_token(&self, url: &str) -> Result<AccessToken> {
        let now = SystemTime::now();
        self.http
            .get(
                "GCE metadata token request",
                url,
                &[],
                ("Metadata-Flavor", "Google"),
            )
            .await?
            .access_token(now)
    }
}

#[async_trait]
impl RegistryProvider for GcpProvider {
    async fn fetch(&self, _refresh: bool) -> Result<Credential> {
        let token = match &self.source {
            Source::Key { key, signer } => self.key_token(key, signer).await?,
            Source::Metadata { url } => self.metadata_token(url).await?,
        };
        Ok(Credential {
            registry: self.registry.clone(),
            username: Secret::from(USERNAME.to_string()),
            password: token.token.clone(),
            token: token.token,
            expires_at: Some(token.expires_at),
        })
    }
}
