//! The kubelet's image credential provider plugin
//! (`credentialprovider.kubelet.k8s.io/v1`): one `CredentialProviderRequest`
//! on stdin, one `CredentialProviderResponse` on stdout, answered from the
//! mounted tree. The plugin never calls a cloud: the daemon does, once per
//! node, and every pull on that node shares its cached token.

use super::{auth_json, fail, read_auth, registries};
use crate::registry::matching;
use serde_json::{Map, Value, json};
use std::io::Read;
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

fn parse_request(text: &[u8]) -> Result<Request, String> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| format!("the request on stdin is not JSON: {e}"))?;
    let field = |key: &str| value.get(key).and_then(Value::as_str);
    match field("kind") {
        Some("CredentialProviderRequest") => {}
        Some(other) => {
            return Err(format!(
                "kind is {other:?}; expected \"CredentialProviderRequest\""
            ));
        }
        None => return Err("the request has no kind".into()),
    }
    let api_version = field("apiVersion").ok_or("the request has no apiVersion")?;
    if !API_VERSIONS.contains(&api_version) {
        return Err(format!(
            "apiVersion {api_version:?} is not one of {}",
            API_VERSIONS.join(", ")
        ));
    }
    let image = field("image")
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

/// The answer for `request`, from the registries this process may read
/// under `mount`. No registry for the image, or an open one: no auth, and
/// nothing cached, so that a registry added to the config counts at once.
fn respond(request: &Request, mount: &Path, now: SystemTime) -> Result<Zeroizing<String>, String> {
    let found = registries(mount)?;
    let mut auth = Map::new();
    let mut cache_key_type = "Registry";
    let mut cache_for = Duration::ZERO;
    if let Some(name) = matching::best_for_image(&request.image, &found) {
        let found = read_auth(&auth_json(mount, name))?;
        if !(found.username.is_empty() && found.password.is_empty()) {
            if !matching::registry_location(&found.registry).path.is_empty() {
                cache_key_type = "Image";
            }
            cache_for = cache_duration(found.expires_at.as_deref(), now);
            auth.insert(
                found.registry.clone(),
                json!({ "username": *found.username, "password": *found.password }),
            );
        }
    }
    let response = json!({
        "kind": "CredentialProviderResponse",
        "apiVersion": request.api_version,
        "cacheKeyType": cache_key_type,
        "cacheDuration": go_duration(cache_for),
        "auth": Value::Object(auth),
    });
    Ok(Zeroizing::new(response.to_string()))
}

/// `credfs kubelet-credential-provider`, also run as `credfs-kubelet-provider`.
/// Exit 0 with a response (an empty `auth` when nothing matches); exit 1
/// with one line on stderr for a malformed request or an unreadable tree.
pub fn run(mount: &Path) -> ExitCode {
    let mut text = Zeroizing::new(Vec::new());
    if let Err(e) = std::io::stdin().take(MAX_REQUEST).read_to_end(&mut text) {
        return fail(&format!("cannot read the request from stdin: {e}"));
    }
    let answer =
        parse_request(&text).and_then(|request| respond(&request, mount, SystemTime::now()));
    match answer {
        Ok(response) => {
            println!("{}", *response);
            ExitCode::SUCCESS
        }
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
