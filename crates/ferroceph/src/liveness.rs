//! `--type=liveness`: ceph-csi's liveness sidecar. Probes the driver's CSI endpoint every
//! `--polltime` (each probe bounded by `--timeout`) and exports the result as the
//! `csi_liveness` gauge on the metrics endpoint (the only process that exports it).

use crate::cli::ServeArgs;
use csi::v1 as pb;

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.metricsport == 0 {
        anyhow::bail!("--type=liveness needs --metricsport to export csi_liveness");
    }
    let gauge = crate::metrics::get().export_liveness();
    crate::metrics::serve(&args.metricsaddr, args.metricsport, &args.metricspath).await?;
    let mut tick = tokio::time::interval(args.polltime);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::server::shutdown_signal() => return Ok(()),
        }
        let ok = probe(&args.endpoint, args.timeout).await;
        match &ok {
            Ok(()) => tracing::debug!("probe ok"),
            Err(e) => tracing::warn!("probe of {} failed: {e}", args.endpoint),
        }
        gauge.set(i64::from(ok.is_ok()));
    }
}

pub(crate) async fn probe(endpoint: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let work = async {
        let channel = crate::client::connect(endpoint, timeout).await?;
        let resp = pb::identity_client::IdentityClient::new(channel)
            .probe(pb::ProbeRequest {})
            .await?
            .into_inner();
        match resp.ready.map(|r| r.value) {
            Some(false) => anyhow::bail!("driver reports not ready"),
            _ => Ok(()),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:.1}s", timeout.as_secs_f64()))?
}
