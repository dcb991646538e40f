//! Feature bits: names, parsing, rendering and dependency checks.

use crate::error::{Error, Result};

/// `RBD_FEATURE_LAYERING`
pub const FEATURE_LAYERING: u64 = 1 << 0;
/// `RBD_FEATURE_STRIPINGV2` (set implicitly when striping is requested)
pub const FEATURE_STRIPINGV2: u64 = 1 << 1;
/// `RBD_FEATURE_EXCLUSIVE_LOCK`
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_FEATURE_OBJECT_MAP`
pub const FEATURE_OBJECT_MAP: u64 = 1 << 3;
/// `RBD_FEATURE_FAST_DIFF`
pub const FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FEATURE_DEEP_FLATTEN`
pub const FEATURE_DEEP_FLATTEN: u64 = 1 << 5;
/// `RBD_FEATURE_JOURNALING`
pub const FEATURE_JOURNALING: u64 = 1 << 6;
/// `RBD_FEATURE_DATA_POOL` (set implicitly when a data pool is given)
pub const FEATURE_DATA_POOL: u64 = 1 << 7;
/// `RBD_FEATURE_OPERATIONS` (internal)
pub const FEATURE_OPERATIONS: u64 = 1 << 8;
/// `RBD_FEATURE_MIGRATING` (internal)
pub const FEATURE_MIGRATING: u64 = 1 << 9;
/// `RBD_FEATURE_NON_PRIMARY` (internal)
pub const FEATURE_NON_PRIMARY: u64 = 1 << 10;
/// `RBD_FEATURE_DIRTY_CACHE` (internal)
pub const FEATURE_DIRTY_CACHE: u64 = 1 << 11;

/// Bits and names, as in `rbd/features.h`.
pub const FEATURES: [(u64, &str); 12] = [
    (FEATURE_LAYERING, "layering"),
    (FEATURE_STRIPINGV2, "striping"),
    (FEATURE_EXCLUSIVE_LOCK, "exclusive-lock"),
    (FEATURE_OBJECT_MAP, "object-map"),
    (FEATURE_FAST_DIFF, "fast-diff"),
    (FEATURE_DEEP_FLATTEN, "deep-flatten"),
    (FEATURE_JOURNALING, "journaling"),
    (FEATURE_DATA_POOL, "data-pool"),
    (FEATURE_OPERATIONS, "operations"),
    (FEATURE_MIGRATING, "migrating"),
    (FEATURE_NON_PRIMARY, "non-primary"),
    (FEATURE_DIRTY_CACHE, "dirty-cache"),
];

/// Features a user may request when creating an image (what a StorageClass
/// `imageFeatures` parameter may list).
pub const USER_FEATURES: u64 = FEATURE_LAYERING
    | FEATURE_EXCLUSIVE_LOCK
    | FEATURE_OBJECT_MAP
    | FEATURE_FAST_DIFF
    | FEATURE_DEEP_FLATTEN
    | FEATURE_JOURNALING;

/// Parses a comma-separated feature list such as
/// `"layering,exclusive-lock,object-map,fast-diff,deep-flatten,journaling"`
/// into a bitmask. Blanks around names and empty items are ignored; an
/// unknown name is an `InvalidArgument` error naming it.
pub fn parse_features(list: &str) -> Result<u64> {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match FEATURES.iter().find(|(_, n)| *n == name) {
            Some((b, _)) => bits |= b,
            None => {
                let known: Vec<&str> = FEATURES.iter().map(|(_, n)| *n).collect();
                return Err(
                    Error::invalid("parse rbd features", format!("{list:?}")).with_detail(format!(
                        "unknown feature {name:?} (known: {})",
                        known.join(", ")
                    )),
                );
            }
        }
    }
    Ok(bits)
}

/// The names of the bits set in `bits`, in bit order; unknown bits are
/// rendered as `unknown(0x...)`.
pub fn feature_names(bits: u64) -> Vec<String> {
    let mut out: Vec<String> = FEATURES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = FEATURES.iter().fold(0, |acc, (b, _)| acc | b);
    if bits & !known != 0 {
        out.push(format!("unknown({:#x})", bits & !known));
    }
    out
}

/// [`feature_names`] joined with commas (the inverse of [`parse_features`]
/// for known bits).
pub fn features_to_string(bits: u64) -> String {
    feature_names(bits).join(",")
}

/// Checks that requested features are user-settable and their dependencies
/// are met (object-map and journaling need exclusive-lock, fast-diff needs
/// object-map), with a message naming the problem.
pub fn check_features(bits: u64) -> Result<()> {
    let bad = |msg: String| {
        Err(Error::invalid("check rbd features", features_to_string(bits)).with_detail(msg))
    };
    let extra = bits & !USER_FEATURES;
    if extra != 0 {
        return bad(format!(
            "features {} cannot be requested",
            features_to_string(extra)
        ));
    }
    let deps = [
        (FEATURE_OBJECT_MAP, FEATURE_EXCLUSIVE_LOCK),
        (FEATURE_FAST_DIFF, FEATURE_OBJECT_MAP),
        (FEATURE_JOURNALING, FEATURE_EXCLUSIVE_LOCK),
    ];
    for (f, needs) in deps {
        if bits & f != 0 && bits & needs == 0 {
            return bad(format!(
                "feature {} requires {}",
                features_to_string(f),
                features_to_string(needs)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn parse_and_render_features() {
        let all = "layering,exclusive-lock,object-map,fast-diff,deep-flatten,journaling";
        let bits = parse_features(all).map_err(|e| e.to_string());
        assert_eq!(bits, Ok(USER_FEATURES));
        assert_eq!(features_to_string(USER_FEATURES), all);
        assert_eq!(parse_features(" layering , ,exclusive-lock,").ok(), Some(5));
        assert_eq!(parse_features("").ok(), Some(0));
        assert_eq!(features_to_string(0), "");
        assert_eq!(
            feature_names(FEATURE_LAYERING | FEATURE_STRIPINGV2 | (1 << 40)),
            vec!["layering", "striping", "unknown(0x10000000000)"]
        );
        for (b, n) in FEATURES {
            assert_eq!(parse_features(n).ok(), Some(b));
        }
    }

    #[test]
    fn unknown_feature_is_named() {
        let e = parse_features("layering,teleport").err();
        let e = e.map(|e| (e.kind(), e.to_string()));
        assert!(
            matches!(&e, Some((ErrorKind::InvalidArgument, s)) if s.contains("\"teleport\"")),
            "{e:?}"
        );
    }

    #[test]
    fn feature_dependencies() {
        assert!(check_features(FEATURE_LAYERING).is_ok());
        assert!(check_features(USER_FEATURES).is_ok());
        let e = check_features(FEATURE_LAYERING | FEATURE_OBJECT_MAP)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|s| s.contains("object-map requires exclusive-lock")),
            "{e:?}"
        );
        let e = check_features(FEATURE_EXCLUSIVE_LOCK | FEATURE_FAST_DIFF)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|s| s.contains("fast-diff requires object-map")),
            "{e:?}"
        );
        let e = check_features(FEATURE_JOURNALING)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|s| s.contains("journaling requires exclusive-lock")),
            "{e:?}"
        );
        assert!(check_features(FEATURE_OPERATIONS).is_err());
    }
}
