//! Redaction helpers used by the generated `Debug` impls of messages that
//! carry `csi_secret` fields.
//!
//! Policy: map keys stay visible (they name the credential, e.g. `userKey`),
//! every value is replaced by `***`. Keys are printed in sorted order so the
//! output is deterministic. Scalar secrets print as `***` when set and `""`
//! when empty; byte secrets print only their length.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;

/// Wraps a reference to a secret field so that its `Debug` output is redacted.
pub(crate) struct Redacted<'a, T: ?Sized>(pub &'a T);

impl<T: RedactedDebug + ?Sized> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_redacted(f)
    }
}

/// Types that can appear as a `csi_secret` field. Adding a secret field of a
/// new type to the proto fails to compile until an impl is added here.
pub(crate) trait RedactedDebug {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Prints `***` without quotes.
struct Stars;

impl fmt::Debug for Stars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<S: BuildHasher> RedactedDebug for HashMap<String, String, S> {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.keys().collect();
        keys.sort();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, Stars)))
            .finish()
    }
}

impl RedactedDebug for BTreeMap<String, String> {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys().map(|k| (k, Stars)))
            .finish()
    }
}

impl RedactedDebug for String {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("***")
        }
    }
}

impl RedactedDebug for Vec<String> {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|_| Stars)).finish()
    }
}

impl RedactedDebug for Vec<u8> {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.len())
    }
}

impl<T: RedactedDebug> RedactedDebug for Option<T> {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Some(v) => {
                f.write_str("Some(")?;
                v.fmt_redacted(f)?;
                f.write_str(")")
            }
            None => f.write_str("None"),
        }
    }
}
