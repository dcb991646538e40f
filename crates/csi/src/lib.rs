//! Container Storage Interface (CSI) **v1.12.0** for ferroceph.
//!
//! Everything is generated at build time from `proto/csi.proto`
//! (package `csi.v1`) by `build.rs`:
//!
//! * [`v1`] — prost message types plus tonic clients and servers for all five
//!   services: `identity_{client,server}`, `controller_{client,server}`,
//!   `node_{client,server}`, `group_controller_{client,server}` and
//!   `snapshot_metadata_{client,server}` (server-streaming
//!   `GetMetadataAllocated` / `GetMetadataDelta`).
//! * `serde::Serialize` / `serde::Deserialize` for every `csi.v1` message and
//!   enum, following the proto3 JSON mapping (pbjson): lowerCamelCase keys on
//!   output, both lowerCamelCase and the original snake_case accepted on
//!   input, enums as their string names (integers also accepted on input),
//!   well-known types (`BoolValue`, `Int64Value`, `Timestamp`) from
//!   [`pbjson_types`]. JSON output is **not** redacted: a JSON client has to
//!   be able to send secrets.
//! * `Debug` for every message with a `csi_secret` field is generated so that
//!   secret values are never printed: map keys are shown, each value is
//!   printed as `***` (see [`v1::REDACTED_MESSAGES`] for the list). All other
//!   messages use prost's derived `Debug`.
//! * [`FILE_DESCRIPTOR_SET`] — the encoded `FileDescriptorSet` of `csi.proto`
//!   and its imports (with source info and custom options), e.g. for gRPC
//!   server reflection.

mod redact;

/// Version of the CSI specification this crate implements.
pub const CSI_SPEC_VERSION: &str = "1.12.0";

/// Encoded `google.protobuf.FileDescriptorSet` for `csi.proto`, including its
/// imports (`descriptor.proto`, `timestamp.proto`, `wrappers.proto`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_descriptor.bin"));

/// Generated code for protobuf package `csi.v1`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all,
    unreachable_pub
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/csi.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/csi.v1.serde.rs"));
    include!(concat!(env!("OUT_DIR"), "/csi.v1.redacted_debug.rs"));
}

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;
    use std::collections::HashMap;

    const SECRET: &str = "AQBsecretKEY==";

    fn secrets() -> HashMap<String, String> {
        HashMap::from([
            ("userID".to_string(), "admin".to_string()),
            ("userKey".to_string(), SECRET.to_string()),
        ])
    }

    fn mount_cap(mode: v1::volume_capability::access_mode::Mode) -> v1::VolumeCapability {
        v1::VolumeCapability {
            access_type: Some(v1::volume_capability::AccessType::Mount(
                v1::volume_capability::MountVolume {
                    fs_type: "ext4".into(),
                    mount_flags: vec!["discard".into()],
                    volume_mount_group: String::new(),
                },
            )),
            access_mode: Some(v1::volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    fn create_volume_request() -> v1::CreateVolumeRequest {
        v1::CreateVolumeRequest {
            name: "pvc-1234".into(),
            capacity_range: Some(v1::CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap(
                v1::volume_capability::access_mode::Mode::SingleNodeMultiWriter,
            )],
            parameters: HashMap::from([("pool".to_string(), "rbd".to_string())]),
            secrets: secrets(),
            mutable_parameters: HashMap::from([("qos".to_string(), "gold".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn debug_redacts_create_volume_secrets() {
        let out = format!("{:?}", create_volume_request());
        assert!(!out.contains(SECRET), "secret leaked: {out}");
        assert!(!out.contains("admin"), "secret leaked: {out}");
        assert!(out.contains("pvc-1234"), "{out}");
        assert!(out.contains("CreateVolumeRequest"), "{out}");
        assert!(
            out.contains(r#"secrets: {"userID": ***, "userKey": ***}"#),
            "{out}"
        );
        // Non-secret fields are printed as usual, including nested messages.
        assert!(out.contains("\"pool\""), "{out}");
        assert!(out.contains("ext4"), "{out}");
        assert!(out.contains("mutable_parameters"), "{out}");
        // Alternate form must redact too.
        let pretty = format!("{:#?}", create_volume_request());
        assert!(!pretty.contains(SECRET), "secret leaked: {pretty}");
    }

    #[test]
    fn debug_redacts_node_stage_secrets() {
        let req = v1::NodeStageVolumeRequest {
            volume_id: "0001-0009-rook-ceph-0000000000000001-abcd".into(),
            publish_context: HashMap::new(),
            staging_target_path: "/var/lib/kubelet/plugins/staging".into(),
            volume_capability: Some(mount_cap(
                v1::volume_capability::access_mode::Mode::SingleNodeWriter,
            )),
            secrets: secrets(),
            volume_context: HashMap::from([("clusterID".to_string(), "c1".to_string())]),
        };
        let out = format!("{req:?}");
        assert!(!out.contains(SECRET), "secret leaked: {out}");
        assert!(
            out.contains("0001-0009-rook-ceph-0000000000000001-abcd"),
            "{out}"
        );
        assert!(out.contains("/var/lib/kubelet/plugins/staging"), "{out}");
        assert!(out.contains("userKey"), "{out}");

        // Also through a tonic::Request wrapper, as a server would log it.
        let wrapped = tonic::Request::new(req);
        let out = format!("{wrapped:?}");
        assert!(!out.contains(SECRET), "secret leaked: {out}");
    }

    #[test]
    fn every_secret_bearing_message_is_redacted() {
        let mut names: Vec<&str> = v1::REDACTED_MESSAGES.to_vec();
        names.sort_unstable();
        let mut expected = vec![
            "csi.v1.ControllerExpandVolumeRequest",
            "csi.v1.ControllerModifyVolumeRequest",
            "csi.v1.ControllerPublishVolumeRequest",
            "csi.v1.ControllerUnpublishVolumeRequest",
            "csi.v1.CreateSnapshotRequest",
            "csi.v1.CreateVolumeGroupSnapshotRequest",
            "csi.v1.CreateVolumeRequest",
            "csi.v1.DeleteSnapshotRequest",
            "csi.v1.DeleteVolumeGroupSnapshotRequest",
            "csi.v1.DeleteVolumeRequest",
            "csi.v1.GetMetadataAllocatedRequest",
            "csi.v1.GetMetadataDeltaRequest",
            "csi.v1.GetSnapshotRequest",
            "csi.v1.GetVolumeGroupSnapshotRequest",
            "csi.v1.ListSnapshotsRequest",
            "csi.v1.NodeExpandVolumeRequest",
            "csi.v1.NodePublishVolumeRequest",
            "csi.v1.NodeStageVolumeRequest",
            "csi.v1.ValidateVolumeCapabilitiesRequest",
        ];
        expected.sort_unstable();
        assert_eq!(names, expected);

        // Spot-check a few of the others.
        let s = format!(
            "{:?} {:?} {:?}",
            v1::NodeExpandVolumeRequest {
                secrets: secrets(),
                ..Default::default()
            },
            v1::GetMetadataDeltaRequest {
                secrets: secrets(),
                ..Default::default()
            },
            v1::ControllerModifyVolumeRequest {
                secrets: secrets(),
                ..Default::default()
            },
        );
        assert!(!s.contains(SECRET), "secret leaked: {s}");
    }

    #[test]
    fn access_mode_wire_values() {
        use v1::volume_capability::access_mode::Mode;
        assert_eq!(Mode::SingleNodeSingleWriter as i32, 6);
        assert_eq!(Mode::SingleNodeMultiWriter as i32, 7);
        assert_eq!(
            Mode::SingleNodeMultiWriter.as_str_name(),
            "SINGLE_NODE_MULTI_WRITER"
        );

        // Block access + SINGLE_NODE_MULTI_WRITER:
        // field 1 (block, empty msg) = 0a 00; field 3 (access_mode) = 1a 02 { 08 07 }.
        let cap = v1::VolumeCapability {
            access_type: Some(v1::volume_capability::AccessType::Block(
                v1::volume_capability::BlockVolume {},
            )),
            access_mode: Some(v1::volume_capability::AccessMode {
                mode: Mode::SingleNodeMultiWriter as i32,
            }),
        };
        assert_eq!(
            cap.encode_to_vec(),
            vec![0x0a, 0x00, 0x1a, 0x02, 0x08, 0x07]
        );
        let back = v1::VolumeCapability::decode([0x1a, 0x02, 0x08, 0x07].as_slice()).unwrap();
        assert_eq!(
            back.access_mode.unwrap().mode(),
            Mode::SingleNodeMultiWriter
        );
    }

    #[test]
    fn field_numbers_on_the_wire() {
        // CreateVolumeRequest.mutable_parameters = 8 (map => LEN, tag 0x42).
        let req = v1::CreateVolumeRequest {
            mutable_parameters: HashMap::from([("k".to_string(), "v".to_string())]),
            ..Default::default()
        };
        assert_eq!(
            req.encode_to_vec(),
            vec![0x42, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v']
        );

        // NodeExpandVolumeRequest.secrets = 6 (tag 0x32).
        let req = v1::NodeExpandVolumeRequest {
            secrets: HashMap::from([("k".to_string(), "v".to_string())]),
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec()[0], 0x32);

        // Capability enums added in recent spec versions.
        use v1::controller_service_capability::rpc::Type as Ctl;
        use v1::node_service_capability::rpc::Type as NodeCap;
        use v1::plugin_capability::service::Type as Svc;
        assert_eq!(Ctl::ModifyVolume as i32, 14);
        assert_eq!(Ctl::GetSnapshot as i32, 15);
        assert_eq!(NodeCap::VolumeMountGroup as i32, 6);
        assert_eq!(Svc::GroupControllerService as i32, 3);
        assert_eq!(Svc::SnapshotMetadataService as i32, 4);
        assert_eq!(v1::BlockMetadataType::VariableLength as i32, 2);
    }

    #[test]
    fn json_round_trip_camel_case() {
        let req = create_volume_request();
        let value = serde_json::to_value(&req).unwrap();
        let obj = value.as_object().unwrap();
        for key in [
            "name",
            "capacityRange",
            "volumeCapabilities",
            "parameters",
            "secrets",
            "mutableParameters",
        ] {
            assert!(obj.contains_key(key), "missing {key}: {value}");
        }
        assert!(!obj.contains_key("volume_capabilities"));
        // int64 is a JSON string per the proto3 mapping.
        assert_eq!(value["capacityRange"]["requiredBytes"], "1073741824");
        // Enums are strings; nested oneof member by its JSON name.
        let cap = &value["volumeCapabilities"][0];
        assert_eq!(cap["accessMode"]["mode"], "SINGLE_NODE_MULTI_WRITER");
        assert_eq!(cap["mount"]["fsType"], "ext4");
        // JSON carries the secret: the CLI must be able to send it.
        assert_eq!(value["secrets"]["userKey"], SECRET);

        let text = serde_json::to_string(&req).unwrap();
        let back: v1::CreateVolumeRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn json_accepts_snake_case_and_wrappers() {
        let json = r#"{
            "volume_id": "vol-1",
            "node_id": "node-a",
            "volume_capability": {
                "block": {},
                "access_mode": {"mode": "MULTI_NODE_MULTI_WRITER"}
            },
            "readonly": true,
            "secrets": {"userKey": "x"}
        }"#;
        let req: v1::ControllerPublishVolumeRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.volume_id, "vol-1");
        assert_eq!(req.node_id, "node-a");
        assert!(req.readonly);
        assert_eq!(
            req.volume_capability.unwrap().access_mode.unwrap().mode(),
            v1::volume_capability::access_mode::Mode::MultiNodeMultiWriter
        );

        // google.protobuf wrappers / Timestamp come from pbjson-types.
        let resp = v1::ProbeResponse {
            ready: Some(pbjson_types::BoolValue { value: true }),
        };
        assert_eq!(serde_json::to_string(&resp).unwrap(), r#"{"ready":true}"#);
        let snap: v1::Snapshot = serde_json::from_str(
            r#"{"snapshotId":"s1","creationTime":"2024-01-02T03:04:05Z","readyToUse":true}"#,
        )
        .unwrap();
        assert_eq!(snap.creation_time.unwrap().seconds, 1_704_164_645);
    }

    #[test]
    fn descriptor_set_lists_all_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds.file.iter().find(|f| f.name() == "csi.proto").unwrap();
        assert_eq!(file.package(), "csi.v1");
        let services: Vec<&str> = file.service.iter().map(|s| s.name()).collect();
        assert_eq!(
            services,
            [
                "Identity",
                "Controller",
                "GroupController",
                "SnapshotMetadata",
                "Node"
            ]
        );
        let sm = file
            .service
            .iter()
            .find(|s| s.name() == "SnapshotMetadata")
            .unwrap();
        assert!(sm
            .method
            .iter()
            .all(|m| m.server_streaming() && !m.client_streaming()));
        // Imports are included for reflection.
        assert!(fds
            .file
            .iter()
            .any(|f| f.name() == "google/protobuf/wrappers.proto"));
    }
}
