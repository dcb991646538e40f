//! `ferroceph client <Rpc>`: a CSI client for people and scripts. The request is JSON
//! (proto3 JSON mapping, as `--json`, `--json -` for stdin, or built from flags for the
//! common fields); the response is printed as JSON. Secrets are read from a file so they
//! never appear in a process list.

use crate::server::socket_path;
use clap::Args;
use csi::v1 as pb;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// RPC to call, e.g. GetPluginInfo, Probe, CreateVolume, NodeStageVolume (see --list).
    #[arg(required_unless_present = "list")]
    pub rpc: Option<String>,
    /// Print the RPCs this client can call.
    #[arg(long)]
    pub list: bool,
    /// Driver endpoint.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Request as JSON; `-` reads it from standard input. Flags below are merged on top.
    #[arg(long)]
    pub json: Option<String>,
    /// JSON object (or KEY=VALUE lines) with the request's secrets, e.g. {"userID": "..", "userKey": ".."}.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
    /// Deadline of the call.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub volume_id: Option<String>,
    #[arg(long)]
    pub snapshot_id: Option<String>,
    #[arg(long)]
    pub source_volume_id: Option<String>,
    #[arg(long)]
    pub node_id: Option<String>,
    #[arg(long)]
    pub staging_path: Option<String>,
    #[arg(long)]
    pub target_path: Option<String>,
    /// Capacity, e.g. 1Gi, 500Mi, 1073741824.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Parameter KEY=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_kv)]
    pub params: Vec<(String, String)>,
    /// Volume context KEY=VALUE (repeatable).
    #[arg(long = "context", value_parser = parse_kv)]
    pub context: Vec<(String, String)>,
    /// Access mode: a CSI mode name or RWO, RWOP, ROX, RWX.
    #[arg(long)]
    pub access_mode: Option<String>,
    /// Raw block volume instead of a filesystem.
    #[arg(long)]
    pub block: bool,
    #[arg(long)]
    pub fs_type: Option<String>,
    #[arg(long = "mount-flag")]
    pub mount_flags: Vec<String>,
    #[arg(long)]
    pub readonly: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use Ki, Mi, Gi, Ti)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn access_mode_name(s: &str) -> String {
    match s {
        "RWO" => "SINGLE_NODE_WRITER",
        "RWOP" => "SINGLE_NODE_SINGLE_WRITER",
        "ROX" => "MULTI_NODE_READER_ONLY",
        "RWX" => "MULTI_NODE_MULTI_WRITER",
        other => other,
    }
    .to_string()
}

/// The RPCs this client can call, with the service each belongs to.
pub const RPCS: &[(&str, &str)] = &[
    ("GetPluginInfo", "Identity"),
    ("GetPluginCapabilities", "Identity"),
    ("Probe", "Identity"),
    ("CreateVolume", "Controller"),
    ("DeleteVolume", "Controller"),
    ("ControllerPublishVolume", "Controller"),
    ("ControllerUnpublishVolume", "Controller"),
    ("ValidateVolumeCapabilities", "Controller"),
    ("ListVolumes", "Controller"),
    ("GetCapacity", "Controller"),
    ("ControllerGetCapabilities", "Controller"),
    ("CreateSnapshot", "Controller"),
    ("DeleteSnapshot", "Controller"),
    ("ListSnapshots", "Controller"),
    ("ControllerExpandVolume", "Controller"),
    ("ControllerGetVolume", "Controller"),
    ("ControllerModifyVolume", "Controller"),
    ("NodeStageVolume", "Node"),
    ("NodeUnstageVolume", "Node"),
    ("NodePublishVolume", "Node"),
    ("NodeUnpublishVolume", "Node"),
    ("NodeGetVolumeStats", "Node"),
    ("NodeExpandVolume", "Node"),
    ("NodeGetCapabilities", "Node"),
    ("NodeGetInfo", "Node"),
];

/// RPCs whose request has a `secrets` field.
fn takes_secrets(rpc: &str) -> bool {
    matches!(
        rpc,
        "CreateVolume"
            | "DeleteVolume"
            | "ControllerPublishVolume"
            | "ControllerUnpublishVolume"
            | "ValidateVolumeCapabilities"
            | "CreateSnapshot"
            | "DeleteSnapshot"
            | "ListSnapshots"
            | "ControllerExpandVolume"
            | "ControllerModifyVolume"
            | "NodeStageVolume"
            | "NodePublishVolume"
            | "NodeExpandVolume"
    )
}

fn read_secrets(path: &PathBuf) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read secrets file {}: {e}", path.display()))?;
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) {
        return Ok(m);
    }
    let mut m = Map::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line.split_once('=').ok_or_else(|| {
            anyhow::anyhow!(
                "secrets file {} must be a JSON object or KEY=VALUE lines",
                path.display()
            )
        })?;
        m.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
    }
    Ok(m)
}

/// Builds the JSON request for `rpc` from `--json` and the flags.
pub fn build_request(
    rpc: &str,
    args: &ClientArgs,
    stdin: impl FnOnce() -> String,
) -> anyhow::Result<Value> {
    let mut req = base_request(args, stdin)?;
    set_flag_fields(rpc, args, &mut req);
    set_capability(rpc, args, &mut req);
    if let Some(path) = &args.secrets_file {
        if !takes_secrets(rpc) {
            anyhow::bail!("{rpc} carries no secrets; drop --secrets-file");
        }
        req.insert("secrets".into(), Value::Object(read_secrets(path)?));
    }
    Ok(Value::Object(req))
}

/// The request `--json` gives (`-` reads it from stdin), or an empty one.
fn base_request(
    args: &ClientArgs,
    stdin: impl FnOnce() -> String,
) -> anyhow::Result<Map<String, Value>> {
    Ok(match args.json.as_deref() {
        None => Map::new(),
        Some(text) => {
            let text = if text == "-" {
                stdin()
            } else {
                text.to_string()
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => anyhow::bail!("--json must be a JSON object"),
                Err(e) => anyhow::bail!("--json is not valid JSON: {e}"),
            }
        }
    })
}

/// The fields the flags set (`--name`, `--volume-id`, ...), overriding `--json`; where a
/// flag lands depends on the RPC.
fn set_flag_fields(rpc: &str, args: &ClientArgs, req: &mut Map<String, Value>) {
    let mut set = |k: &str, v: Value| {
        req.insert(k.to_string(), v);
    };
    if let Some(v) = &args.name {
        set("name", json!(v));
    }
    if let Some(v) = &args.volume_id {
        set("volumeId", json!(v));
    }
    if let Some(v) = &args.snapshot_id {
        set("snapshotId", json!(v));
    }
    if let Some(v) = &args.source_volume_id {
        set(
            if rpc == "CreateSnapshot" {
                "sourceVolumeId"
            } else {
                "volumeContentSource"
            },
            if rpc == "CreateSnapshot" {
                json!(v)
            } else {
                json!({"volume": {"volumeId": v}})
            },
        );
    }
    if let Some(v) = &args.node_id {
        set("nodeId", json!(v));
    }
    if let Some(v) = &args.staging_path {
        set("stagingTargetPath", json!(v));
    }
    if let Some(v) = &args.target_path {
        set(
            if matches!(rpc, "NodeGetVolumeStats" | "NodeExpandVolume") {
                "volumePath"
            } else {
                "targetPath"
            },
            json!(v),
        );
    }
    if let Some(v) = args.size {
        set("capacityRange", json!({"requiredBytes": v.to_string()}));
    }
    if !args.params.is_empty() {
        let m: Map<String, Value> = args
            .params
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        set("parameters", Value::Object(m));
    }
    if !args.context.is_empty() {
        let m: Map<String, Value> = args
            .context
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        set(
            if rpc == "CreateSnapshot" {
                "parameters"
            } else {
                "volumeContext"
            },
            Value::Object(m),
        );
    }
    if args.readonly {
        set("readonly", json!(true));
    }
}

/// The volume capability (or capabilities) of the RPCs that take one: built from the
/// flags when any is given, or a default when the request lacks it.
fn set_capability(rpc: &str, args: &ClientArgs, req: &mut Map<String, Value>) {
    let cap_given = args.access_mode.is_some()
        || args.block
        || args.fs_type.is_some()
        || !args.mount_flags.is_empty();
    let wants_caps = matches!(rpc, "CreateVolume" | "ValidateVolumeCapabilities");
    let wants_cap = matches!(
        rpc,
        "NodeStageVolume"
            | "NodePublishVolume"
            | "ControllerPublishVolume"
            | "ControllerExpandVolume"
            | "NodeExpandVolume"
    );
    let missing_cap = (wants_caps && !req.contains_key("volumeCapabilities"))
        || (matches!(
            rpc,
            "NodeStageVolume" | "NodePublishVolume" | "ControllerPublishVolume"
        ) && !req.contains_key("volumeCapability"));
    if (wants_caps || wants_cap) && (cap_given || missing_cap) {
        let mode = access_mode_name(args.access_mode.as_deref().unwrap_or("SINGLE_NODE_WRITER"));
        let cap = if args.block {
            json!({"block": {}, "accessMode": {"mode": mode}})
        } else {
            json!({"mount": {"fsType": args.fs_type.clone().unwrap_or_default(), "mountFlags": args.mount_flags}, "accessMode": {"mode": mode}})
        };
        if wants_caps {
            req.insert("volumeCapabilities".into(), json!([cap]));
        } else {
            req.insert("volumeCapability".into(), cap);
        }
    }
}

/// Connects to a unix-socket endpoint.
pub async fn connect(endpoint: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let path = socket_path(endpoint).map_err(anyhow::Error::msg)?;
    let shown = path.display().to_string();
    let channel = Endpoint::try_from("http://[::1]:50051")?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {shown}: {e} (is the driver running?)"))?;
    Ok(channel)
}

macro_rules! unary {
    ($client:expr, $method:ident, $req_ty:ty, $json:expr) => {{
        let req: $req_ty = serde_json::from_value($json)
            .map_err(|e| anyhow::anyhow!("request does not match {}: {e}", stringify!($req_ty)))?;
        let resp = $client
            .$method(tonic::Request::new(req))
            .await?
            .into_inner();
        serde_json::to_value(&resp)?
    }};
}

/// Calls `rpc` with a JSON request and returns the JSON response; gRPC errors come back
/// as `tonic::Status` inside the error.
pub async fn call(channel: Channel, rpc: &str, req: Value) -> anyhow::Result<Value> {
    use pb::controller_client::ControllerClient;
    use pb::identity_client::IdentityClient;
    use pb::node_client::NodeClient;
    let mut id = IdentityClient::new(channel.clone());
    let mut ctl = ControllerClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    Ok(match rpc {
        "GetPluginInfo" => unary!(id, get_plugin_info, pb::GetPluginInfoRequest, req),
        "GetPluginCapabilities" => unary!(
            id,
            get_plugin_capabilities,
            pb::GetPluginCapabilitiesRequest,
            req
        ),
        "Probe" => unary!(id, probe, pb::ProbeRequest, req),
        "CreateVolume" => unary!(ctl, create_volume, pb::CreateVolumeRequest, req),
        "DeleteVolume" => unary!(ctl, delete_volume, pb::DeleteVolumeRequest, req),
        "ControllerPublishVolume" => unary!(
            ctl,
            controller_publish_volume,
            pb::ControllerPublishVolumeRequest,
            req
        ),
        "ControllerUnpublishVolume" => unary!(
            ctl,
            controller_unpublish_volume,
            pb::ControllerUnpublishVolumeRequest,
            req
        ),
        "ValidateVolumeCapabilities" => unary!(
            ctl,
            validate_volume_capabilities,
            pb::ValidateVolumeCapabilitiesRequest,
            req
        ),
        "ListVolumes" => unary!(ctl, list_volumes, pb::ListVolumesRequest, req),
        "GetCapacity" => unary!(ctl, get_capacity, pb::GetCapacityRequest, req),
        "ControllerGetCapabilities" => unary!(
            ctl,
            controller_get_capabilities,
            pb::ControllerGetCapabilitiesRequest,
            req
        ),
        "CreateSnapshot" => unary!(ctl, create_snapshot, pb::CreateSnapshotRequest, req),
        "DeleteSnapshot" => unary!(ctl, delete_snapshot, pb::DeleteSnapshotRequest, req),
        "ListSnapshots" => unary!(ctl, list_snapshots, pb::ListSnapshotsRequest, req),
        "ControllerExpandVolume" => unary!(
            ctl,
            controller_expand_volume,
            pb::ControllerExpandVolumeRequest,
            req
        ),
        "ControllerGetVolume" => unary!(
            ctl,
            controller_get_volume,
            pb::ControllerGetVolumeRequest,
            req
        ),
        "ControllerModifyVolume" => unary!(
            ctl,
            controller_modify_volume,
            pb::ControllerModifyVolumeRequest,
            req
        ),
        "NodeStageVolume" => unary!(node, node_stage_volume, pb::NodeStageVolumeRequest, req),
        "NodeUnstageVolume" => unary!(node, node_unstage_volume, pb::NodeUnstageVolumeRequest, req),
        "NodePublishVolume" => unary!(node, node_publish_volume, pb::NodePublishVolumeRequest, req),
        "NodeUnpublishVolume" => unary!(
            node,
            node_unpublish_volume,
            pb::NodeUnpublishVolumeRequest,
            req
        ),
        "NodeGetVolumeStats" => unary!(
            node,
            node_get_volume_stats,
            pb::NodeGetVolumeStatsRequest,
            req
        ),
        "NodeExpandVolume" => unary!(node, node_expand_volume, pb::NodeExpandVolumeRequest, req),
        "NodeGetCapabilities" => unary!(
            node,
            node_get_capabilities,
            pb::NodeGetCapabilitiesRequest,
            req
        ),
        "NodeGetInfo" => unary!(node, node_get_info, pb::NodeGetInfoRequest, req),
        other => anyhow::bail!(
            "unknown RPC {other:?}; `ferroceph client --list` shows the RPCs it can call"
        ),
    })
}

/// Entry point of the subcommand; returns the process exit code.
pub async fn run(args: ClientArgs) -> i32 {
    if args.list {
        for (rpc, svc) in RPCS {
            println!("{rpc}\t{svc}");
        }
        return 0;
    }
    let rpc = args.rpc.clone().unwrap_or_default();
    let result = async {
        if !RPCS.iter().any(|(r, _)| *r == rpc) {
            anyhow::bail!(
                "unknown RPC {rpc:?}; `ferroceph client --list` shows the RPCs it can call"
            );
        }
        let req = build_request(&rpc, &args, || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s);
            s
        })?;
        let channel = connect(&args.endpoint, args.timeout).await?;
        call(channel, &rpc, req).await
    }
    .await;
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(e) => {
            let err = match e.downcast_ref::<tonic::Status>() {
                Some(st) => json!({"code": format!("{:?}", st.code()), "message": st.message()}),
                None => json!({"code": "ClientError", "message": e.to_string()}),
            };
            eprintln!("{}", json!({ "error": err }));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: ClientArgs,
    }

    fn args(v: &[&str]) -> ClientArgs {
        T::try_parse_from(std::iter::once("t").chain(v.iter().copied()))
            .unwrap()
            .c
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("500Mi").unwrap(), 500 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1Xi").is_err());
        assert!(parse_size("99999999999Ti").is_err());
    }

    #[test]
    fn create_volume_from_flags_deserialises() {
        let a = args(&[
            "CreateVolume",
            "--name",
            "pvc-1",
            "--size",
            "1Gi",
            "--param",
            "pool=rbd",
            "--access-mode",
            "RWX",
            "--block",
        ]);
        let v = build_request("CreateVolume", &a, String::new).unwrap();
        let req: pb::CreateVolumeRequest = serde_json::from_value(v).unwrap();
        assert_eq!(req.name, "pvc-1");
        assert_eq!(req.capacity_range.unwrap().required_bytes, 1 << 30);
        assert_eq!(req.parameters.get("pool").map(String::as_str), Some("rbd"));
        let cap = &req.volume_capabilities[0];
        assert_eq!(
            cap.access_mode.as_ref().unwrap().mode,
            pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32
        );
        assert!(matches!(
            cap.access_type,
            Some(pb::volume_capability::AccessType::Block(_))
        ));
    }

    #[test]
    fn json_input_and_secrets_file_merge() {
        let dir = tempfile::tempdir().unwrap();
        let sec = dir.path().join("s");
        std::fs::write(&sec, "userID=csi\nuserKey=AQBkey==\n").unwrap();
        let a = args(&[
            "NodeStageVolume",
            "--json",
            "-",
            "--secrets-file",
            sec.to_str().unwrap(),
            "--staging-path",
            "/st",
        ]);
        let v = build_request("NodeStageVolume", &a, || {
            r#"{"volumeId": "v1"}"#.to_string()
        })
        .unwrap();
        let req: pb::NodeStageVolumeRequest = serde_json::from_value(v).unwrap();
        assert_eq!(req.volume_id, "v1");
        assert_eq!(req.staging_target_path, "/st");
        assert_eq!(
            req.secrets.get("userKey").map(String::as_str),
            Some("AQBkey==")
        );
        assert!(req.volume_capability.is_some());
        assert!(!format!("{req:?}").contains("AQBkey=="));
    }
}
