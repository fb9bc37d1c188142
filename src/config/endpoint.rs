//! OSMO-style data endpoints, the `endpoint` key of a store.

/// An OSMO-style data endpoint: `s3://bucket`, `gs://bucket`,
/// `tos://host/bucket`, `azure://account/container`.
pub(super) struct Endpoint {
    pub(super) scheme: String,
    pub(super) bucket: String,
    pub(super) endpoint_url: Option<String>,
    pub(super) account: Option<String>,
}

pub(super) fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let invalid = || {
        format!(
            "invalid endpoint `{text}`, expected s3://bucket, gs://bucket, tos://host/bucket or azure://account/container"
        )
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let endpoint = |bucket: &str, url: Option<String>, account: Option<String>| Endpoint {
        scheme: scheme.to_string(),
        bucket: bucket.to_string(),
        endpoint_url: url,
        account,
    };
    match (scheme, parts.as_slice()) {
        ("s3", [bucket]) if !bucket.is_empty() => Ok(endpoint(bucket, None, None)),
        ("gs", [bucket]) if !bucket.is_empty() => Ok(endpoint(
            bucket,
            Some("https://storage.googleapis.com".to_string()),
            None,
        )),
        ("tos", [host, bucket]) if !host.is_empty() && !bucket.is_empty() => {
            Ok(endpoint(bucket, Some(format!("https://{host}")), None))
        }
        ("azure", [account, container]) if !account.is_empty() && !container.is_empty() => {
            Ok(endpoint(container, None, Some(account.to_string())))
        }
        _ => Err(invalid()),
    }
}
