//! The files of `registries/<name>/` and `docker/config.json`, rendered from
//! a credential.

use super::Credential;
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistryFile {
    Token,
    Username,
    Password,
    Registry,
    ExpiresAt,
    AuthJson,
}

impl RegistryFile {
    pub const ALL: [RegistryFile; 6] = [
        RegistryFile::Token,
        RegistryFile::Username,
        RegistryFile::Password,
        RegistryFile::Registry,
        RegistryFile::ExpiresAt,
        RegistryFile::AuthJson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RegistryFile::Token => "token",
            RegistryFile::Username => "username",
            RegistryFile::Password => "password",
            RegistryFile::Registry => "registry",
            RegistryFile::ExpiresAt => "expires_at",
            RegistryFile::AuthJson => "auth.json",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

fn rfc3339(at: Option<SystemTime>) -> String {
    at.map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

pub fn render(file: RegistryFile, credential: &Credential) -> Secret {
    match file {
        RegistryFile::Token => credential.token.clone(),
        RegistryFile::Username => credential.username.clone(),
        RegistryFile::Password => credential.password.clone(),
        RegistryFile::Registry => Secret::from(credential.registry.clone()),
        RegistryFile::ExpiresAt => Secret::from(rfc3339(credential.expires_at)),
        RegistryFile::AuthJson => {
            let text = |s: &Secret| String::from_utf8_lossy(s.expose()).into_owned();
            let expires_at = credential.expires_at.map(|t| rfc3339(Some(t)));
            let document = json!({
                "username": text(&credential.username),
                "password": text(&credential.password),
                "registry": credential.registry,
                "expires_at": expires_at,
            });
            Secret::from(document.to_string())
        }
    }
}

/// `{"auths":{"<registry>":{"auth":"base64(user:pass)"}}}` for every
/// credential that has one. Docker Hub is also listed under the key the
/// docker CLI looks up.
pub fn docker_config_json<'a>(credentials: impl IntoIterator<Item = &'a Credential>) -> Secret {
    let mut auths = Map::new();
    for credential in credentials.into_iter().filter(|c| c.has_secret()) {
        let mut pair = credential.username.expose().to_vec();
        pair.push(b':');
        pair.extend_from_slice(credential.password.expose());
        let auth = json!({ "auth": BASE64.encode(&pair) });
        zeroize::Zeroize::zeroize(&mut pair);
        if matches!(
            credential.registry.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        ) {
            auths.insert("https://index.docker.io/v1/".to_string(), auth.clone());
        }
        auths.insert(credential.registry.clone(), auth);
    }
    let document = json!({ "auths": Value::Object(auths) });
    Secret::from(serde_json::to_string_pretty(&document).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(registry: &str, user: &str, pass: &str) -> Credential {
        Credential {
            registry: registry.to_string(),
            username: Secret::from(user.to_string()),
            password: Secret::from(pass.to_string()),
            token: Secret::from(pass.to_string()),
            expires_at: None,
        }
    }

    #[test]
    fn docker_config_lists_registries_with_credentials() {
        let creds = [
            credential("ghcr.io/org", "u", "p"),
            credential("localhost:5000", "", ""),
            credential("docker.io", "d", "x"),
        ];
        let json: Value = serde_json::from_slice(docker_config_json(&creds).expose()).unwrap();
        assert_eq!(json["auths"]["ghcr.io/org"]["auth"], BASE64.encode("u:p"));
        assert!(json["auths"].get("localhost:5000").is_none());
        assert_eq!(
            json["auths"]["https://index.docker.io/v1/"]["auth"],
            BASE64.encode("d:x")
        );
    }

    #[test]
    fn auth_json_has_null_expiry_when_it_never_expires() {
        let c = credential("r", "u", "p");
        let json: Value =
            serde_json::from_slice(render(RegistryFile::AuthJson, &c).expose()).unwrap();
        assert_eq!(
            json,
            json!({"username":"u","password":"p","registry":"r","expires_at":null})
        );
        assert!(render(RegistryFile::ExpiresAt, &c).is_empty());
    }
}
