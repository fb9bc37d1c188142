//! The S3 client's shared pieces: error mapping (operation and key, never a
//! credential), times, keys, secret text.

use crate::error::{Error, ErrorKind};
use crate::secret::Secret;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::time::SystemTime;

pub(super) fn text(secret: &Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
}

/// Maps an SDK failure to the errno a reader acts on: missing ENOENT,
/// denied EACCES, anything else (down, timing out after the SDK's retries)
/// EIO. The message names the operation and object, never a key.
pub(super) fn s3_error<E>(operation: &str, what: &str, error: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or_default()
        .to_string();
    let kind = match (status, code.as_str()) {
        (Some(404), _) | (_, "NoSuchKey" | "NotFound" | "NoSuchBucket") => ErrorKind::NotFound,
        (Some(403), _) | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::Provider,
    };
    Error::new(
        kind,
        format!("S3 {operation} {what}: {}", DisplayErrorContext(&error)),
    )
}

pub(super) fn modified(at: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    at.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Percent-encodes a key for x-amz-copy-source, keeping `/`.
pub(super) fn urlencode_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(urlencode_key("p/a b+c.zip"), "p/a%20b%2Bc.zip");
    }
}
