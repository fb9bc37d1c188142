//! The AWS SDK directly: what an application that talks S3 itself gets.
//! One stream (one GetObject; a multipart upload one part at a time), and
//! the parallel transfers `aws s3 cp` and mountpoint-s3 make (8 MiB ranges
//! and parts, 8 in flight).

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub const BUCKET: &str = "bench";
pub const KEY_ID: &str = "bench-ak";
pub const SECRET: &str = "bench-sk-9f8e7d";
pub const PART: u64 = 8 << 20;
pub const IN_FLIGHT: usize = 8;

pub async fn client(endpoint: &str) -> Client {
    let credentials = aws_sdk_s3::config::Credentials::new(KEY_ID, SECRET, None, None, "bench");
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// A multipart upload of `path` in `PART` parts, `in_flight` at once, each
/// streamed from the file.
pub async fn upload(client: &Client, path: &Path, key: &str, in_flight: usize) {
    let size = std::fs::metadata(path).expect("archive").len();
    let created = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("CreateMultipartUpload");
    let id = created.upload_id().expect("upload id").to_string();
    let mut running = JoinSet::new();
    let mut parts = Vec::new();
    for (index, offset) in (0..size).step_by(PART as usize).enumerate() {
        while running.len() >= in_flight {
            parts.push(
                running
                    .join_next()
                    .await
                    .expect("a part")
                    .expect("part task"),
            );
        }
        let number = index as i32 + 1;
        let body = ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(Length::Exact(PART.min(size - offset)))
            .build()
            .await
            .expect("part body");
        let request = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(number)
            .body(body);
        running.spawn(async move {
            let sent = request.send().await.expect("UploadPart");
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(String::from))
                .build()
        });
    }
    while let Some(part) = running.join_next().await {
        parts.push(part.expect("part task"));
    }
    parts.sort_by_key(|p| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("CompleteMultipartUpload");
}

/// One GetObject, read to its end; the bytes read.
pub async fn download(client: &Client, key: &str) -> u64 {
    let mut body = client
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("GetObject")
        .body;
    let mut total = 0;
    while let Some(chunk) = body.try_next().await.expect("body") {
        total += chunk.len() as u64;
    }
    total
}

/// Ranged GETs of `PART`, `in_flight` at once; the bytes read.
pub async fn download_ranges(client: &Client, key: &str, size: u64, in_flight: usize) -> u64 {
    let mut running = JoinSet::new();
    let mut total = 0;
    for offset in (0..size).step_by(PART as usize) {
        while running.len() >= in_flight {
            total += running
                .join_next()
                .await
                .expect("range")
                .expect("range task");
        }
        let end = (offset + PART).min(size) - 1;
        let request = client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .range(format!("bytes={offset}-{end}"));
        running.spawn(async move {
            let mut body = request.send().await.expect("ranged GetObject").body;
            let mut got = 0;
            while let Some(chunk) = body.try_next().await.expect("body") {
                got += chunk.len() as u64;
            }
            got
        });
    }
    while let Some(got) = running.join_next().await {
        total += got.expect("range task");
    }
    total
}

/// One PutObject of `bytes`, timed.
pub async fn put(client: &Client, key: &str, bytes: &[u8]) -> Duration {
    let body = ByteStream::from(bytes.to_vec());
    let start = Instant::now();
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body)
        .send()
        .await
        .expect("PutObject");
    start.elapsed()
}

/// One GetObject read to its end, timed.
pub async fn get(client: &Client, key: &str) -> Duration {
    let start = Instant::now();
    download(client, key).await;
    start.elapsed()
}

pub async fn delete(client: &Client, key: &str) {
    let _ = client.delete_object().bucket(BUCKET).key(key).send().await;
}
