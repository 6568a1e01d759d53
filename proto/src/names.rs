//! The one validator for user-chosen names (VMs, images, kernels).

use thiserror::Error;

/// A name that is not a DNS label.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid {kind} name {name:?}: {reason}; use 1-63 lowercase letters, digits and '-', \
     starting and ending with a letter or digit (e.g. \"debian-bookworm\")"
)]
pub struct InvalidName {
    /// What was being named (`vm`, `image`, `kernel`).
    pub kind: &'static str,
    /// The rejected name.
    pub name: String,
    /// Which rule it breaks.
    pub reason: &'static str,
}

/// Checks that `name` is a DNS label: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn validate(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > 63 {
        return fail("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("it has characters other than a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("it starts or ends with '-'");
    }
    Ok(())
}

/// Checks a dotted name (kernel names: `generic-6.12`, `debian-6.12`): one
/// or more DNS labels by [`validate`] joined by `.`, at most 63 characters
/// in all, so a release number reads naturally while the name can never be
/// `.`, `..`, hidden, or hold a path separator or a control character.
pub fn validate_dotted(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    if name.len() > 63 {
        return Err(InvalidName {
            kind,
            name: name.to_owned(),
            reason: "it is longer than 63 characters",
        });
    }
    for label in name.split('.') {
        if let Err(mut e) = validate(kind, label) {
            e.name = name.to_owned();
            e.reason = match e.reason {
                "it is empty" if name.is_empty() => "it is empty",
                "it is empty" => "it has an empty part between dots",
                "it starts or ends with '-'" => "a dot-separated part starts or ends with '-'",
                _ => "it has characters other than a-z, 0-9, '-' and '.'",
            };
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names() {
        for ok in ["generic-6.12", "debian-6.1", "a", "x.y.z", &"a".repeat(63)] {
            assert_eq!(validate_dotted("kernel", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a..b",
            "a.",
            "../../etc/x",
            "a/b",
            "a b",
            "x\nINJECT",
            "k\u{1b}[31m",
            "Generic-6.12",
            &"a".repeat(64),
        ] {
            let err = validate_dotted("kernel", bad).unwrap_err();
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains("invalid kernel name"), "{err}");
        }
    }

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "debian-bookworm", "generic-6-12", "0", &"a".repeat(63)] {
            assert_eq!(validate("vm", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            let err = validate("image", bad).unwrap_err();
            assert_eq!(err.kind, "image");
            assert!(err.to_string().contains("invalid image name"), "{err}");
        }
    }
}
