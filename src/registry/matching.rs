//! Which registry a container image (or a Docker server URL) belongs to:
//! the host must agree, then the longest path prefix on whole segments wins
//! (`ghcr.io/org` serves `ghcr.io/org/app`, not `ghcr.io/organisation`).
//! Docker Hub short names (`ubuntu`, `org/app`) mean `docker.io`.

const DOCKER_HUB: &str = "docker.io";

/// Host and repository path of an image reference or registry prefix,
/// lower-cased host, no scheme, tag or digest.
#[derive(Debug, PartialEq, Eq)]
pub struct Location {
    pub host: String,
    pub path: String,
}

fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.into(),
        _ => host,
    }
}

fn strip_scheme(text: &str) -> &str {
    text.split_once("://").map_or(text, |(_, rest)| rest)
}

/// An image reference: `ubuntu`, `org/app:1`, `ghcr.io/org/app@sha256:…`.
pub fn image_location(image: &str) -> Location {
    let image = strip_scheme(image.trim());
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let name = match without_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => without_digest,
    };
    let (first, rest) = name.split_once('/').unwrap_or((name, ""));
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    if is_host {
        Location {
            host: canonical_host(first),
            path: rest.to_string(),
        }
    } else if rest.is_empty() {
        Location {
            host: DOCKER_HUB.into(),
            path: format!("library/{first}"),
        }
    } else {
        Location {
            host: DOCKER_HUB.into(),
            path: name.to_string(),
        }
    }
}

/// A configured registry (`host[:port][/path]`) or a Docker server URL
/// (`https://index.docker.io/v1/`).
pub fn registry_location(registry: &str) -> Location {
    let text = strip_scheme(registry.trim()).trim_end_matches('/');
    let (host, path) = text.split_once('/').unwrap_or((text, ""));
    let host = canonical_host(host);
    // Docker's own server URL carries an API version, not a repository path.
    let path = if host == DOCKER_HUB && path == "v1" {
        ""
    } else {
        path
    };
    Location {
        host,
        path: path.to_string(),
    }
}

fn covers(prefix: &Location, target: &Location) -> bool {
    prefix.host == target.host
        && (prefix.path.is_empty()
            || target.path == prefix.path
            || target
                .path
                .strip_prefix(&prefix.path)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// The most specific of `registries` (name, registry) serving `image`.
pub fn best_for_image<'a>(image: &str, registries: &'a [(String, String)]) -> Option<&'a str> {
    let target = image_location(image);
    registries
        .iter()
        .map(|(name, registry)| (name, registry_location(registry)))
        .filter(|(_, prefix)| covers(prefix, &target))
        .max_by_key(|(_, prefix)| prefix.path.split('/').filter(|s| !s.is_empty()).count())
        .map(|(name, _)| name.as_str())
}

/// The registry for a Docker server URL: the one for that host and the path
/// it names, else the host-wide one, else the first for the host by name.
pub fn best_for_server<'a>(server: &str, registries: &'a [(String, String)]) -> Option<&'a str> {
    let target = registry_location(server);
    let same_host: Vec<(&String, Location)> = registries
        .iter()
        .map(|(name, registry)| (name, registry_location(registry)))
        .filter(|(_, location)| location.host == target.host)
        .collect();
    same_host
        .iter()
        .find(|(_, l)| l.path == target.path)
        .or_else(|| same_host.iter().find(|(_, l)| l.path.is_empty()))
        .or_else(|| same_host.iter().min_by_key(|(name, _)| name.as_str()))
        .map(|(name, _)| name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registries() -> Vec<(String, String)> {
        [
            ("ghcr", "ghcr.io"),
            ("ghcr-org", "ghcr.io/org"),
            ("ghcr-team", "ghcr.io/org/team"),
            ("hub", "docker.io"),
            ("local", "localhost:5000"),
        ]
        .iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect()
    }

    #[test]
    fn images_parse_into_host_and_path() {
        assert_eq!(
            image_location("ubuntu"),
            Location {
                host: "docker.io".into(),
                path: "library/ubuntu".into()
            }
        );
        assert_eq!(
            image_location("org/app:1.2"),
            Location {
                host: "docker.io".into(),
                path: "org/app".into()
            }
        );
        assert_eq!(
            image_location("GHCR.io/org/app@sha256:abc"),
            Location {
                host: "ghcr.io".into(),
                path: "org/app".into()
            }
        );
        assert_eq!(
            image_location("localhost:5000/app:latest"),
            Location {
                host: "localhost:5000".into(),
                path: "app".into()
            }
        );
        assert_eq!(
            image_location("index.docker.io/library/alpine").host,
            "docker.io"
        );
    }

    #[test]
    fn the_longest_whole_segment_prefix_wins() {
        let r = registries();
        assert_eq!(best_for_image("ghcr.io/org/app:1", &r), Some("ghcr-org"));
        assert_eq!(
            best_for_image("ghcr.io/org/team/app", &r),
            Some("ghcr-team")
        );
        assert_eq!(best_for_image("ghcr.io/organisation/app", &r), Some("ghcr"));
        assert_eq!(best_for_image("ubuntu:22.04", &r), Some("hub"));
        assert_eq!(best_for_image("org/app", &r), Some("hub"));
        assert_eq!(best_for_image("localhost:5000/x", &r), Some("local"));
        assert_eq!(best_for_image("quay.io/x/y", &r), None);
        assert_eq!(best_for_image("localhost:5001/x", &r), None);
    }

    #[test]
    fn docker_server_urls_pick_the_host_wide_registry() {
        let r = registries();
        assert_eq!(
            best_for_server("https://index.docker.io/v1/", &r),
            Some("hub")
        );
        assert_eq!(best_for_server("ghcr.io", &r), Some("ghcr"));
        assert_eq!(best_for_server("https://ghcr.io/org", &r), Some("ghcr-org"));
        assert_eq!(best_for_server("quay.io", &r), None);
        let scoped = vec![
            ("b".to_string(), "ghcr.io/b".to_string()),
            ("a".to_string(), "ghcr.io/a".to_string()),
        ];
        assert_eq!(best_for_server("ghcr.io", &scoped), Some("a"));
    }
}
