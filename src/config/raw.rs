//! The config file as written: every key the schema knows, with the span of
//! each value so validation can point at `file:line:col`.

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use toml::Spanned;

pub type Named<T> = BTreeMap<Spanned<String>, Spanned<T>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub mount: RawMount,
    pub audit: Option<RawAudit>,
    #[serde(default)]
    pub registries: Named<RawRegistry>,
    #[serde(default)]
    pub stores: Named<RawStore>,
    #[serde(default)]
    pub secrets: Named<BTreeMap<Spanned<String>, Spanned<RawSecret>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub path: Option<Spanned<String>>,
    pub allow_other: Option<bool>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub file_mode: Option<Spanned<String>>,
    pub dir_mode: Option<Spanned<String>>,
    pub max_pending_uploads: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Spanned<String>,
    pub fail_closed: Option<bool>,
}

/// A provider table as written. A key that only some providers take is
/// declared once, with those providers, so that `provider_keys` can tell
/// the checker what to refuse without a second key list to keep in step.
/// Fields keep the order written: serde names the expected keys in it.
macro_rules! provider_table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(pub $head:ident: $head_ty:ty,)*
            for some providers {
                $($key:ident: $key_ty:ty => [$($provider:literal),+],)*
            }
            $(pub $tail:ident: $tail_ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(pub $head: $head_ty,)*
            $(pub $key: Option<Spanned<$key_ty>>,)*
            $(pub $tail: $tail_ty,)*
        }

        impl $name {
            /// The keys of some providers only that this table sets.
            pub fn provider_keys(&self) -> Vec<ProviderKey> {
                let mut keys = Vec::new();
                $(
                    if let Some(value) = &self.$key {
                        keys.push(ProviderKey {
                            name: stringify!($key),
                            providers: &[$($provider),+],
                            span: value.span(),
                        });
                    }
                )*
                keys
            }
        }
    };
}

/// A key that only some providers take, as found in a table.
pub struct ProviderKey {
    pub name: &'static str,
    pub providers: &'static [&'static str],
    pub span: Range<usize>,
}

provider_table! {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawRegistry {
        pub provider: Spanned<String>,
        for some providers {
            registry: String => ["ecr", "gcp", "acr", "static", "helper", "none"],
            region: String => ["ecr"],
            registry_id: String => ["ecr"],
            profile: String => ["ecr"],
            endpoint_url: String => ["ecr"],
            key: RawSecret => ["gcp"],
            token_uri: String => ["gcp"],
            metadata_host: String => ["gcp"],
            tenant_id: String => ["acr"],
            client_id: String => ["acr"],
            client_secret: RawSecret => ["acr"],
            federated_token_file: String => ["acr"],
            managed_identity: bool => ["acr"],
            authority_host: String => ["acr"],
            imds_endpoint: String => ["acr"],
            exchange_url: String => ["acr"],
            scope: String => ["acr"],
            username: RawSecret => ["static"],
            password: RawSecret => ["static"],
            command: Vec<String> => ["helper"],
            protocol: String => ["helper"],
            timeout: String => ["helper"],
            ttl: String => ["helper"],
            env: Named<RawSecret> => ["helper"],
            credentials_file: String => ["thin-edge"],
            section: String => ["thin-edge"],
            env_index: u32 => ["thin-edge"],
        }
        pub uid: Option<u32>,
        pub gid: Option<u32>,
        pub mode: Option<Spanned<String>>,
    }
}

provider_table! {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawStore {
        pub provider: Spanned<String>,
        pub buckets: Option<Spanned<Vec<Spanned<String>>>>,
        pub read_only: Option<bool>,
        pub max_object_size: Option<Spanned<String>>,
        for some providers {
            root: String => ["filesystem"],
            sync: bool => ["filesystem"],
            endpoint_url: String => ["s3", "azure"],
            endpoint: String => ["s3", "azure"],
            region: String => ["s3"],
            access_key_id: RawSecret => ["s3"],
            secret_access_key: RawSecret => ["s3"],
            access_key: RawSecret => ["s3", "azure"],
            profile: String => ["s3"],
            force_path_style: bool => ["s3"],
            prefix: String => ["s3", "azure"],
            part_size: String => ["s3"],
            read_concurrency: i64 => ["s3", "azure"],
            read_part_size: String => ["s3", "azure"],
            write_concurrency: i64 => ["s3", "azure"],
            checksums: String => ["s3"],
            spool_dir: String => ["s3", "azure"],
            connection_string: RawSecret => ["azure"],
            account: String => ["azure"],
        }
        pub uid: Option<u32>,
        pub gid: Option<u32>,
        pub mode: Option<Spanned<String>>,
    }
}

/// A secret value: a literal string, `{ file = PATH }` or `{ env = NAME }`.
#[derive(Clone, PartialEq, Eq)]
pub enum RawSecret {
    /// Wiped when the raw config is dropped.
    Literal(zeroize::Zeroizing<String>),
    File(String),
    Env(String),
}

impl std::fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawSecret::Literal(_) => f.write_str("Literal([redacted])"),
            RawSecret::File(path) => f.debug_tuple("File").field(path).finish(),
            RawSecret::Env(name) => f.debug_tuple("Env").field(name).finish(),
        }
    }
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawSecretVisitor)
    }
}

struct RawSecretVisitor;

impl RawSecretVisitor {
    /// serde's own message for a value of the wrong type quotes the value,
    /// and a secret written without quotes (`pin = 482913`) is still a
    /// secret: name only its type.
    fn wrong_type<E: de::Error>(found: &str) -> E {
        E::custom(format!(
            "a secret value must be a string, `{{ file = … }}` or `{{ env = … }}`; found {found}"
        ))
    }
}

impl<'de> Visitor<'de> for RawSecretVisitor {
    type Value = RawSecret;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, { file = \"PATH\" } or { env = \"NAME\" }")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawSecret, E> {
        Ok(RawSecret::Literal(zeroize::Zeroizing::new(
            value.to_owned(),
        )))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
        Err(Self::wrong_type("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
        Err(Self::wrong_type("an integer"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawSecret, E> {
        Err(Self::wrong_type("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
        Err(Self::wrong_type("an integer"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawSecret, E> {
        Err(Self::wrong_type("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
        Err(Self::wrong_type("a float"))
    }

    fn visit_char<E: de::Error>(self, _: char) -> Result<RawSecret, E> {
        Err(Self::wrong_type("a character"))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<RawSecret, E> {
        Err(Self::wrong_type("bytes"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
        Err(Self::wrong_type("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
        let mut found: Option<RawSecret> = None;
        while let Some(key) = map.next_key::<String>()? {
            // toml hands a date-time to a visitor as a one-key map.
            if key.starts_with("$__toml_private") {
                return Err(Self::wrong_type("a date-time"));
            }
            if key != "file" && key != "env" {
                return Err(de::Error::custom(format!(
                    "unknown key `{key}` in a secret value, expected `file` or `env`"
                )));
            }
            let value: String = map.next_value()?;
            let source = if key == "file" {
                RawSecret::File(value)
            } else {
                RawSecret::Env(value)
            };
            if found.replace(source).is_some() {
                return Err(de::Error::custom(
                    "a secret value takes exactly one of `file` or `env`",
                ));
            }
        }
        found.ok_or_else(|| de::Error::custom("a secret value needs `file` or `env`"))
    }
}
