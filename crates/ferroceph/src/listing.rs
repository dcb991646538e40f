//! Shapes shared by the RBD and CephFS controllers: pagination tokens, timestamps,
//! capability lists, and `<prefix><uuid>` names.

use crate::volid::CsiId;
use csi::v1 as pb;
use pb::controller_service_capability::rpc::Type as CapType;
use tonic::Status;

pub fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn timestamp(nanos: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// The uuid a `<prefix><uuid>` image or subvolume name ends with.
pub fn uuid_tail(name: &str) -> Option<&str> {
    let tail = name.get(name.len().checked_sub(36)?..)?;
    uuid::Uuid::parse_str(tail).ok().map(|_| tail)
}

/// One page of `items`: the token is the offset of the next page; a token that does not
/// fit answers Aborted, as the spec asks.
pub fn page<T: Clone>(items: &[T], token: &str, max: i32) -> Result<(Vec<T>, String), Status> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .ok()
            .filter(|s| *s <= items.len())
            .ok_or_else(|| {
                Status::aborted(format!(
                    "starting_token {token:?} is not valid; list again from the start"
                ))
            })?
    };
    if max < 0 {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    }
    let end = if max == 0 {
        items.len()
    } else {
        (start + max as usize).min(items.len())
    };
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items[start..end].to_vec(), next))
}

/// What a ListSnapshots request narrows the listing to.
pub struct SnapshotFilter {
    /// The (clusterID, pool id or fscid) its ids name; None: every place the driver knows.
    pub target: Option<(String, i64)>,
    pub snapshot_uuid: Option<String>,
    pub source: Option<CsiId>,
}

/// The filter of a ListSnapshots request; None when an id does not decode, since then
/// nothing can match and the answer is an empty list.
pub fn snapshot_filter(req: &pb::ListSnapshotsRequest) -> Option<SnapshotFilter> {
    let decode = |id: &str| (!id.is_empty()).then(|| CsiId::decode(id).ok());
    let snapshot = decode(&req.snapshot_id);
    let source = decode(&req.source_volume_id);
    if matches!(snapshot, Some(None)) || matches!(source, Some(None)) {
        return None;
    }
    let (snapshot, source) = (snapshot.flatten(), source.flatten());
    let target = snapshot
        .as_ref()
        .or(source.as_ref())
        .map(|id| (id.cluster_id.clone(), id.location));
    Some(SnapshotFilter {
        target,
        snapshot_uuid: snapshot.map(|id| id.uuid),
        source,
    })
}

pub fn controller_capabilities(caps: &[CapType]) -> pb::ControllerGetCapabilitiesResponse {
    pb::ControllerGetCapabilitiesResponse {
        capabilities: caps
            .iter()
            .map(|t| pb::ControllerServiceCapability {
                r#type: Some(pb::controller_service_capability::Type::Rpc(
                    pb::controller_service_capability::Rpc { r#type: *t as i32 },
                )),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let v: Vec<u32> = (0..5).collect();
        assert_eq!(page(&v, "", 2).unwrap(), (vec![0, 1], "2".to_string()));
        assert_eq!(page(&v, "4", 2).unwrap(), (vec![4], String::new()));
        assert_eq!(page(&v, "", 0).unwrap().0.len(), 5);
        assert_eq!(page(&v, "9", 1).unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(page(&v, "x", 1).unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(
            page(&v, "", -1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn names_and_times() {
        assert_eq!(
            uuid_tail("csi-vol-eba90b33-0156-11ec-a30b-4678a93686c2"),
            Some("eba90b33-0156-11ec-a30b-4678a93686c2")
        );
        assert_eq!(uuid_tail("short"), None);
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_999_999));
    }
}
