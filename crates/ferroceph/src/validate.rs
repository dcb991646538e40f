//! Request checks shared by the services, each failing with the code the CSI spec names
//! and a message that says what to fix.

use crate::error::{Error, Result};
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use pb::volume_capability::AccessType;

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const DEFAULT_SIZE: u64 = GIB;
/// Larger requests are refused with OutOfRange instead of reaching Ceph.
pub(crate) const MAX_SIZE: u64 = 1 << 56;
const MAX_ID: usize = 128;

/// Names from the CO: non-empty, no control characters the spec bans.
pub(crate) fn name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("name is required"));
    }
    if name.len() > 512 {
        return Err(Error::invalid(format!(
            "name is {} bytes; at most 512 are accepted",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Error::invalid(format!(
            "name contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(())
}

/// Volume and snapshot ids: required, at most 128 bytes, printable.
pub(crate) fn id(id: &str, what: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} is required")));
    }
    if id.len() > MAX_ID {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; CSI ids are at most {MAX_ID}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// The requested size: default when no range is given, rounded up to whole MiB, within
/// `limit_bytes`.
pub(crate) fn capacity(range: Option<&pb::CapacityRange>) -> Result<u64> {
    let (required, limit) = range
        .map(|r| (r.required_bytes, r.limit_bytes))
        .unwrap_or((0, 0));
    if required < 0 || limit < 0 {
        return Err(Error::invalid(format!(
            "capacity_range must not be negative (required_bytes {required}, limit_bytes {limit})"
        )));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && required > limit {
        return Err(Error::OutOfRange(format!(
            "required_bytes {required} is larger than limit_bytes {limit}"
        )));
    }
    let wanted = match (required, limit) {
        (0, 0) => DEFAULT_SIZE,
        (0, l) => DEFAULT_SIZE.min(l),
        (r, _) => r,
    };
    if wanted > MAX_SIZE {
        return Err(Error::OutOfRange(format!(
            "{wanted} bytes is more than the largest supported volume ({MAX_SIZE} bytes)"
        )));
    }
    let rounded = wanted.div_ceil(MIB) * MIB;
    if limit > 0 && rounded > limit {
        let down = limit / MIB * MIB;
        if down >= required && down > 0 {
            return Ok(down);
        }
        return Err(Error::OutOfRange(format!(
            "no whole-MiB size fits between required_bytes {required} and limit_bytes {limit}"
        )));
    }
    Ok(rounded)
}

/// Checks a size that already exists against a request's range.
/// A CreateVolume content source, decoded.
pub(crate) struct ContentSource {
    pub id: crate::volid::CsiId,
    /// The id as the CO gave it.
    pub raw: String,
    pub is_snapshot: bool,
}

/// The request's content source, None for a blank volume. An id that does not decode is
/// NotFound (no such source); a source in another cluster than `cluster_id` is
/// InvalidArgument.
pub(crate) fn content_source(
    req: &pb::CreateVolumeRequest,
    cluster_id: &str,
) -> Result<Option<ContentSource>> {
    use pb::volume_content_source::Type;
    let (raw, what, is_snapshot) = match req
        .volume_content_source
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
    {
        None => return Ok(None),
        Some(Type::Snapshot(s)) => (&s.snapshot_id, "snapshot", true),
        Some(Type::Volume(v)) => (&v.volume_id, "volume", false),
    };
    let id = crate::volid::CsiId::decode(raw)
        .map_err(|_| Error::not_found(format!("{what} {raw:?} does not exist")))?;
    if id.cluster_id != cluster_id {
        return Err(Error::invalid(format!(
            "content source {raw} is in cluster {:?}, not {cluster_id:?}",
            id.cluster_id
        )));
    }
    Ok(Some(ContentSource {
        id,
        raw: raw.clone(),
        is_snapshot,
    }))
}

pub(crate) fn size_fits(size: u64, range: Option<&pb::CapacityRange>) -> bool {
    let Some(r) = range else { return true };
    (r.required_bytes <= 0 || size >= r.required_bytes as u64)
        && (r.limit_bytes <= 0 || size <= r.limit_bytes as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapSummary {
    pub block: bool,
    pub mount: bool,
    pub read_only: bool,
    pub multi_node: bool,
}

/// Which access modes a driver allows for filesystem and for block volumes.
pub(crate) struct ModeRules {
    pub driver: &'static str,
    pub mount: &'static [Mode],
    pub block: &'static [Mode],
}

pub(crate) const RBD_MODES: ModeRules = ModeRules {
    driver: "RBD",
    mount: &[
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
    ],
    block: &[
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeMultiWriter,
    ],
};

pub(crate) const CEPHFS_MODES: ModeRules = ModeRules {
    driver: "CephFS",
    mount: &[
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
        Mode::MultiNodeMultiWriter,
    ],
    block: &[],
};

fn mode_name(m: i32) -> String {
    Mode::try_from(m)
        .map(|m| m.as_str_name().to_string())
        .unwrap_or_else(|_| format!("mode {m}"))
}

/// Checks one capability; returns a summary or why it is unsupported (InvalidArgument).
pub(crate) fn capability(cap: &pb::VolumeCapability, rules: &ModeRules) -> Result<CapSummary> {
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Error::invalid("volume capability has no access_mode"))?
        .mode;
    let block = match &cap.access_type {
        Some(AccessType::Block(_)) => true,
        Some(AccessType::Mount(_)) => false,
        None => {
            return Err(Error::invalid(
                "volume capability must be either block or mount",
            ))
        }
    };
    let allowed = if block { rules.block } else { rules.mount };
    let Ok(m) = Mode::try_from(mode) else {
        return Err(Error::invalid(format!(
            "access mode {mode} is not a CSI access mode"
        )));
    };
    if !allowed.contains(&m) {
        let kind = if block { "block" } else { "filesystem" };
        let hint = if m == Mode::MultiNodeMultiWriter && rules.driver == "RBD" {
            " (RBD allows MULTI_NODE_MULTI_WRITER only for raw block volumes; use CephFS for shared filesystems)"
        } else {
            ""
        };
        return Err(Error::invalid(format!(
            "access mode {} is not supported for {} {kind} volumes{hint}",
            mode_name(mode),
            rules.driver
        )));
    }
    Ok(CapSummary {
        block,
        mount: !block,
        read_only: matches!(m, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly),
        multi_node: matches!(
            m,
            Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter
        ),
    })
}

/// Checks a list of capabilities (required, at least one) as InvalidArgument.
pub(crate) fn capabilities(
    caps: &[pb::VolumeCapability],
    rules: &ModeRules,
) -> Result<Vec<CapSummary>> {
    if caps.is_empty() {
        return Err(Error::invalid("volume_capabilities is required"));
    }
    caps.iter().map(|c| capability(c, rules)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(block: bool, mode: Mode) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(pb::volume_capability::BlockVolume {})
            } else {
                AccessType::Mount(pb::volume_capability::MountVolume::default())
            }),
            access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    fn range(r: i64, l: i64) -> Option<pb::CapacityRange> {
        Some(pb::CapacityRange {
            required_bytes: r,
            limit_bytes: l,
        })
    }

    #[test]
    fn capacity_rules() {
        assert_eq!(capacity(None).unwrap(), GIB);
        assert_eq!(capacity(range(1, 0).as_ref()).unwrap(), MIB);
        assert_eq!(
            capacity(range(MIB as i64 + 1, 0).as_ref()).unwrap(),
            2 * MIB
        );
        assert_eq!(
            capacity(range(0, 10 * MIB as i64).as_ref()).unwrap(),
            10 * MIB
        );
        assert_eq!(
            capacity(range(MIB as i64 + 1, 3 * MIB as i64 / 2).as_ref())
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            capacity(range(100, 2 * MIB as i64 + 7).as_ref()).unwrap(),
            MIB
        );
        assert_eq!(
            capacity(range(-1, 0).as_ref()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            capacity(range(5, 4).as_ref()).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            capacity(range(i64::MAX, 0).as_ref()).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert!(size_fits(GIB, range(GIB as i64, 0).as_ref()));
        assert!(!size_fits(GIB, range(2 * GIB as i64, 0).as_ref()));
    }

    #[test]
    fn rbd_modes() {
        assert!(capability(&cap(false, Mode::SingleNodeWriter), &RBD_MODES).is_ok());
        assert!(capability(&cap(true, Mode::MultiNodeMultiWriter), &RBD_MODES).is_ok());
        let e = capability(&cap(false, Mode::MultiNodeMultiWriter), &RBD_MODES)
            .unwrap_err()
            .message();
        assert!(e.contains("only for raw block"), "{e}");
        assert!(capability(&cap(false, Mode::MultiNodeSingleWriter), &RBD_MODES).is_err());
        assert!(capability(&cap(false, Mode::Unknown), &RBD_MODES).is_err());
        let ro = capability(&cap(false, Mode::MultiNodeReaderOnly), &RBD_MODES).unwrap();
        assert!(ro.read_only && ro.multi_node);
        let mut no_type = cap(false, Mode::SingleNodeWriter);
        no_type.access_type = None;
        assert!(capability(&no_type, &RBD_MODES).is_err());
        assert_eq!(
            capabilities(&[], &RBD_MODES).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn cephfs_is_filesystem_only() {
        assert!(capability(&cap(false, Mode::MultiNodeMultiWriter), &CEPHFS_MODES).is_ok());
        assert!(capability(&cap(true, Mode::SingleNodeWriter), &CEPHFS_MODES).is_err());
    }

    #[test]
    fn names_and_ids() {
        assert!(name("pvc-1").is_ok());
        assert!(name("").is_err());
        assert!(name("a\u{1}b").is_err());
        assert!(id(&"x".repeat(129), "volume_id").is_err());
        assert!(id("", "volume_id").is_err());
    }
}
