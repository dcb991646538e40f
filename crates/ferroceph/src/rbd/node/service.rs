//! The gRPC Node service: requests in, `Status` out (the only place it is built).

use super::*;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl Node for RbdNode {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let staging = request.get_ref().staging_target_path.clone();
        self.inner.stage(request.into_inner()).await?;
        if let Ok(Some(rec)) = record::read(Path::new(&staging)) {
            crate::metrics::get().volume_staged("rbd", &staging, &rec.mounter);
        }
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let staging = request.get_ref().staging_target_path.clone();
        self.inner.unstage(request.into_inner()).await?;
        crate::metrics::get().volume_unstaged(&staging);
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        self.inner.publish(request.into_inner()).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        self.inner.unpublish(request.into_inner()).await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        Ok(Response::new(
            self.inner.volume_stats(request.into_inner()).await?,
        ))
    }

    async fn node_expand_volume(
        &self,
        request: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let capacity_bytes = self.inner.expand(request.into_inner()).await?;
        Ok(Response::new(pb::NodeExpandVolumeResponse {
            capacity_bytes,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        let caps = [
            CapType::StageUnstageVolume,
            CapType::ExpandVolume,
            CapType::GetVolumeStats,
            CapType::VolumeCondition,
            CapType::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| pb::NodeServiceCapability {
            r#type: Some(pb::node_service_capability::Type::Rpc(
                pb::node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.inner.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
