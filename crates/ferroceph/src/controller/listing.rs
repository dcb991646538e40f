//! Shapes shared by the RBD and CephFS controllers: pagination tokens, timestamps,
//! capability lists, and `<prefix><uuid>` names.

use crate::error::{Error, Result};
use crate::volid::CsiId;
use csi::v1 as pb;
use pb::controller_service_capability::rpc::Type as CapType;

pub(crate) fn timestamp(nanos: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// The uuid a `<prefix><uuid>` image or subvolume name ends with.
pub(crate) fn uuid_tail(name: &str) -> Option<&str> {
    let tail = name.get(name.len().checked_sub(36)?..)?;
    uuid::Uuid::parse_str(tail).ok().map(|_| tail)
}

/// One page of `items` (sorted by `key`): the entries after the token, which is the key of
/// the last entry of the previous page. Entries that come and go between pages never shift
/// the others, so none is skipped. A token that is not a handle answers Aborted, as the
/// spec asks.
pub(crate) fn page_after<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> &str,
    token: &str,
    max: i32,
) -> Result<(Vec<T>, String)> {
    if max < 0 {
        return Err(Error::invalid("max_entries must not be negative"));
    }
    let start = if token.is_empty() {
        0
    } else {
        if CsiId::decode(token).is_err() {
            return Err(Error::Aborted(format!(
                "starting_token {token:?} is not valid; list again from the start"
            )));
        }
        items.partition_point(|i| key(i) <= token)
    };
    let end = if max == 0 {
        items.len()
    } else {
        (start + max as usize).min(items.len())
    };
    let next = if end < items.len() && end > start {
        key(&items[end - 1]).to_string()
    } else {
        String::new()
    };
    Ok((items[start..end].to_vec(), next))
}

/// What a ListSnapshots request narrows the listing to.
pub(crate) struct SnapshotFilter {
    /// The (clusterID, pool id or fscid) its ids name; None: every place the driver knows.
    pub(crate) target: Option<(String, i64)>,
    pub(crate) snapshot_uuid: Option<String>,
    pub(crate) source: Option<CsiId>,
}

/// The filter of a ListSnapshots request; None when an id does not decode, since then
/// nothing can match and the answer is an empty list.
pub(crate) fn snapshot_filter(req: &pb::ListSnapshotsRequest) -> Option<SnapshotFilter> {
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

pub(crate) fn controller_capabilities(caps: &[CapType]) -> pb::ControllerGetCapabilitiesResponse {
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
    fn pages_resume_after_the_last_entry_even_when_entries_go() {
        let ids: Vec<String> = (0..5)
            .map(|i| {
                CsiId::new("c", 1, &format!("00000000-0000-0000-0000-00000000000{i}"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        #[allow(clippy::ptr_arg)] // the item type of the list is String
        fn key(s: &String) -> &str {
            s.as_str()
        }
        let (first, next) = page_after(&ids, key, "", 2).unwrap();
        assert_eq!(first, ids[0..2]);
        assert_eq!(next, ids[1]);
        // the first page's entries are deleted: the second page still starts at ids[2]
        let (second, next) = page_after(&ids[2..], key, &next, 2).unwrap();
        assert_eq!(second, ids[2..4]);
        let (last, next) = page_after(&ids, key, &next, 2).unwrap();
        assert_eq!((last, next), (vec![ids[4].clone()], String::new()));
        assert_eq!(page_after(&ids, key, "", 0).unwrap().0.len(), 5);
        assert_eq!(
            page_after(&ids, key, "x", 1).unwrap_err().code(),
            tonic::Code::Aborted
        );
        assert_eq!(
            page_after(&ids, key, "", -1).unwrap_err().code(),
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
