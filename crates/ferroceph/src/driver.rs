//! Wires the services for `--type=rbd|cephfs|liveness` and runs the server until a signal.

use crate::ceph::Ceph;
use crate::cephfs::controller::CephFsController;
use crate::cephfs::node::CephFsNode;
use crate::cli::{DriverType, ServeArgs};
use crate::config::ClusterMap;
use crate::identity::IdentityService;
use crate::locks::OpLocks;
use crate::rbd::controller::RbdController;
use crate::rbd::node::RbdNode;
use crate::server::{incoming, prepare_socket, shutdown_signal, socket_path, RpcLayer};
use anyhow::{bail, Context};
use csi::v1::controller_server::ControllerServer;
use csi::v1::identity_server::IdentityServer;
use csi::v1::node_server::NodeServer;
use std::sync::Arc;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let Some(driver_type) = args.driver_type else {
        bail!("--type is required: rbd, cephfs or liveness (see --help)");
    };
    if driver_type == DriverType::Liveness {
        return crate::liveness::run(args).await;
    }
    serve_metrics(&args).await;
    if args.nodeserver && args.nodeid.as_deref().unwrap_or("").is_empty() {
        bail!("--nodeserver needs --nodeid (or the NODE_ID environment variable)");
    }
    if args.nodeserver {
        prepare_keys_dir(&args.keysdir);
    }
    let path = socket_path(&args.endpoint).map_err(anyhow::Error::msg)?;
    prepare_socket(&path).with_context(|| format!("cannot prepare socket {}", path.display()))?;
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let name = args.driver_name();
    tracing::info!(
        driver = %name,
        version = crate::cli::VERSION,
        endpoint = %path.display(),
        controller = args.controllerserver,
        node = args.nodeserver,
        "serving"
    );

    let identity = IdentityServer::new(IdentityService::new(name, args.controllerserver));
    let clusters = Arc::new(ClusterMap::new(&args.configpath));
    let ceph = Ceph::new(args.cephtimeout);
    let locks = OpLocks::new();
    if args.nodeserver {
        crate::node::outlive::set(crate::node::outlive::Outlive::from_flags(
            &args.attachcgroup,
            &args.cgrouproot,
            &args.cgroupns,
        ));
    }
    let router = tonic::transport::Server::builder()
        .layer(RpcLayer {
            deadline: args.rpctimeout,
        })
        .add_service(identity);
    let mut rbd_controller = None;
    let router = match driver_type {
        DriverType::Rbd => {
            let (controller, node) = (
                args.controllerserver.then(|| {
                    let controller = std::sync::Arc::new(RbdController::new(
                        args.instanceid.clone(),
                        clusters.clone(),
                        ceph.clone(),
                        locks.clone(),
                        args.controllersecrets.clone(),
                    ));
                    // removes deleted images from the trash in the background (a delete
                    // answers after the trash move), and retries every --reapinterval those
                    // a clone or a dead client's watch kept there
                    controller.spawn_trash_reaper(args.reapinterval);
                    rbd_controller = Some(controller.clone());
                    ControllerServer::from_arc(controller)
                }),
                args.nodeserver.then(|| {
                    NodeServer::new(RbdNode::new(
                        args.nodeid.clone().unwrap_or_default(),
                        clusters.clone(),
                        ceph.clone(),
                        args.keysdir.clone(),
                        args.cephtimeout,
                    ))
                }),
            );
            router
                .add_optional_service(controller)
                .add_optional_service(node)
        }
        _ => router
            .add_optional_service(args.controllerserver.then(|| {
                ControllerServer::new(CephFsController::new(
                    args.instanceid.clone(),
                    clusters.clone(),
                    ceph.clone(),
                    locks.clone(),
                    args.controllersecrets.clone(),
                ))
            }))
            .add_optional_service(args.nodeserver.then(|| {
                NodeServer::new(CephFsNode::new(
                    args.nodeid.clone().unwrap_or_default(),
                    args.instanceid.clone(),
                    clusters.clone(),
                    ceph.clone(),
                    locks.clone(),
                    args.keysdir.clone(),
                ))
            })),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = router.serve_with_incoming_shutdown(incoming(listener), async {
        let _ = stop_rx.await;
    });
    let served = serve_until_signal(serve, stop_tx, rbd_controller).await;
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(socket = %path.display(), "cannot remove socket: {e}");
    }
    served.context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The node plugin's key-file directory, 0700, without files a killed process left.
fn prepare_keys_dir(dir: &std::path::Path) {
    match crate::node::keyfile::prepare_dir(dir) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            keysdir = %dir.display(),
            "removed {n} key file(s) a killed process left behind"
        ),
        Err(e) => tracing::error!(
            keysdir = %dir.display(),
            "cannot prepare the keys directory: {e}; mounts and maps that need a key file will fail until it is fixed"
        ),
    }
}

/// How long a stopping RBD controller spends removing the images of its last deletes from
/// the trash (well inside Kubernetes' default 30 s grace period).
const TRASH_DRAIN_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Serves until SIGTERM or SIGINT; then finishes the trash removal of the last deletes,
/// stops accepting calls and gives the calls in flight a short grace (every flow converges
/// when cut off).
async fn serve_until_signal(
    serve: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    stop: tokio::sync::oneshot::Sender<()>,
    rbd_controller: Option<Arc<RbdController>>,
) -> Result<(), tonic::transport::Error> {
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r,
        () = shutdown_signal() => {
            if let Some(controller) = &rbd_controller {
                controller.drain_trash(TRASH_DRAIN_AT_EXIT).await;
            }
            let _ = stop.send(());
            match tokio::time::timeout(CLOSE_GRACE, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!("clients still connected after {CLOSE_GRACE:?}; stopping anyway");
                    Ok(())
                }
            }
        }
    }
}

/// How long a stopping driver waits for its clients to finish their calls and hang up.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The metrics endpoint is an extra: a port that is taken (two plugins on one host with
/// the default) is logged and retried in the background, and CSI is served regardless.
async fn serve_metrics(args: &ServeArgs) {
    let (addr, port, path) = (
        args.metricsaddr.clone(),
        args.metricsport,
        args.metricspath.clone(),
    );
    let Err(e) = crate::metrics::serve(&addr, port, &path).await else {
        return;
    };
    tracing::error!(
        "cannot serve metrics on {addr}:{port}: {e}; serving CSI without metrics and retrying every {}s (choose a free --metricsport, or 0 to turn metrics off)",
        METRICS_RETRY.as_secs()
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(METRICS_RETRY).await;
            if crate::metrics::serve(&addr, port, &path).await.is_ok() {
                return;
            }
        }
    });
}

const METRICS_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
