//! RBD Node service. Staging and publishing arrive with the node issue; until then the
//! node answers NodeGetInfo and advertises no capabilities, and every other RPC answers
//! UNIMPLEMENTED.

use csi::v1 as pb;
use csi::v1::node_server::Node;
use tonic::{Request, Response, Status};

pub struct RbdNode {
    node_id: String,
}

impl RbdNode {
    pub fn new(node_id: String) -> Self {
        RbdNode { node_id }
    }
}

#[tonic::async_trait]
impl Node for RbdNode {
    async fn node_get_capabilities(
        &self,
        _request: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
