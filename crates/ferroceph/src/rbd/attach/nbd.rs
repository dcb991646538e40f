//! rbd-nbd: `rbd map --device-type nbd` starts an rbd-nbd daemon that serves the image
//! to the kernel's nbd driver. The daemon forks into its own session, so it is not a child
//! of the plugin and survives the plugin process restarting (ceph-csi's rbd-nbd volumes die
//! then, ceph/ceph-csi#2204); its pid is recorded. The key file is removed as soon as the map
//! returns: the daemon has authenticated by then (rbd map waits for the device).

use super::{
    options_for, rbd_map_args, rbd_unmap_args, AttachEnv, AttachRequest, Attached, Attacher,
    Health, Mounter,
};
use crate::error::{Error, Result};
use crate::node::exec;
use crate::node::keyfile::KeyFile;
use crate::node::record::{ImageLocation, Record};
use std::path::Path;
use std::time::Duration;

pub(crate) struct Nbd {
    pub env: AttachEnv,
}

fn map_args(
    loc: &ImageLocation,
    keyfile: &Path,
    options: Option<&str>,
    read_only: bool,
) -> Vec<String> {
    rbd_map_args("nbd", loc, keyfile, options, read_only)
}

fn unmap_args(device: &str, options: Option<&str>) -> Vec<String> {
    rbd_unmap_args("nbd", device, options)
}

/// `/dev/nbd3` → `nbd3`.
fn dev_name(device: &str) -> Option<&str> {
    device
        .strip_prefix("/dev/")
        .filter(|n| n.starts_with("nbd"))
}

/// The pid of the daemon serving `device` (the kernel keeps it in sysfs).
pub(crate) fn daemon_pid(device: &str) -> Option<i32> {
    let name = dev_name(device)?;
    std::fs::read_to_string(format!("/sys/block/{name}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tonic::async_trait]
impl Attacher for Nbd {
    async fn attach(&self, req: &AttachRequest<'_>) -> Result<Attached> {
        if !Path::new("/sys/module/nbd").exists() {
            let _ = exec::output("modprobe", &["nbd"], &[], self.env.exec_timeout).await;
            if !Path::new("/sys/module/nbd").exists() {
                return Err(Error::precondition(
                    "the kernel has no nbd module (modprobe nbd failed); use the mounter krbd or fuse",
                ));
            }
        }
        let options = options_for(req.map_options, Mounter::Nbd)?;
        let key = KeyFile::create(&self.env.keysdir, req.key).map_err(|e| {
            Error::internal(format!(
                "cannot write a key file in {}: {e}",
                self.env.keysdir.display()
            ))
        })?;
        // rbd-nbd is forked by `rbd map`: started through the launcher, it is born in the
        // attachments' cgroup
        let (program, args) = crate::node::outlive::command_line(
            crate::node::outlive::current(),
            &self.env.exe,
            "rbd",
            &map_args(req.loc, key.path(), options.as_deref(), req.read_only),
        );
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = exec::run(&program.to_string_lossy(), &a, &[], self.env.exec_timeout)
            .await
            .map_err(Error::from)?;
        drop(key);
        let device = out.stdout.trim().to_string();
        if dev_name(&device).is_none() {
            return Err(Error::internal(format!(
                "rbd map printed {device:?} instead of an nbd device"
            )));
        }
        let nbd_pid = daemon_pid(&device);
        Ok(Attached {
            device,
            fuse: None,
            nbd_pid,
        })
    }

    async fn detach(&self, rec: &Record) -> Result<()> {
        let Some(dev) = rec.device.clone() else {
            return Ok(());
        };
        if daemon_pid(&dev).is_none() {
            return Ok(()); // not connected any more
        }
        let opts = options_for(rec.unmap_options.as_deref(), Mounter::Nbd)?;
        let args = unmap_args(&dev, opts.as_deref());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = exec::output("rbd", &a, &[], self.env.exec_timeout)
            .await
            .map_err(Error::from)?;
        if out.success() || out.stderr.contains("not mapped") {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "rbd unmap {dev} failed: {}",
                out.stderr
            )))
        }
    }

    async fn health(&self, rec: &Record) -> Health {
        let Some(dev) = &rec.device else {
            return Health::Broken("no device was recorded".into());
        };
        // The kernel keeps `pid` while a server is connected, and a daemon that dies closes
        // its socket, which disconnects the device. The pid itself is the host's: in a
        // plugin container without hostPID it names no process here, or another one, so it
        // says nothing about the daemon's health (judging by it unmapped healthy volumes).
        match daemon_pid(dev) {
            Some(_) => Health::Healthy,
            None => Health::Broken(format!("{dev} is no longer connected to rbd-nbd")),
        }
    }

    async fn refresh_size(&self, rec: &Record, want: u64) -> Result<u64> {
        // rbd-nbd watches the image header and resizes the nbd device itself.
        let dev = rec
            .device
            .clone()
            .ok_or_else(|| Error::precondition("no device was recorded"))?;
        super::wait_for_size(&dev, want, Duration::from_secs(30)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let loc = ImageLocation {
            cluster_id: "c".into(),
            monitors: vec!["127.0.0.1:6789".into()],
            pool: "rbd".into(),
            namespace: String::new(),
            image: "csi-vol-1".into(),
            user: "csi-rbd".into(),
        };
        assert_eq!(
            map_args(&loc, Path::new("/k/f"), Some("try-netlink,reattach-timeout=300"), false).join(" "),
            "map rbd/csi-vol-1 --device-type nbd --id csi-rbd -m 127.0.0.1:6789 --keyfile /k/f --options try-netlink,reattach-timeout=300"
        );
        assert_eq!(
            map_args(&loc, Path::new("/k/f"), None, true).join(" "),
            "map rbd/csi-vol-1 --device-type nbd --id csi-rbd -m 127.0.0.1:6789 --keyfile /k/f --read-only"
        );
        assert_eq!(
            unmap_args("/dev/nbd2", None).join(" "),
            "unmap --device-type nbd /dev/nbd2"
        );
        assert_eq!(dev_name("/dev/nbd2"), Some("nbd2"));
        assert_eq!(dev_name("/dev/rbd2"), None);
        assert_eq!(daemon_pid("/dev/nbd999"), None);
    }
}
