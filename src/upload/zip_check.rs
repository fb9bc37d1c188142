//! The archive check run before a commit: a local file header (or an empty
//! archive) at offset 0, an end-of-central-directory record at the end, and
//! central-directory offsets that agree with the size. It reads only the
//! head and the tail, so it costs the same for any archive size.

use crate::error::{Error, Result};
use crate::store::Upload;

const LOCAL_HEADER: [u8; 4] = *b"PK\x03\x04";
const CENTRAL_HEADER: [u8; 4] = *b"PK\x01\x02";
const EOCD: [u8; 4] = *b"PK\x05\x06";
const ZIP64_LOCATOR: [u8; 4] = *b"PK\x06\x07";
const ZIP64_EOCD: [u8; 4] = *b"PK\x06\x06";
const EOCD_LEN: u64 = 22;
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_LEN: u64 = 56;
const MAX_COMMENT: u64 = 0xFFFF;

/// Random access to the bytes being checked.
#[async_trait::async_trait]
pub trait ReadAt: Send {
    async fn read_exact_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>>;
}

#[async_trait::async_trait]
impl ReadAt for Box<dyn Upload> {
    async fn read_exact_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let bytes = self.read_at(offset, len as u32).await?;
        if bytes.len() as u64 != len {
            return Err(Error::provider("short read while checking the archive"));
        }
        Ok(bytes)
    }
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn bad(why: &str) -> Error {
    Error::invalid(format!("not a complete ZIP archive: {why}"))
}

pub async fn check(size: u64, data: &mut dyn ReadAt) -> Result<()> {
    if size < EOCD_LEN {
        return Err(bad(&format!(
            "{size} bytes is shorter than an empty archive"
        )));
    }
    let head = data.read_exact_at(0, 4).await?;
    let empty_archive = head == EOCD && size == EOCD_LEN;
    if head != LOCAL_HEADER && !empty_archive {
        return Err(bad("no local file header at offset 0"));
    }
    let tail_len = size.min(EOCD_LEN + MAX_COMMENT);
    let tail_start = size - tail_len;
    let tail = data.read_exact_at(tail_start, tail_len).await?;
    // The record ends the file: its comment length must reach exactly to the end.
    let eocd_in_tail = (0..=tail.len() - EOCD_LEN as usize)
        .rev()
        .find(|&i| {
            tail[i..i + 4] == EOCD && i as u64 + EOCD_LEN + u16_at(&tail, i + 20) == tail_len
        })
        .ok_or_else(|| bad("no end-of-central-directory record at the end (truncated?)"))?;
    let eocd_offset = tail_start + eocd_in_tail as u64;
    let record = &tail[eocd_in_tail..];
    let (mut entries, mut cd_size, mut cd_offset) =
        (u16_at(record, 10), u32_at(record, 12), u32_at(record, 16));
    let mut cd_end = eocd_offset;
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let locator_offset = eocd_offset
            .checked_sub(ZIP64_LOCATOR_LEN)
            .ok_or_else(|| bad("zip64 locator missing"))?;
        let locator = data
            .read_exact_at(locator_offset, ZIP64_LOCATOR_LEN)
            .await?;
        if locator[..4] != ZIP64_LOCATOR {
            return Err(bad("zip64 locator missing"));
        }
        let zip64_offset = u64_at(&locator, 8);
        // A hostile offset must not overflow past the bound check.
        if zip64_offset
            .checked_add(ZIP64_EOCD_LEN)
            .is_none_or(|end| end > locator_offset)
        {
            return Err(bad("zip64 record offset beyond the end"));
        }
        let zip64 = data.read_exact_at(zip64_offset, ZIP64_EOCD_LEN).await?;
        if zip64[..4] != ZIP64_EOCD {
            return Err(bad("zip64 end-of-central-directory record missing"));
        }
        entries = u64_at(&zip64, 32);
        cd_size = u64_at(&zip64, 40);
        cd_offset = u64_at(&zip64, 48);
        cd_end = zip64_offset;
    }
    if cd_offset.checked_add(cd_size) != Some(cd_end) {
        return Err(bad(
            "central directory offsets do not agree with the size (truncated?)",
        ));
    }
    if entries > 0 {
        let first = data.read_exact_at(cd_offset, 4).await?;
        if first != CENTRAL_HEADER {
            return Err(bad("no central directory at the recorded offset"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    #[async_trait::async_trait]
    impl ReadAt for Bytes {
        async fn read_exact_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
            let (start, end) = (offset as usize, (offset + len) as usize);
            self.0
                .get(start..end)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::provider("short"))
        }
    }

    /// A one-file stored archive, built by hand so the test needs no zip tool.
    fn archive(comment: &[u8]) -> Vec<u8> {
        let name = b"a.txt";
        let body = b"hello";
        let mut zip = Vec::new();
        zip.extend_from_slice(&LOCAL_HEADER);
        zip.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        zip.extend_from_slice(&[0; 4]); // crc (not checked)
        zip.extend_from_slice(&(body.len() as u32).to_le_bytes());
        zip.extend_from_slice(&(body.len() as u32).to_le_bytes());
        zip.extend_from_slice(&(name.len() as u16).to_le_bytes());
        zip.extend_from_slice(&[0, 0]);
        zip.extend_from_slice(name);
        zip.extend_from_slice(body);
        let cd_offset = zip.len() as u32;
        zip.extend_from_slice(&CENTRAL_HEADER);
        zip.extend_from_slice(&[0; 24]);
        zip.extend_from_slice(&(name.len() as u16).to_le_bytes());
        zip.extend_from_slice(&[0; 12]);
        zip.extend_from_slice(&0u32.to_le_bytes());
        zip.extend_from_slice(name);
        let cd_size = zip.len() as u32 - cd_offset;
        zip.extend_from_slice(&EOCD);
        zip.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
        zip.extend_from_slice(&cd_size.to_le_bytes());
        zip.extend_from_slice(&cd_offset.to_le_bytes());
        zip.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        zip.extend_from_slice(comment);
        zip
    }

    async fn verdict(bytes: Vec<u8>) -> Result<()> {
        let size = bytes.len() as u64;
        check(size, &mut Bytes(bytes)).await
    }

    #[tokio::test]
    async fn accepts_archives_with_and_without_comments() {
        verdict(archive(b"")).await.unwrap();
        verdict(archive(b"a comment PK\x05\x06 inside"))
            .await
            .unwrap();
        let mut empty = EOCD.to_vec();
        empty.extend_from_slice(&[0; 18]);
        verdict(empty).await.unwrap();
    }

    #[tokio::test]
    async fn a_zip64_offset_that_overflows_is_an_invalid_archive() {
        let mut zip = LOCAL_HEADER.to_vec();
        zip.extend_from_slice(&[0; 60]);
        zip.extend_from_slice(&ZIP64_LOCATOR);
        zip.extend_from_slice(&[0; 4]);
        zip.extend_from_slice(&0xFFFF_FFFF_FFFF_FFF0u64.to_le_bytes());
        zip.extend_from_slice(&1u32.to_le_bytes());
        zip.extend_from_slice(&EOCD);
        zip.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        zip.extend_from_slice(&[0xFF; 8]);
        zip.extend_from_slice(&[0, 0]);
        let err = verdict(zip).await.expect_err("refused");
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
    }

    #[tokio::test]
    async fn rejects_every_truncation_and_non_zips() {
        let whole = archive(b"");
        for cut in 0..whole.len() {
            let err = verdict(whole[..cut].to_vec()).await.unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "cut at {cut}");
        }
        let mut prefixed = b"junk".to_vec();
        prefixed.extend_from_slice(&whole);
        assert!(verdict(prefixed).await.is_err());
        assert!(verdict(vec![b'x'; 4096]).await.is_err());
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"trailing garbage");
        assert!(verdict(trailing).await.is_err());
    }
}
