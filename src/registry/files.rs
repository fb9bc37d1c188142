//! The files of `registries/<name>/` and `docker/config.json`, rendered from
//! a credential.

use super::Credential;
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::SystemTime;
use zeroize::Zeroizing;

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
    at.map(crate::status::timestamp).unwrap_or_default()
}

pub fn render(file: RegistryFile, credential: &Credential) -> Secret {
    match file {
        RegistryFile::Token => credential.token.clone(),
        RegistryFile::Username => credential.username.clone(),
        RegistryFile::Password => credential.password.clone(),
        RegistryFile::Registry => Secret::from(credential.registry.clone()),
        RegistryFile::ExpiresAt => Secret::from(rfc3339(credential.expires_at)),
        RegistryFile::AuthJson => {
            let username = text(&credential.username);
            let password = text(&credential.password);
            let document = AuthJson {
                username: &username,
                password: &password,
                registry: &credential.registry,
                expires_at: credential.expires_at.map(|t| rfc3339(Some(t))),
            };
            let secrets = credential.username.len() + credential.password.len();
            json_secret(&document, secrets, false)
        }
    }
}

#[derive(Serialize)]
struct AuthJson<'a> {
    username: &'a str,
    password: &'a str,
    registry: &'a str,
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct DockerConfig<'a> {
    auths: BTreeMap<&'a str, DockerAuth>,
}

#[derive(Serialize)]
struct DockerAuth {
    auth: Base64Secret,
}

/// base64 of a secret, in a buffer wiped when dropped.
struct Base64Secret(Zeroizing<Vec<u8>>);

impl Base64Secret {
    fn encode(bytes: &[u8]) -> Self {
        let mut encoded = Zeroizing::new(vec![0; bytes.len().div_ceil(3) * 4]);
        let written = BASE64.encode_slice(bytes, &mut encoded[..]).unwrap_or(0);
        encoded.truncate(written);
        Base64Secret(encoded)
    }
}

impl Serialize for Base64Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // base64's alphabet is ASCII.
        serializer.serialize_str(std::str::from_utf8(&self.0).unwrap_or_default())
    }
}

/// A secret's bytes as text; a copy (wiped when dropped) only when they
/// are not UTF-8.
fn text(secret: &Secret) -> Zeroizing<String> {
    Zeroizing::new(String::from_utf8_lossy(secret.expose()).into_owned())
}

/// `document` as JSON, written into one buffer sized so that it never
/// grows: growing would leave an unwiped copy of the secrets behind.
fn json_secret(document: &impl Serialize, secret_bytes: usize, pretty: bool) -> Secret {
    // JSON escapes a byte in at most 6 (\u00XX); base64 takes 4 per 3.
    let capacity = secret_bytes * 6 + 4096;
    let mut buffer = Zeroizing::new(Vec::with_capacity(capacity));
    let written = match pretty {
        true => serde_json::to_writer_pretty(&mut *buffer, document),
        false => serde_json::to_writer(&mut *buffer, document),
    };
    if written.is_err() {
        buffer.clear();
    }
    Secret::new(std::mem::take(&mut *buffer))
}

/// `{"auths":{"<registry>":{"auth":"base64(user:pass)"}}}` for every
/// credential that has one. Docker Hub is also listed under the key the
/// docker CLI looks up.
pub fn docker_config_json<'a>(credentials: impl IntoIterator<Item = &'a Credential>) -> Secret {
    let mut auths = BTreeMap::new();
    let mut secret_bytes = 0;
    for credential in credentials.into_iter().filter(|c| c.has_secret()) {
        let (user, password) = (credential.username.expose(), credential.password.expose());
        let mut pair = Zeroizing::new(Vec::with_capacity(user.len() + 1 + password.len()));
        pair.extend_from_slice(user);
        pair.push(b':');
        pair.extend_from_slice(password);
        // Each entry's key and punctuation count as well.
        secret_bytes += 2 * pair.len() + credential.registry.len() + 64;
        if matches!(
            credential.registry.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        ) {
            let auth = Base64Secret::encode(&pair);
            auths.insert("https://index.docker.io/v1/", DockerAuth { auth });
            secret_bytes += 2 * pair.len() + 64;
        }
        let auth = Base64Secret::encode(&pair);
        auths.insert(credential.registry.as_str(), DockerAuth { auth });
    }
    json_secret(&DockerConfig { auths }, secret_bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
