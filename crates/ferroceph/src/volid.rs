//! The composite volume/snapshot handle shared with ceph-csi:
//! `<version>-<len>-<clusterID>-<location>-<uuid>` (see shared/FACTS.md).

use std::fmt;

/// Handles are limited to 128 bytes by the CSI spec.
pub const MAX_ID_LEN: usize = 128;
const VERSION: u16 = 1;
const UUID_LEN: usize = 36;
/// version(4) + len(4) + location(16) + uuid(36) + four dashes.
const FIXED_LEN: usize = 4 + 4 + 16 + UUID_LEN + 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiId {
    pub cluster_id: String,
    /// RADOS pool id (RBD) or CephFS fscid.
    pub location: i64,
    pub uuid: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("clusterID {0:?} is {1} bytes; at most {max} fit in a 128-byte handle", max = MAX_ID_LEN - FIXED_LEN)]
    ClusterIdTooLong(String, usize),
    #[error("uuid {0:?} is not a 36-character uuid")]
    BadUuid(String),
    #[error("handle {0:?} is not a ferroceph/ceph-csi volume handle: {1}")]
    Malformed(String, &'static str),
}

impl CsiId {
    pub fn new(cluster_id: &str, location: i64, uuid: &str) -> Result<Self, IdError> {
        if cluster_id.len() > MAX_ID_LEN - FIXED_LEN {
            return Err(IdError::ClusterIdTooLong(
                cluster_id.to_string(),
                cluster_id.len(),
            ));
        }
        if !is_uuid(uuid) {
            return Err(IdError::BadUuid(uuid.to_string()));
        }
        Ok(CsiId {
            cluster_id: cluster_id.to_string(),
            location,
            uuid: uuid.to_string(),
        })
    }

    pub fn decode(handle: &str) -> Result<Self, IdError> {
        let bad = |why| IdError::Malformed(handle.to_string(), why);
        if handle.len() < FIXED_LEN || handle.len() > MAX_ID_LEN || !handle.is_ascii() {
            return Err(bad("wrong length"));
        }
        // Only the one spelling encode() writes: from_str_radix alone would also take
        // upper case and a '+', and two spellings of one handle could pass two locks.
        let hex = |s: &str, why| {
            if s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                u64::from_str_radix(s, 16).map_err(|_| bad(why))
            } else {
                Err(bad(why))
            }
        };
        let version = hex(&handle[0..4], "bad version")?;
        if version != u64::from(VERSION) || &handle[4..5] != "-" {
            return Err(bad("unknown version"));
        }
        let len = hex(&handle[5..9], "bad clusterID length")? as usize;
        if &handle[9..10] != "-" || handle.len() != FIXED_LEN + len {
            return Err(bad("clusterID length does not match"));
        }
        let cluster_id = &handle[10..10 + len];
        let rest = &handle[10 + len..];
        // rest = "-" + 16 hex + "-" + uuid
        if &rest[0..1] != "-" || &rest[17..18] != "-" {
            return Err(bad("missing separator"));
        }
        let location = hex(&rest[1..17], "bad location")? as i64;
        let uuid = &rest[18..];
        if !is_uuid(uuid) {
            return Err(bad("bad uuid"));
        }
        Ok(CsiId {
            cluster_id: cluster_id.to_string(),
            location,
            uuid: uuid.to_string(),
        })
    }
}

impl fmt::Display for CsiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}-{:04x}-{}-{:016x}-{}",
            VERSION,
            self.cluster_id.len(),
            self.cluster_id,
            self.location as u64,
            self.uuid
        )
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == UUID_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str =
        "0001-0024-fed5480a-f00f-417a-a51d-31d8a8144c03-0000000000000003-eba90b33-0156-11ec-a30b-4678a93686c2";

    #[test]
    fn decodes_ceph_csi_example() {
        let id = CsiId::decode(EXAMPLE).unwrap();
        assert_eq!(id.cluster_id, "fed5480a-f00f-417a-a51d-31d8a8144c03");
        assert_eq!(id.location, 3);
        assert_eq!(id.uuid, "eba90b33-0156-11ec-a30b-4678a93686c2");
        assert_eq!(id.to_string(), EXAMPLE);
    }

    #[test]
    fn round_trips_short_and_max_cluster_ids() {
        let uuid = "eba90b33-0156-11ec-a30b-4678a93686c2";
        for cid in ["c", "my-cluster", &"x".repeat(64)] {
            let id = CsiId::new(cid, 0x1234_5678_9abc, uuid).unwrap();
            let s = id.to_string();
            assert!(s.len() <= MAX_ID_LEN);
            assert_eq!(CsiId::decode(&s).unwrap(), id);
        }
        assert!(matches!(
            CsiId::new(&"x".repeat(65), 1, uuid),
            Err(IdError::ClusterIdTooLong(_, 65))
        ));
    }

    #[test]
    fn cluster_id_may_contain_dashes() {
        let id = CsiId::new("a-b-c", 7, "00000000-0000-0000-0000-000000000000").unwrap();
        assert_eq!(CsiId::decode(&id.to_string()).unwrap().cluster_id, "a-b-c");
    }

    #[test]
    fn rejects_static_and_garbage_handles() {
        for h in [
            "",
            "csi-vol-static-image",
            &EXAMPLE.replace("0001-", "0002-"),
            &EXAMPLE.replace("-0024-", "-0023-"),
            &EXAMPLE.replace("0000000000000003", "000000000000000g"),
            // other spellings of a valid handle (found by tests/fuzz_inputs.rs)
            &EXAMPLE.replace("0000000000000003", "000000000000000A"),
            &EXAMPLE.replace("0000000000000003", "+000000000000003"),
            &EXAMPLE.replace("0001-", "+001-"),
            &EXAMPLE.replace("-0024-", "-+024-"),
            &EXAMPLE[..EXAMPLE.len() - 1],
            &format!("{EXAMPLE}x"),
            "0001-0024-fed5480a-f00f-417a-a51d-31d8a8144c03-0000000000000003-eba90b33-0156-11ec-a30b-4678a93686cé",
        ] {
            assert!(CsiId::decode(h).is_err(), "{h:?} should not decode");
        }
    }
}
