//! `[stores.*]`: one table each, checked against the keys of its provider;
//! a bucket belongs to one store only.

use super::checker::Checker;
use super::endpoint::{Endpoint, parse_endpoint};
use super::load::state_dir;
use super::raw::RawStore;
use super::values::parse_size;
use super::{
    Access, AzureConfig, FilesystemConfig, S3Config, StoreConfig, StoreProviderConfig,
    TransferConfig,
};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

/// S3's largest part; parts are also read into memory and sent as one
/// buffer, which must stay well inside a u32 length.
const MAX_PART_SIZE: u64 = 5 << 30;
const DEFAULT_PART_SIZE: u64 = 8 << 20;
const MIN_PART_SIZE: u64 = 5 << 20;
/// Ranges or parts one handle or upload may have in flight.
const MAX_CONCURRENCY: i64 = 64;
/// Bounds of `read_part_size`: each open handle holds up to
/// `read_concurrency` of them.
const MIN_READ_PART_SIZE: u64 = 64 << 10;
const MAX_READ_PART_SIZE: u64 = 1 << 30;
/// Most bytes one open file's window may hold.
const MAX_READ_WINDOW: u64 = 1 << 30;

impl Checker<'_> {
    /// The spool directory, by default in the state directory; an error
    /// about the default points at the store's `provider`.
    fn spool_dir(
        &mut self,
        value: &Option<Spanned<String>>,
        provider: &Spanned<String>,
    ) -> Option<PathBuf> {
        let (path, span) = match value {
            Some(dir) => (PathBuf::from(dir.get_ref()), dir.span()),
            None => (state_dir().join("spool"), provider.span()),
        };
        self.trusted_dir("spool directory", &path, &span)?;
        Some(path)
    }

    pub(super) fn store(
        &mut self,
        entry: Spanned<RawStore>,
        store_name: &str,
        bucket_owner: &mut BTreeMap<String, String>,
    ) -> Option<StoreConfig> {
        let table = entry.span();
        let raw = entry.into_inner();
        let keys = raw.provider_keys();
        let mut buckets: Vec<Spanned<String>> = raw
            .buckets
            .as_ref()
            .map(|b| b.get_ref().clone())
            .unwrap_or_default();
        let endpoint = raw.endpoint.as_ref().and_then(|e| {
            let parsed = parse_endpoint(e.get_ref());
            self.check(&e.span(), parsed)
                .map(|parsed| (parsed, e.span()))
        });
        if let Some((parsed, span)) = &endpoint {
            buckets.push(Spanned::new(span.clone(), parsed.bucket.clone()));
        }
        if buckets.is_empty() {
            self.error(&table, "missing field `buckets`");
        }
        for bucket in &buckets {
            self.name("bucket", bucket);
            let name = bucket.get_ref().clone();
            if let Some(owner) = bucket_owner.get(&name) {
                self.error(
                    &bucket.span(),
                    format!("duplicate bucket `{name}`: already served by store `{owner}`"),
                );
            } else {
                bucket_owner.insert(name, store_name.to_string());
            }
        }
        let access = Access {
            uid: raw.uid,
            gid: raw.gid,
            mode: self.mode(&raw.mode),
        };
        let max_object_size = self.size(&raw.max_object_size);
        let read_only = raw.read_only.unwrap_or(false);
        let provider_name = raw.provider.get_ref().clone();
        let provider = match provider_name.as_str() {
            "filesystem" => self
                .filesystem(&table, raw, &buckets)
                .map(StoreProviderConfig::Filesystem),
            "s3" => self.s3(raw, endpoint).map(StoreProviderConfig::S3),
            "azure" => self
                .azure(&table, raw, endpoint)
                .map(StoreProviderConfig::Azure),
            other => {
                self.error(
                    &raw.provider.span(),
                    format!(
                        "unknown store provider `{other}`, expected one of: filesystem, s3, azure"
                    ),
                );
                return None;
            }
        };
        self.only_keys(&provider_name, &keys);
        Some(StoreConfig {
            buckets: buckets.into_iter().map(Spanned::into_inner).collect(),
            read_only,
            max_object_size: max_object_size?,
            access,
            provider: provider?,
        })
    }

    fn filesystem(
        &mut self,
        table: &Range<usize>,
        raw: RawStore,
        buckets: &[Spanned<String>],
    ) -> Option<FilesystemConfig> {
        let root = self.required(table, "root", &raw.root);
        let root = root.and_then(|r| {
            let path = PathBuf::from(r.get_ref());
            let result = if path.is_absolute() {
                Ok(path)
            } else {
                Err(format!(
                    "store root `{}` must be an absolute path",
                    r.get_ref()
                ))
            };
            self.check(&r.span(), result)
        });
        let root = root?;
        if let Some(span) = raw.root.as_ref().map(Spanned::span) {
            self.trusted_dir("store root", &root, &span)?;
        }
        for bucket in buckets {
            self.trusted_dir(
                "bucket directory",
                &root.join(bucket.get_ref()),
                &bucket.span(),
            )?;
        }
        Some(FilesystemConfig {
            root,
            sync: raw.sync.map(Spanned::into_inner).unwrap_or(true),
        })
    }

    fn s3(
        &mut self,
        raw: RawStore,
        endpoint: Option<(Endpoint, Range<usize>)>,
    ) -> Option<S3Config> {
        if let Some((parsed, span)) = &endpoint
            && parsed.scheme == "azure"
        {
            self.error(span, "an azure:// endpoint needs provider = \"azure\"");
        }
        let part_size = self.part_size(&raw.part_size);
        let transfer = self.transfer(&raw);
        let checksums = match &raw.checksums {
            None => Some(false),
            Some(v) => match v.get_ref().as_str() {
                "when_required" => Some(false),
                "when_supported" => Some(true),
                other => {
                    self.error(
                        &v.span(),
                        format!("unknown checksums `{other}`, expected `when_required` or `when_supported`"),
                    );
                    None
                }
            },
        };
        let access_key_id = self.optional_secret(&raw.access_key_id);
        let secret = raw
            .secret_access_key
            .as_ref()
            .or(raw.access_key.as_ref())
            .cloned();
        let secret_access_key = self.optional_secret(&secret);
        let endpoint_url = raw
            .endpoint_url
            .map(Spanned::into_inner)
            .or_else(|| endpoint.and_then(|(p, _)| p.endpoint_url));
        Some(S3Config {
            endpoint_url,
            region: raw.region.map(Spanned::into_inner),
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            profile: raw.profile.map(Spanned::into_inner),
            force_path_style: raw
                .force_path_style
                .map(Spanned::into_inner)
                .unwrap_or(false),
            prefix: raw.prefix.map(Spanned::into_inner).unwrap_or_default(),
            part_size: part_size?,
            checksums: checksums?,
            spool_dir: self.spool_dir(&raw.spool_dir, &raw.provider)?,
            transfer: transfer?,
        })
    }

    /// `read_concurrency`, `read_part_size` and `write_concurrency`.
    fn transfer(&mut self, raw: &RawStore) -> Option<TransferConfig> {
        let defaults = TransferConfig::default();
        let read_concurrency = self.concurrency("read_concurrency", &raw.read_concurrency);
        let write_concurrency = self.concurrency("write_concurrency", &raw.write_concurrency);
        let read_part_size = match &raw.read_part_size {
            None => Some(defaults.read_part_size),
            Some(v) => {
                let size = parse_size(v.get_ref()).and_then(|s| {
                    if (MIN_READ_PART_SIZE..=MAX_READ_PART_SIZE).contains(&s) {
                        Ok(s)
                    } else {
                        Err(format!(
                            "read_part_size `{}` must be between 64KiB and 1GiB",
                            v.get_ref()
                        ))
                    }
                });
                self.check(&v.span(), size)
            }
        };
        let transfer = TransferConfig {
            read_concurrency: read_concurrency?.unwrap_or(defaults.read_concurrency),
            read_part_size: read_part_size?,
            write_concurrency: write_concurrency?.unwrap_or(defaults.write_concurrency),
        };
        let window = transfer.read_part_size * transfer.read_concurrency as u64;
        if window > MAX_READ_WINDOW {
            let span = raw
                .read_part_size
                .as_ref()
                .map(Spanned::span)
                .or_else(|| raw.read_concurrency.as_ref().map(Spanned::span))
                .unwrap_or_default();
            self.error(
                &span,
                "read_concurrency x read_part_size must be at most 1GiB: each open file may hold that much",
            );
            return None;
        }
        Some(transfer)
    }

    /// A count of requests in flight, 1 to 64; `Some(None)` when not set.
    fn concurrency(&mut self, key: &str, value: &Option<Spanned<i64>>) -> Option<Option<usize>> {
        let Some(v) = value else {
            return Some(None);
        };
        let count = match *v.get_ref() {
            n @ 1..=MAX_CONCURRENCY => usize::try_from(n).ok(),
            _ => None,
        };
        let count = count.ok_or_else(|| format!("{key} must be between 1 and {MAX_CONCURRENCY}"));
        self.check(&v.span(), count).map(Some)
    }

    fn part_size(&mut self, value: &Option<Spanned<String>>) -> Option<u64> {
        let Some(v) = value else {
            return Some(DEFAULT_PART_SIZE);
        };
        let size = parse_size(v.get_ref()).and_then(|s| {
            if s < MIN_PART_SIZE {
                Err(format!(
                    "part_size `{}` is below the 5MiB minimum of S3 multipart uploads",
                    v.get_ref()
                ))
            } else if s > MAX_PART_SIZE {
                Err(format!(
                    "part_size `{}` is above the 5GiB maximum of S3 multipart uploads",
                    v.get_ref()
                ))
            } else {
                Ok(s)
            }
        });
        self.check(&v.span(), size)
    }

    fn azure(
        &mut self,
        table: &Range<usize>,
        raw: RawStore,
        endpoint: Option<(Endpoint, Range<usize>)>,
    ) -> Option<AzureConfig> {
        let transfer = self.transfer(&raw);
        let account = raw
            .account
            .map(Spanned::into_inner)
            .or_else(|| endpoint.and_then(|(p, _)| p.account));
        if raw.connection_string.is_none() && (account.is_none() || raw.access_key.is_none()) {
            self.error(
                table,
                "an azure store needs `connection_string`, or `account` and `access_key`",
            );
        }
        let connection_string = self.optional_secret(&raw.connection_string);
        let access_key = self.optional_secret(&raw.access_key);
        Some(AzureConfig {
            connection_string: connection_string?,
            account,
            access_key: access_key?,
            endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
            prefix: raw.prefix.map(Spanned::into_inner).unwrap_or_default(),
            spool_dir: self.spool_dir(&raw.spool_dir, &raw.provider)?,
            transfer: transfer?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::checker::testing::errors;

    #[test]
    fn duplicate_buckets_and_bad_names_are_refused() {
        let e = errors(
            "[stores.a]\nprovider = \"filesystem\"\nroot = \"/a\"\nbuckets = [\"b\"]\n\
             [stores.c]\nprovider = \"filesystem\"\nroot = \"/c\"\nbuckets = [\"b\", \"no/slash\"]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:8:12: duplicate bucket `b`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("c.toml:8:17: invalid bucket name `no/slash`"),
            "{e:?}"
        );
    }

    #[test]
    fn transfer_settings_are_checked_where_they_are_written() {
        let store = "[stores.s]\nprovider = \"s3\"\nbuckets = [\"b\"]\nspool_dir = \"/\"\n";
        let e = errors(&format!(
            "{store}read_concurrency = 0\nwrite_concurrency = 65\nread_part_size = \"2GiB\"\n"
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:5:20: read_concurrency must be between 1 and 64"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("c.toml:6:21: write_concurrency must be between 1 and 64"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("c.toml:7:18: read_part_size `2GiB` must be between 64KiB and 1GiB"),
            "{e:?}"
        );
        let e = errors(&format!(
            "{store}read_concurrency = 64\nread_part_size = \"32MiB\"\n"
        ));
        assert!(
            e[0].starts_with("c.toml:6:18: read_concurrency x read_part_size must be at most 1GiB"),
            "{e:?}"
        );
        let e = errors(&format!("{store}read_part_size = \"lots\"\n"));
        assert!(
            e[0].starts_with("c.toml:5:18: invalid size `lots`"),
            "{e:?}"
        );
        let e = errors(&format!("{store}read_concurrency = \"8\"\n"));
        assert!(
            e[0].starts_with("c.toml:5:20: invalid type: string"),
            "{e:?}"
        );
        let e = errors(
            "[stores.f]\nprovider = \"filesystem\"\nroot = \"/\"\nbuckets = [\"b\"]\nwrite_concurrency = 4\n",
        );
        assert!(
            e[0].starts_with(
                "c.toml:5:21: key `write_concurrency` is not valid for provider `filesystem`"
            ),
            "{e:?}"
        );
    }
}
