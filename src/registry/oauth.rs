//! What the cloud token providers (`gcp`, `acr`) share: an HTTP client
//! that follows no redirect, token requests whose errors name the request,
//! the endpoint, the status and the service's own error code but never a
//! request or response body, access-token replies, and JWT claims read
//! without verifying (a token's own expiry, its tenant).

use crate::error::{Error, Result};
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request: a token service that hangs fails the fetch, which
/// the cache then retries with backoff.
const TIMEOUT: Duration = Duration::from_secs(30);
/// What an error keeps of a service's error description.
const DESCRIPTION_CHARS: usize = 200;

/// How requests reach a service.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the proxy the environment names (`HTTPS_PROXY`), if any.
    Proxied,
    /// Never through a proxy: a metadata server answers the machine itself
    /// only (Google's and Azure's own libraries bypass proxies too).
    Direct,
}

/// One provider's HTTP client, built on first use.
pub struct Http {
    route: Route,
    client: OnceLock<std::result::Result<reqwest::Client, String>>,
}

/// A successful response's body, wiped when dropped.
pub struct Body {
    /// The request and endpoint, for errors.
    source: String,
    bytes: Zeroizing<Vec<u8>>,
}

/// An OAuth2 access token and when it expires.
#[derive(Debug)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_at: SystemTime,
}

/// `expires_in` as JSON number or, as Azure's IMDS sends it, a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
    expires_in: Option<Seconds>,
}

/// The fields of an error reply worth a log line: OAuth2's
/// `error`/`error_description`, Azure's `error: {code, message}`, and the
/// Docker registry's `errors: [{code, message}]` (ACR's exchange).
#[derive(Deserialize, Default)]
struct ErrorReply {
    error: Option<serde_json::Value>,
    error_description: Option<String>,
    errors: Option<Vec<ErrorItem>>,
}

#[derive(Deserialize)]
struct ErrorItem {
    code: Option<String>,
    message: Option<String>,
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(DESCRIPTION_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// `: code: description` from an error reply, or nothing when the body is
/// not one (an HTML page, a proxy's text): no body is ever quoted whole.
fn service_error(body: &[u8]) -> String {
    let reply: ErrorReply = serde_json::from_slice(body).unwrap_or_default();
    let (code, description) = match (reply.error, reply.errors) {
        (Some(serde_json::Value::String(code)), _) => (Some(code), reply.error_description),
        (Some(serde_json::Value::Object(object)), _) => {
            let field = |name: &str| {
                object
                    .get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            (field("code"), field("message"))
        }
        (_, Some(errors)) => match errors.into_iter().next() {
            Some(item) => (item.code, item.message),
            None => (None, None),
        },
        _ => (None, reply.error_description),
    };
    [code, description]
        .into_iter()
        .flatten()
        .filter(|part| !part.is_empty())
        .map(|part| format!(": {}", cut(&part)))
        .collect()
}

impl Http {
    pub fn new(route: Route) -> Self {
        Http {
            route,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client> {
        let built = self.client.get_or_init(|| {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(TIMEOUT);
            if self.route == Route::Direct {
                builder = builder.no_proxy();
            }
            builder.build().map_err(|e| chain(&e))
        });
        built
            .as_ref()
            .map_err(|e| Error::provider(format!("cannot set up an HTTP client: {e}")))
    }

    /// POSTs `form` (which may hold secrets) to `url`; `what` names the
    /// request in errors.
    pub async fn post_form(&self, what: &str, url: &str, form: &[(&str, &str)]) -> Result<Body> {
        let request = self.client()?.post(url).form(form);
        send(what, url, request).await
    }

    /// GETs `url` with `query` and one `header` (a metadata server's).
    pub async fn get(
        &self,
        what: &str,
        url: &str,
        query: &[(&str, &str)],
        header: (&str, &str),
    ) -> Result<Body> {
        let request = self
            .client()?
            .get(url)
            .query(query)
            .header(header.0, header.1);
        send(what, url, request).await
    }
}

async fn send(what: &str, url: &str, request: reqwest::RequestBuilder) -> Result<Body> {
    let unreachable = |e: reqwest::Error| {
        Error::provider(format!(
            "{what}: no answer from {url}: {}",
            chain(&e.without_url())
        ))
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let bytes = Zeroizing::new(response.bytes().await.map_err(unreachable)?.to_vec());
    if !status.is_success() {
        return Err(Error::provider(format!(
            "{what}: {url} answered {status}{}",
            service_error(&bytes)
        )));
    }
    Ok(Body {
        source: format!("{what}: {url}"),
        bytes,
    })
}

impl Body {
    /// The body as `T`; an error never quotes it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.bytes)
            .map_err(|_| self.error("answered JSON of another shape"))
    }

    pub fn error(&self, problem: &str) -> Error {
        Error::provider(format!("{} {problem}", self.source))
    }

    /// An OAuth2 token reply: `access_token` and `expires_in` seconds from
    /// `now`.
    pub fn access_token(&self, now: SystemTime) -> Result<AccessToken> {
        let reply: TokenReply = self.json()?;
        let token = reply
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.error("answered no access_token"))?;
        let seconds = match reply.expires_in {
            Some(Seconds::Number(n)) => Some(n),
            Some(Seconds::Text(text)) => text.trim().parse().ok(),
            None => None,
        }
        .ok_or_else(|| self.error("answered no expires_in"))?;
        Ok(AccessToken {
            token: Secret::from(token),
            expires_at: now + Duration::from_secs(seconds),
        })
    }

    /// A string field of a JSON object reply (ACR's `refresh_token`).
    pub fn secret_field(&self, name: &str) -> Result<Secret> {
        let reply: serde_json::Map<String, serde_json::Value> = self.json()?;
        match reply.get(name).and_then(|v| v.as_str()) {
            Some(value) if !value.is_empty() => Ok(Secret::from(value.to_string())),
            _ => Err(self.error(&format!("answered no {name}"))),
        }
    }
}

/// A claim of a JWT's payload, read without verifying the signature: the
/// service that issued the token vouches for it, and credfs only learns
/// when it expires or which tenant it is of.
pub fn unverified_claim<T: DeserializeOwned>(token: &Secret, claim: &str) -> Option<T> {
    let text = std::str::from_utf8(token.expose()).ok()?;
    let mut parts = text.split('.');
    let payload = parts.nth(1)?;
    let decoded = Zeroizing::new(URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?);
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&decoded).ok()?;
    serde_json::from_value(claims.get(claim)?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Body {
        Body {
            source: "token request: http://t/token".to_string(),
            bytes: Zeroizing::new(json.as_bytes().to_vec()),
        }
    }

    #[test]
    fn token_replies_take_expires_in_as_number_or_string() {
        let now = SystemTime::UNIX_EPOCH;
        let token = body(r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#)
            .access_token(now)
            .unwrap();
        assert_eq!(token.token.expose(), b"ya29.x");
        assert_eq!(token.expires_at, now + Duration::from_secs(3599));
        let imds = body(r#"{"access_token":"eyJ","expires_in":"86399"}"#);
        assert_eq!(
            imds.access_token(now).unwrap().expires_at,
            now + Duration::from_secs(86399)
        );
    }

    #[test]
    fn bad_token_replies_never_quote_the_body() {
        let now = SystemTime::now();
        for (json, expected) in [
            (r#"{"expires_in":3599}"#, "answered no access_token"),
            (r#"{"access_token":"hunter2"}"#, "answered no expires_in"),
            (
                r#"{"access_token":"hunter2","expires_in":"soon"}"#,
                "answered no expires_in",
            ),
            (
                r#"{"access_token":["hunter2"]}"#,
                "answered JSON of another shape",
            ),
            ("hunter2", "answered JSON of another shape"),
        ] {
            let message = body(json).access_token(now).unwrap_err().to_string();
            assert_eq!(
                message,
                format!("token request: http://t/token {expected}"),
                "{json}"
            );
        }
    }

    #[test]
    fn error_replies_keep_the_code_and_a_short_description() {
        assert_eq!(
            service_error(
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            ": invalid_grant: Invalid JWT Signature."
        );
        assert_eq!(
            service_error(br#"{"error":{"code":"identity_not_found","message":"no identity"}}"#),
            ": identity_not_found: no identity"
        );
        assert_eq!(
            service_error(br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad token"}]}"#),
            ": UNAUTHORIZED: bad token"
        );
        assert_eq!(service_error(b"<html>secret page</html>"), "");
        let long = format!(
            r#"{{"error":"x","error_description":"{}"}}"#,
            "d".repeat(500)
        );
        assert_eq!(
            service_error(long.as_bytes()).chars().count(),
            2 + 1 + 2 + 200 + 1
        );
    }

    #[test]
    fn jwt_claims_are_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"exp":1700000000,"tid":"t-1"}"#);
        let token = Secret::from(format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"));
        assert_eq!(unverified_claim::<u64>(&token, "exp"), Some(1_700_000_000));
        assert_eq!(
            unverified_claim::<String>(&token, "tid").as_deref(),
            Some("t-1")
        );
        assert_eq!(unverified_claim::<u64>(&token, "nbf"), None);
        assert_eq!(
            unverified_claim::<u64>(&Secret::from("opaque".to_string()), "exp"),
            None
        );
        assert_eq!(
            unverified_claim::<u64>(&Secret::from("a.!!!.c".to_string()), "exp"),
            None
        );
    }
}
