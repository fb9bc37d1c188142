//! Where each part of a multipart upload (or copy) starts and ends. An
//! archive is sent while it is written, before its size is known, so a part's
//! length may depend only on its number: `base` bytes for the first `group`
//! parts, then twice that for the next `group`, and so on up to the store's
//! largest part. The parts of S3's largest object (5 TiB) then fit in its
//! 10,000, whatever the base (5 MiB at least), and an archive of a few
//! gigabytes still goes up in parts of the base size.

use std::ops::Range;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// S3: at most 10,000 parts of at most 5 GiB, objects of at most 5 TiB.
pub const S3_MAX_PARTS: u64 = 10_000;
pub const S3_MAX_PART: u64 = 5 * GIB;
/// Azure block blobs: at most 50,000 blocks of at most 4,000 MiB.
pub const AZURE_MAX_BLOCKS: u64 = 50_000;
pub const AZURE_MAX_BLOCK: u64 = 4000 * MIB;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPlan {
    base: u64,
    max_part: u64,
    /// Parts of each length before the length doubles.
    group: u64,
}

impl PartPlan {
    /// S3 multipart uploads whose parts start at `base` bytes: doubling
    /// every 800 parts, the 10,000 parts of a 5 MiB base cover 5 TiB.
    pub fn s3(base: u64) -> PartPlan {
        PartPlan {
            base: base.clamp(5 * MIB, S3_MAX_PART),
            max_part: S3_MAX_PART,
            group: 800,
        }
    }

    /// Azure block lists whose blocks start at `base` bytes, doubling every
    /// 5,000 blocks: 8 MiB blocks hold 5 TiB in 40,000.
    pub fn azure(base: u64) -> PartPlan {
        PartPlan {
            base: base.clamp(64 * KIB, AZURE_MAX_BLOCK),
            max_part: AZURE_MAX_BLOCK,
            group: AZURE_MAX_BLOCKS / 10,
        }
    }

    /// A server-side copy of an S3 object too large for one CopyObject:
    /// UploadPartCopy of 1 GiB ranges (5,120 of them for 5 TiB).
    pub fn s3_copy() -> PartPlan {
        PartPlan {
            base: GIB,
            max_part: S3_MAX_PART,
            group: S3_MAX_PARTS,
        }
    }

    /// Parts of `len` bytes each, for tests.
    #[cfg(test)]
    pub fn fixed(len: u64) -> PartPlan {
        PartPlan {
            base: len,
            max_part: len,
            group: u64::MAX,
        }
    }

    /// Length of part `index` (from 0) when the object goes on past it.
    pub fn len(&self, index: u64) -> u64 {
        let doublings = u32::try_from(index / self.group).unwrap_or(u32::MAX);
        self.base
            .checked_shl(doublings)
            .filter(|len| *len >> doublings == self.base)
            .map_or(self.max_part, |len| len.min(self.max_part))
    }

    /// The parts of an object of `size` bytes, in order (none when empty).
    pub fn parts(&self, size: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        self.parts_from(0, 0, size).map(|(_, range)| range)
    }

    /// Parts from part `index`, which starts at `offset`, up to `size`:
    /// (index, range).
    pub fn parts_from(
        &self,
        index: u64,
        offset: u64,
        size: u64,
    ) -> impl Iterator<Item = (u64, Range<u64>)> + '_ {
        let mut next = (index, offset);
        std::iter::from_fn(move || {
            let (index, offset) = next;
            if offset >= size {
                return None;
            }
            let end = offset.saturating_add(self.len(index)).min(size);
            next = (index + 1, end);
            Some((index, offset..end))
        })
    }

    /// Whether an object of `size` bytes needs more than one part.
    pub fn is_multipart(&self, size: u64) -> bool {
        size > self.len(0)
    }
}

/// Whether a server-side copy of `size` bytes must go in parts
/// (UploadPartCopy): CopyObject takes at most 5 GiB.
pub fn s3_copy_in_parts(size: u64) -> bool {
    size > S3_MAX_PART
}

#[cfg(test)]
mod tests {
    use super::*;

    const S3_MAX_OBJECT: u64 = 5 * 1024 * GIB;

    fn check_parts(plan: &PartPlan, size: u64) -> Vec<Range<u64>> {
        let parts: Vec<Range<u64>> = plan.parts(size).collect();
        let mut at = 0;
        for (index, part) in parts.iter().enumerate() {
            assert_eq!(part.start, at, "contiguous");
            assert!(part.end > part.start, "no empty part");
            if index + 1 < parts.len() {
                assert_eq!(part.end - part.start, plan.len(index as u64));
            }
            at = part.end;
        }
        assert_eq!(at, size, "the whole object");
        parts
    }

    #[test]
    fn archives_of_a_few_gigabytes_go_in_parts_of_the_base_size() {
        let plan = PartPlan::s3(8 * MIB);
        let parts = check_parts(&plan, 5 * GIB + 3);
        assert_eq!(parts.len(), 641);
        assert!(parts[..640].iter().all(|p| p.end - p.start == 8 * MIB));
        assert_eq!(parts[640], 5 * GIB..5 * GIB + 3);
        assert_eq!(check_parts(&plan, 8 * MIB).len(), 1);
        assert!(!plan.is_multipart(8 * MIB));
        assert!(plan.is_multipart(8 * MIB + 1));
        assert_eq!(plan.parts(0).count(), 0);
    }

    #[test]
    fn ten_thousand_parts_cover_the_largest_object_whatever_the_base() {
        for base in [5 * MIB, 8 * MIB, 64 * MIB, GIB, 5 * GIB] {
            let plan = PartPlan::s3(base);
            let parts = check_parts(&plan, S3_MAX_OBJECT);
            assert!(
                parts.len() as u64 <= S3_MAX_PARTS,
                "{} parts for a base of {base}",
                parts.len()
            );
            assert!(parts.iter().all(|p| p.end - p.start <= S3_MAX_PART
                && p.end - p.start >= 5 * MIB
                || p.end == S3_MAX_OBJECT));
        }
        let plan = PartPlan::s3(5 * MIB);
        assert_eq!(plan.len(799), 5 * MIB);
        assert_eq!(plan.len(800), 10 * MIB);
        assert_eq!(plan.len(9_999), S3_MAX_PART);
        assert_eq!(plan.len(u64::MAX), S3_MAX_PART, "no overflow");
    }

    #[test]
    fn azure_blocks_cover_archives_as_large_as_s3_takes() {
        let plan = PartPlan::azure(8 * MIB);
        let blocks = check_parts(&plan, S3_MAX_OBJECT).len() as u64;
        assert!(blocks <= AZURE_MAX_BLOCKS, "{blocks} blocks");
        assert_eq!(plan.len(4_999), 8 * MIB);
        assert_eq!(plan.len(AZURE_MAX_BLOCKS), AZURE_MAX_BLOCK);
    }

    #[test]
    fn a_copy_over_5_gib_is_1_gib_ranges_then_the_rest() {
        let plan = PartPlan::s3_copy();
        assert!(!s3_copy_in_parts(5 * GIB), "one CopyObject");
        let size = 5 * GIB + 7;
        assert!(s3_copy_in_parts(size));
        let parts = check_parts(&plan, size);
        assert_eq!(
            parts,
            [
                0..GIB,
                GIB..2 * GIB,
                2 * GIB..3 * GIB,
                3 * GIB..4 * GIB,
                4 * GIB..5 * GIB,
                5 * GIB..5 * GIB + 7
            ]
        );
        assert_eq!(check_parts(&plan, S3_MAX_OBJECT).len(), 5120);
        let resumed: Vec<_> = plan.parts_from(2, 2 * GIB, 3 * GIB + 1).collect();
        assert_eq!(resumed, [(2, 2 * GIB..3 * GIB), (3, 3 * GIB..3 * GIB + 1)]);
    }
}
