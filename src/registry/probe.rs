//! `credfs check --probe`: proves a credential works by logging in to the
//! registry's `/v2/` the way a Docker client does (Basic, or a Bearer token
//! from the realm it names). Plain http for loopback registries (tests,
//! local mirrors), https otherwise. Reports never carry a secret.

use super::Credential;
use super::matching::registry_location;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::time::Duration;
use zeroize::Zeroizing;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What a login attempt showed.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Accepted(String),
    /// The registry could not be reached: the credential is unproven.
    Unreachable(String),
    Refused(String),
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    matches!(name, "localhost" | "[::1]") || name.starts_with("127.")
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Bearer realm="…",service="…",scope="…"` → (realm, query).
fn bearer_challenge(challenge: &str) -> Option<(String, Vec<(String, String)>)> {
    let params = challenge.strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut query = Vec::new();
    for part in params.split(',') {
        let (key, value) = part.trim().split_once('=')?;
        let value = value.trim_matches('"').to_string();
        match key {
            "realm" => realm = Some(value),
            "service" | "scope" => query.push((key.to_string(), value)),
            _ => {}
        }
    }
    Some((realm?, query))
}

pub fn login(credential: &Credential) -> Login {
    let location = registry_location(&credential.registry);
    let host = match location.host.as_str() {
        "docker.io" => "registry-1.docker.io".to_string(),
        other => other.to_string(),
    };
    let scheme = if is_loopback(&host) { "http" } else { "https" };
    let url = format!("{scheme}://{host}/v2/");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let anonymous = match agent.get(&url).call() {
        Ok(response) => response,
        Err(e) => return Login::Unreachable(format!("{host}: {e}")),
    };
    if anonymous.status().is_success() {
        return Login::Accepted(format!("{host} needs no login"));
    }
    let challenge = header(&anonymous, "www-authenticate").unwrap_or_default();
    let mut pair = Zeroizing::new(credential.username.expose().to_vec());
    pair.push(b':');
    pair.extend_from_slice(credential.password.expose());
    let basic = Zeroizing::new(format!("Basic {}", BASE64.encode(&*pair)));
    let authorization = if let Some((realm, query)) = bearer_challenge(&challenge) {
        let mut request = agent.get(&realm).header("Authorization", basic.as_str());
        for (key, value) in &query {
            request = request.query(key, value);
        }
        let token_response = match request.call() {
            Ok(response) => response,
            Err(e) => return Login::Unreachable(format!("token service of {host}: {e}")),
        };
        if !token_response.status().is_success() {
            return Login::Refused(format!(
                "{host} refused the credential ({})",
                token_response.status()
            ));
        }
        let text = Zeroizing::new(
            token_response
                .into_body()
                .read_to_string()
                .unwrap_or_default(),
        );
        let body: serde_json::Value = match serde_json::from_str(&text) {
            Ok(body) => body,
            Err(_) => return Login::Refused(format!("{host} answered no token")),
        };
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .unwrap_or_default();
        Zeroizing::new(format!("Bearer {token}"))
    } else {
        basic
    };
    match agent
        .get(&url)
        .header("Authorization", authorization.as_str())
        .call()
    {
        Ok(response) if response.status().is_success() => {
            Login::Accepted(format!("logged in to {host}"))
        }
        Ok(response) => Login::Refused(format!(
            "{host} refused the credential ({})",
            response.status()
        )),
        Err(e) => Login::Unreachable(format!("{host}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let (realm, query) = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull""#,
        )
        .unwrap();
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(
            query[0],
            ("service".to_string(), "registry.docker.io".to_string())
        );
        assert!(bearer_challenge("Basic realm=\"x\"").is_none());
    }

    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("ghcr.io"));
    }
}
