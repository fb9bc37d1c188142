//! Entra ID (Azure AD) access tokens for `acr`: an app registration's
//! client credentials (a client secret, or a federated token as workload
//! identity writes it) at the authority's v2.0 token endpoint, or a
//! managed identity's token from the instance metadata service (IMDS).

use super::oauth::{AccessToken, Http, Route};
use crate::config::{AppCredential, AzureIdentity};
use crate::error::{Error, Result};
use crate::trust;
use std::path::Path;
use std::time::SystemTime;
use zeroize::Zeroizing;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";

pub struct Entra {
    identity: AzureIdentity,
    scope: String,
    http: Http,
}

/// IMDS takes a resource, not a scope: `https://management.azure.com/`
/// for `https://management.azure.com/.default`.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix(".default").unwrap_or(scope)
}

/// The federated token, read anew for each request (the kubelet rotates
/// it) through the same trusted walk as a secret file.
fn read_token_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = trust::read_file(path)
        .map_err(|e| Error::provider(e.describe("federated token file", path)))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| {
            Error::provider(format!(
                "federated token file {} is not text",
                path.display()
            ))
        })?
        .trim();
    if text.is_empty() {
        return Err(Error::provider(format!(
            "federated token file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(text.to_string()))
}

impl Entra {
    pub fn new(identity: &AzureIdentity, scope: &str) -> Self {
        let route = match identity {
            AzureIdentity::App { .. } => Route::Proxied,
            AzureIdentity::ManagedIdentity { .. } => Route::Direct,
        };
        Entra {
            identity: identity.clone(),
            scope: scope.to_string(),
            http: Http::new(route),
        }
    }

    /// The tenant the config names, if any.
    pub fn tenant(&self) -> Option<&str> {
        match &self.identity {
            AzureIdentity::App { tenant_id, .. } => Some(tenant_id),
            AzureIdentity::ManagedIdentity { tenant_id, .. } => tenant_id.as_deref(),
        }
    }

    pub async fn token(&self) -> Result<AccessToken> {
        let now = SystemTime::now();
        let body = match &self.identity {
            AzureIdentity::App {
                authority_host,
                tenant_id,
                client_id,
                credential,
            } => {
                let url = format!("{authority_host}/{tenant_id}/oauth2/v2.0/token");
                let assertion;
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", self.scope.as_str()),
                ];
                match credential {
                    AppCredential::Secret(secret) => {
                        let secret = std::str::from_utf8(secret.expose())
                            .map_err(|_| Error::provider("the acr client_secret is not text"))?;
                        form.push(("client_secret", secret));
                    }
                    AppCredential::FederatedTokenFile(path) => {
                        assertion = read_token_file(path)?;
                        form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                        form.push(("client_assertion", assertion.as_str()));
                    }
                }
                self.http
                    .post_form("Entra ID token request", &url, &form)
                    .await?
            }
            AzureIdentity::ManagedIdentity {
                imds_endpoint,
                client_id,
                ..
            } => {
                let url = format!("{imds_endpoint}{IMDS_TOKEN_PATH}");
                let mut query = vec![
                    ("api-version", IMDS_API_VERSION),
                    ("resource", resource_of(&self.scope)),
                ];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                self.http
                    .get(
                        "managed identity token request",
                        &url,
                        &query,
                        ("Metadata", "true"),
                    )
                    .await?
            }
        };
        body.access_token(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_takes_the_scope_as_a_resource() {
        assert_eq!(
            resource_of("https://management.azure.com/.default"),
            "https://management.azure.com/"
        );
        assert_eq!(resource_of("https://x.example/"), "https://x.example/");
    }
}
