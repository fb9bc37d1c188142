//! The one naming rule: what a registry, store, bucket, secret or archive
//! may be called. Config validation, create, rename, listings and every
//! store use it, so a name one accepts the others show. A leaf.

/// Names become path components: keep them to a portable, unambiguous set.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{name}`: use 1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ))
    }
}

/// Whether `name` is acceptable as a registry, bucket, secret or archive name.
pub fn is_valid_name(name: &str) -> bool {
    check_name("", name).is_ok()
}

/// `<name>.zip` with a valid name: what a bucket lists and stores.
pub fn is_archive_name(name: &str) -> bool {
    name.len() > 4 && name.ends_with(".zip") && is_valid_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_portable_path_components() {
        assert!(check_name("registry", "ecr-prod_1.x").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "spa ce", &"x".repeat(129)] {
            assert!(check_name("registry", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_rule_for_every_name() {
        assert!(is_archive_name("p1.zip"));
        assert!(is_archive_name("release-1.2_final.zip"));
        for bad in [
            "My Project.zip",
            ".x.zip",
            "_a.zip",
            ".zip",
            "a.ZIP",
            "zi123",
            "a/b.zip",
        ] {
            assert!(!is_archive_name(bad), "{bad}");
        }
        assert!(!is_archive_name(&format!("{}.zip", "a".repeat(125))));
        assert!(is_valid_name("ecr-prod") && !is_valid_name(""));
    }
}
