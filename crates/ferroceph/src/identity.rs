//! CSI Identity service: who we are, what we serve, and whether we are ready.

use csi::v1 as pb;
use csi::v1::identity_server::Identity;
use std::collections::HashMap;
use tonic::{Request, Response, Status};

pub(crate) struct IdentityService {
    name: String,
    controller: bool,
}

impl IdentityService {
    pub(crate) fn new(name: String, controller: bool) -> Self {
        IdentityService { name, controller }
    }
}

fn service_cap(t: pb::plugin_capability::service::Type) -> pb::PluginCapability {
    pb::PluginCapability {
        r#type: Some(pb::plugin_capability::Type::Service(
            pb::plugin_capability::Service { r#type: t as i32 },
        )),
    }
}

fn expansion_cap(t: pb::plugin_capability::volume_expansion::Type) -> pb::PluginCapability {
    pb::PluginCapability {
        r#type: Some(pb::plugin_capability::Type::VolumeExpansion(
            pb::plugin_capability::VolumeExpansion { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        let manifest = HashMap::from([(
            "commit".to_string(),
            env!("FERROCEPH_GIT_COMMIT").to_string(),
        )]);
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest,
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(service_cap(
                pb::plugin_capability::service::Type::ControllerService,
            ));
        }
        capabilities.push(expansion_cap(
            pb::plugin_capability::volume_expansion::Type::Online,
        ));
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse {
            ready: Some(pbjson_types::BoolValue { value: true }),
        }))
    }
}
