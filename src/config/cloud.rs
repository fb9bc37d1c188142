//! `provider = "gcp"` and `provider = "acr"`: the cloud registries whose
//! credentials come from a token service, each with one credential source
//! and endpoints that can be pointed elsewhere (tests, private clouds).

use super::checker::Checker;
use super::raw::{RawRegistry, RawSecret};
use super::{AcrConfig, AppCredential, AzureIdentity, GcpConfig, GcpSource, ServiceAccountKey};
use crate::secret::Secret;
use crate::trust;
use serde::Deserialize;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
pub const ENTRA_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
pub const AZURE_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// Azure Resource Manager: the audience ACR's exchange accepts everywhere.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// The fields of a service-account JSON key that credfs reads; the rest
/// (project_id, client_id, auth_uri, …) are ignored.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

/// `value` as an http(s) URL, without a trailing `/`.
fn check_url(value: &str) -> Result<String, String> {
    let invalid =
        || format!("invalid URL `{value}`: expected http://host[:port][/path] or https://…");
    let url = reqwest::Url::parse(value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    if url.scheme() == "http" && !stays_on_this_host(&url) {
        return Err(format!(
            "`{value}` is plain http: client secrets and tokens would cross the network in clear; use https (http only for loopback and link-local addresses such as a metadata service)"
        ));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Loopback, and the link-local addresses metadata services answer on:
/// where plain http never leaves the machine.
fn stays_on_this_host(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// `host[:port]`, as `GCE_METADATA_HOST` takes it.
fn check_host_port(value: &str) -> Result<String, String> {
    let bad = value.is_empty()
        || value.contains("://")
        || value.contains('/')
        || value.contains(char::is_whitespace);
    match bad {
        true => Err(format!(
            "invalid host `{value}`: expected host[:port] without a scheme"
        )),
        false => Ok(value.to_string()),
    }
}

/// A tenant goes into the authority's URL path: a GUID or a domain.
fn check_tenant(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    match valid {
        true => Ok(value.to_string()),
        false => Err(format!(
            "invalid tenant `{value}`: expected a GUID or a domain name"
        )),
    }
}

/// Reads a service-account JSON key; messages name fields, never values
/// (serde's own messages may quote them).
fn parse_key(json: &[u8], token_uri: Option<String>) -> Result<ServiceAccountKey, String> {
    let key: KeyFile = serde_json::from_slice(json).map_err(|e| {
        format!(
            "`key` is not a service-account JSON key (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    match key.kind.as_deref() {
        Some("service_account") => {}
        Some(other) => {
            return Err(format!(
                "`key` is a credential of type `{other}`; credfs takes a `service_account` key"
            ));
        }
        None => return Err("`key` has no `type`: expected a service-account JSON key".into()),
    }
    let field = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the service-account key has no `{name}`"))
    };
    let client_email = field(key.client_email, "client_email")?;
    let private_key = Secret::from(field(key.private_key, "private_key")?);
    crate::registry::gcp_signing_key(&private_key)
        .map_err(|_| "the service-account key's `private_key` is not an RSA private key in PEM")?;
    let token_uri = match token_uri {
        Some(uri) => uri,
        None => match key.token_uri {
            Some(uri) => check_url(&uri)
                .map_err(|e| format!("the service-account key's `token_uri`: {e}"))?,
            None => GOOGLE_TOKEN_URI.to_string(),
        },
    };
    Ok(ServiceAccountKey {
        client_email,
        private_key_id: key.private_key_id.filter(|id| !id.is_empty()),
        private_key,
        token_uri,
    })
}

impl Checker<'_> {
    fn url(&mut self, value: &Spanned<String>) -> Option<String> {
        self.check(&value.span(), check_url(value.get_ref()))
    }

    fn optional_url(&mut self, value: &Option<Spanned<String>>) -> Option<Option<String>> {
        match value {
            None => Some(None),
            Some(v) => self.url(v).map(Some),
        }
    }

    /// Reports `key` when set: it means nothing with the source chosen.
    fn unused<T>(&mut self, key: &str, value: &Option<Spanned<T>>, because: &str) {
        if let Some(value) = value {
            self.error(&value.span(), format!("key `{key}` {because}"));
        }
    }

    pub(super) fn gcp(&mut self, table: &Range<usize>, raw: &RawRegistry) -> Option<GcpConfig> {
        let registry = self.required_registry(table, raw);
        let source = match &raw.key {
            Some(key) => {
                self.unused(
                    "metadata_host",
                    &raw.metadata_host,
                    "is for the metadata server, which a `key` replaces",
                );
                self.service_account(key, &raw.token_uri)
                    .map(GcpSource::ServiceAccount)
            }
            None => {
                self.unused(
                    "token_uri",
                    &raw.token_uri,
                    "needs a `key`: without one, tokens come from the metadata server",
                );
                let host = match &raw.metadata_host {
                    None => Some(None),
                    Some(h) => self
                        .check(&h.span(), check_host_port(h.get_ref()))
                        .map(Some),
                };
                host.map(|host| GcpSource::Metadata { host })
            }
        };
        Some(GcpConfig {
            registry: registry?,
            source: source?,
        })
    }

    fn service_account(
        &mut self,
        key: &Spanned<RawSecret>,
        token_uri: &Option<Spanned<String>>,
    ) -> Option<ServiceAccountKey> {
        let token_uri = self.optional_url(token_uri);
        let json = self.secret(key)?;
        self.check(&key.span(), parse_key(json.expose(), token_uri?))
    }

    pub(super) fn acr(&mut self, table: &Range<usize>, raw: &RawRegistry) -> Option<AcrConfig> {
        let registry = self.required_registry(table, raw);
        let exchange_url = self.optional_url(&raw.exchange_url);
        let scope = match &raw.scope {
            Some(s) if s.get_ref().is_empty() || s.get_ref().contains(char::is_whitespace) => {
                self.error(&s.span(), "invalid scope: expected one scope, such as `https://management.azure.com/.default`");
                None
            }
            Some(s) => Some(s.get_ref().clone()),
            None => Some(ARM_SCOPE.to_string()),
        };
        let identity = self.azure_identity(table, raw);
        let registry = registry?;
        let exchange_url = exchange_url?.unwrap_or_else(|| {
            let host = registry.split('/').next().unwrap_or(&registry);
            format!("https://{host}/oauth2/exchange")
        });
        Some(AcrConfig {
            registry,
            exchange_url,
            scope: scope?,
            identity: identity?,
        })
    }

    /// Exactly one of `client_secret`, `federated_token_file` and
    /// `managed_identity = true`.
    fn azure_identity(&mut self, table: &Range<usize>, raw: &RawRegistry) -> Option<AzureIdentity> {
        let managed = raw.managed_identity.as_ref().filter(|m| *m.get_ref());
        let mut sources: Vec<(&str, Range<usize>)> = [
            (
                "client_secret",
                raw.client_secret.as_ref().map(Spanned::span),
            ),
            (
                "federated_token_file",
                raw.federated_token_file.as_ref().map(Spanned::span),
            ),
            ("managed_identity", managed.map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(name, span)| Some((name, span?)))
        .collect();
        sources.sort_by_key(|(_, span)| span.start);
        let Some((first, _)) = sources.first() else {
            self.error(
                table,
                "provider `acr` needs a credential source: `client_secret`, `federated_token_file` or `managed_identity = true`",
            );
            return None;
        };
        for (other, span) in &sources[1..] {
            self.error(
                span,
                format!("`{other}` is a second credential source besides `{first}`; keep one"),
            );
        }
        if sources.len() > 1 {
            return None;
        }
        let tenant = raw
            .tenant_id
            .as_ref()
            .map(|t| self.check(&t.span(), check_tenant(t.get_ref())));
        if managed.is_some() {
            self.unused(
                "authority_host",
                &raw.authority_host,
                "is not used with `managed_identity = true`: the token comes from IMDS",
            );
            let imds_endpoint = self.optional_url(&raw.imds_endpoint);
            return Some(AzureIdentity::ManagedIdentity {
                imds_endpoint: imds_endpoint?.unwrap_or_else(|| AZURE_IMDS_ENDPOINT.to_string()),
                client_id: raw.client_id.as_ref().map(|c| c.get_ref().clone()),
                tenant_id: tenant.map_or(Some(None), |t| t.map(Some))?,
            });
        }
        self.unused(
            "imds_endpoint",
            &raw.imds_endpoint,
            "is only used with `managed_identity = true`",
        );
        let authority_host = self.optional_url(&raw.authority_host);
        self.required(table, "tenant_id", &raw.tenant_id);
        let client_id = self.required(table, "client_id", &raw.client_id);
        let client_id = client_id.map(|c| c.get_ref().clone());
        let credential = match (&raw.client_secret, &raw.federated_token_file) {
            (Some(secret), _) => self.secret(secret).map(AppCredential::Secret),
            (None, Some(file)) => self.federated_token_file(file),
            (None, None) => None,
        };
        Some(AzureIdentity::App {
            authority_host: authority_host?.unwrap_or_else(|| ENTRA_AUTHORITY_HOST.to_string()),
            tenant_id: tenant.flatten()?,
            client_id: client_id?,
            credential: credential?,
        })
    }

    /// The file is read at each token request, not now: it may not exist
    /// yet, but only root or the daemon's user may be able to put it there.
    fn federated_token_file(&mut self, file: &Spanned<String>) -> Option<AppCredential> {
        let base = self.path.parent().unwrap_or(Path::new("/"));
        let path = base.join(file.get_ref());
        let checked =
            trust::check_file(&path).map_err(|e| e.describe("federated token file", &path));
        self.check(&file.span(), checked)?;
        Some(AppCredential::FederatedTokenFile(path))
    }
}

#[cfg(test)]
mod tests;
