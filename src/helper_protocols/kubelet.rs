//! The kubelet's image credential provider plugin
//! (`credentialprovider.kubelet.k8s.io/v1`): one `CredentialProviderRequest`
//! on stdin, one `CredentialProviderResponse` on stdout, answered from the
//! mounted tree. The plugin never calls a cloud: the daemon does, once per
//! node, and every pull on that node shares its cached token.

use super::{auth_json, fail, read_auth, registries};
use crate::registry::matching;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// The versions of the protocol the kubelet may send; the answer carries
/// the request's own.
const API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

/// A request is a few hundred bytes; a service-account token makes it a few
/// KiB. Anything near this is not the kubelet.
const MAX_REQUEST: u64 = 1 << 20;

/// What the kubelet asked: the request's apiVersion and the image.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    api_version: String,
    image: String,
}

/// The fields read from a request. Anything else, the service-account
/// token above all, is skipped while parsing and never copied out of the
/// (wiped) request text.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RawRequest {
    kind: Option<Value>,
    #[serde(rename = "apiVersion")]
    api_version: Option<Value>,
    image: Option<Value>,
}

fn parse_request(text: &[u8]) -> Result<Request, String> {
    let raw: RawRequest = serde_json::from_slice(text)
        .map_err(|e| format!("the request on stdin is not JSON: {e}"))?;
    fn field(value: &Option<Value>) -> Option<&str> {
        value.as_ref().and_then(Value::as_str)
    }
    match field(&raw.kind) {
        Some("CredentialProviderRequest") => {}
        Some(other) => {
            return Err(format!(
                "kind is {other:?}; expected \"CredentialProviderRequest\""
            ));
        }
        None => return Err("the request has no kind".into()),
    }
    let api_version = field(&raw.api_version).ok_or("the request has no apiVersion")?;
    if !API_VERSIONS.contains(&api_version) {
        return Err(format!(
            "apiVersion {api_version:?} is not one of {}",
            API_VERSIONS.join(", ")
        ));
    }
    let image = field(&raw.image)
        .map(str::trim)
        .filter(|image| !image.is_empty())
        .ok_or("the request has no image")?;
    Ok(Request {
        api_version: api_version.to_string(),
        image: image.to_string(),
    })
}

/// `d` as Go's `time.Duration.String()` writes whole seconds: `0s`, `45s`,
/// `2m5s`, `6h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// How long the kubelet may keep a credential: half of what is left of it,
/// so that it asks again well before the token expires; nothing for a
/// credential whose expiry is unknown (a rotated static secret must not
/// outlive its rotation in the kubelet's cache).
fn cache_duration(expires_at: Option<&str>, now: SystemTime) -> Duration {
    expires_at
        .and_then(|at| humantime::parse_rfc3339(at).ok())
        .and_then(|at| at.duration_since(now).ok())
        .map_or(Duration::ZERO, |left| {
            Duration::from_secs(left.as_secs() / 2)
        })
}

/// A `CredentialProviderResponse`, borrowing the credential: serialized
/// straight into wiped memory, never held in a `serde_json::Value`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    kind: &'static str,
    api_version: &'a str,
    cache_key_type: &'static str,
    cache_duration: String,
    auth: BTreeMap<&'a str, AuthConfig<'a>>,
}

#[derive(serde::Serialize)]
struct AuthConfig<'a> {
    username: &'a str,
    password: &'a str,
}

/// The answer for `request`, from the registries this process may read
/// under `mount`, with a newline. No registry for the image, or an open
/// one: no auth, and nothing cached, so that a registry added to the config
/// counts at once.
fn respond(request: &Request, mount: &Path, now: SystemTime) -> Result<Zeroizing<Vec<u8>>, String> {
    let found = registries(mount)?;
    let credential = match matching::best_for_image(&request.image, &found) {
        Some(name) => Some(read_auth(&auth_json(mount, name))?),
        None => None,
    };
    let mut response = Response {
        kind: "CredentialProviderResponse",
        api_version: &request.api_version,
        cache_key_type: "Registry",
        cache_duration: go_duration(Duration::ZERO),
        auth: BTreeMap::new(),
    };
    let mut room = 1024 + request.api_version.len();
    if let Some(found) = credential
        .as_ref()
        .filter(|f| !(f.username.is_empty() && f.password.is_empty()))
    {
        if !matching::registry_location(&found.registry).path.is_empty() {
            response.cache_key_type = "Image";
        }
        response.cache_duration = go_duration(cache_duration(found.expires_at.as_deref(), now));
        response.auth.insert(
            &found.registry,
            AuthConfig {
                username: &found.username,
                password: &found.password,
            },
        );
        // JSON escaping at most sextuples a byte.
        room += 6 * (found.registry.len() + found.username.len() + found.password.len());
    }
    // Sized once so that growing never leaves a copy behind in freed memory.
    let mut text = Zeroizing::new(Vec::with_capacity(room));
    serde_json::to_writer(&mut *text, &response)
        .map_err(|e| format!("cannot write the response: {e}"))?;
    text.push(b'\n');
    Ok(text)
}

/// `credfs kubelet-credential-provider`, also run as `credfs-kubelet-provider`.
/// Exit 0 with a response (an empty `auth` when nothing matches); exit 1
/// with one line on stderr for a malformed request or an unreadable tree.
pub fn run(mount: &Path) -> ExitCode {
    // Room for the largest request read, so that no copy of the token is
    // left behind by a growing buffer.
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_REQUEST as usize + 1));
    if let Err(e) = std::io::stdin().take(MAX_REQUEST).read_to_end(&mut text) {
        return fail(&format!("cannot read the request from stdin: {e}"));
    }
    let answer =
        parse_request(&text).and_then(|request| respond(&request, mount, SystemTime::now()));
    match answer {
        // One write of whole lines goes past stdout's buffer.
        Ok(response) => match std::io::stdout().lock().write_all(&response) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("cannot write the response: {e}")),
        },
        Err(message) => fail(&message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        for (seconds, text) in [
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (60, "1m0s"),
            (125, "2m5s"),
            (3600, "1h0m0s"),
            (21_600, "6h0m0s"),
            (43_199, "11h59m59s"),
            (90_061, "25h1m1s"),
        ] {
            assert_eq!(go_duration(Duration::from_secs(seconds)), text);
        }
        assert_eq!(go_duration(Duration::from_millis(1_999)), "1s");
    }

    #[test]
    fn the_kubelet_may_cache_half_of_what_is_left() {
        let now = humantime::parse_rfc3339("2026-12-03T00:00:00Z").unwrap();
        let cases = [
            (Some("2026-12-03T12:00:00Z"), 6 * 3600),
            (Some("2026-12-03T00:00:01Z"), 0),
            (Some("2026-12-02T00:00:00Z"), 0),
            (Some("not a time"), 0),
            (None, 0),
        ];
        for (expires_at, seconds) in cases {
            assert_eq!(
                cache_duration(expires_at, now),
                Duration::from_secs(seconds),
                "{expires_at:?}"
            );
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_the_reason() {
        let cases: [(&str, &str); 7] = [
            ("", "not JSON"),
            ("[1]", "no kind"),
            (
                r#"{"kind":"Pod","apiVersion":"v1","image":"a"}"#,
                "kind is \"Pod\"",
            ),
            (
                r#"{"kind":"CredentialProviderRequest","image":"a"}"#,
                "no apiVersion",
            ),
            (
                r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v2","image":"a"}"#,
                "is not one of",
            ),
            (
                r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}"#,
                "no image",
            ),
            (
                r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1","image":" "}"#,
                "no image",
            ),
        ];
        for (text, reason) in cases {
            let error = parse_request(text.as_bytes()).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn a_request_keeps_its_version_and_may_carry_more_fields() {
        let text = r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","image":"ghcr.io/org/app","serviceAccountToken":"t","serviceAccountAnnotations":{}}"#;
        assert_eq!(
            parse_request(text.as_bytes()).unwrap(),
            Request {
                api_version: "credentialprovider.kubelet.k8s.io/v1beta1".into(),
                image: "ghcr.io/org/app".into(),
            }
        );
    }
}
