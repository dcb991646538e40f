//! Monitor and manager commands (the JSON command interface of `ceph`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use crate::cluster::{connect_handle, Cluster, ConnectConfig};
use crate::error::{Error, Result, Service};
use crate::sys;

/// How many manager commands of one [`Cluster`] may wait for a reply after their caller gave
/// up on them; beyond that new ones fail at once instead of piling up threads.
const MAX_ABANDONED: usize = 8;

/// What a successful command returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The output buffer (JSON when `"format": "json"` was requested).
    pub out: Vec<u8>,
    /// The status string (often empty on success).
    pub status: String,
}

impl CommandOutput {
    /// The output as text (lossy UTF-8).
    pub fn out_str(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

impl Cluster {
    /// Sends `json` (e.g. `{"prefix":"status","format":"json"}`) to the
    /// monitors. A non-zero return is an error carrying the status string.
    pub fn mon_command(&self, json: &str, input: &[u8]) -> Result<CommandOutput> {
        run(self, false, json, input)
    }

    /// Sends `json` (e.g. `{"prefix":"fs subvolume ls","vol_name":"cephfs"}`)
    /// to the active manager. A non-zero return is an error carrying the
    /// status string.
    ///
    /// Bounded by the connection's timeout like every other call, but enforced from outside
    /// librados: its own manager-command timeout leaves the reply to be written into freed
    /// memory when it arrives late (a heap corruption that kills the process), so commands go
    /// through a second handle without that timeout, on a thread that is left to finish on
    /// its own when the caller stops waiting. The command may then still take effect.
    pub fn mgr_command(&self, json: &str, input: &[u8]) -> Result<CommandOutput> {
        self.mgr.run(json, input)
    }
}

fn run(c: &Cluster, mgr: bool, json: &str, input: &[u8]) -> Result<CommandOutput> {
    let (r, out, status) = c.handle.command(mgr, json, input);
    finish(mgr, json, r, out, status)
}

fn finish(mgr: bool, json: &str, r: i32, out: Vec<u8>, status: String) -> Result<CommandOutput> {
    if r != 0 {
        let (op, service) = if mgr {
            ("mgr command", Service::Manager)
        } else {
            ("mon command", Service::Monitor)
        };
        return Err(Error::new(op, r, describe(json))
            .with_detail(status)
            .from_service(service));
    }
    Ok(CommandOutput { out, status })
}

/// The manager-command side of a [`Cluster`]: its own librados handle (connected on first
/// use, with no monitor-op timeout) and the count of commands still waiting for a reply.
pub(crate) struct MgrLane {
    cfg: ConnectConfig,
    handle: Mutex<Option<Arc<sys::Rados>>>,
    abandoned: Arc<AtomicUsize>,
}

impl MgrLane {
    pub(crate) fn new(cfg: ConnectConfig) -> MgrLane {
        MgrLane {
            cfg,
            handle: Mutex::new(None),
            abandoned: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn handle(&self) -> Result<Arc<sys::Rados>> {
        let mut h = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = h.as_ref() {
            return Ok(Arc::clone(h));
        }
        let fresh = Arc::new(connect_handle(&self.cfg, false)?);
        *h = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    fn run(&self, json: &str, input: &[u8]) -> Result<CommandOutput> {
        let waiting = self.abandoned.load(Ordering::SeqCst);
        if waiting >= MAX_ABANDONED {
            return Err(Error::new("mgr command", libc::ETIMEDOUT, describe(json))
                .with_detail(format!(
                    "{waiting} earlier mgr commands are still waiting for the manager's reply"
                ))
                .from_service(Service::Manager));
        }
        let handle = self.handle()?;
        let (tx, rx) = mpsc::sync_channel(1);
        let (cmd, inbuf) = (json.to_string(), input.to_vec());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (abandoned, done2) = (Arc::clone(&self.abandoned), Arc::clone(&done));
        let spawned = std::thread::Builder::new()
            .name("rados-mgr-cmd".into())
            .spawn(move || {
                let reply = handle.command(true, &cmd, &inbuf);
                // Whoever comes second of (reply, caller giving up) settles the count.
                if done2.swap(true, Ordering::SeqCst) {
                    abandoned.fetch_sub(1, Ordering::SeqCst);
                }
                let _ = tx.send(reply);
            });
        if let Err(e) = spawned {
            return Err(Error::new("mgr command", libc::EAGAIN, describe(json))
                .with_detail(format!("cannot start a thread: {e}"))
                .from_service(Service::Client));
        }
        match rx.recv_timeout(self.cfg.timeout) {
            Ok((r, out, status)) => finish(true, json, r, out, status),
            Err(_) => {
                if !done.swap(true, Ordering::SeqCst) {
                    self.abandoned.fetch_add(1, Ordering::SeqCst);
                }
                Err(Error::new("mgr command", libc::ETIMEDOUT, describe(json))
                    .with_detail(format!(
                        "no reply from the manager within {:?} (the command may still \
                             take effect)",
                        self.cfg.timeout
                    ))
                    .from_service(Service::Manager))
            }
        }
    }
}

/// Names a command by its `prefix` only: the rest of the JSON could carry
/// secrets (e.g. keys passed to `auth` commands), so it is never echoed.
fn describe(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) => match v.get("prefix").and_then(|p| p.as_str()) {
            Some(p) => format!("{p:?}"),
            None => "(command without prefix)".to_string(),
        },
        Err(_) => "(invalid JSON)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_uses_prefix_only() {
        assert_eq!(
            describe(r#"{"prefix":"auth get-or-create","entity":"client.x","key":"SECRET"}"#),
            "\"auth get-or-create\""
        );
        assert_eq!(describe("{"), "(invalid JSON)");
        assert_eq!(describe(r#"{"a":1}"#), "(command without prefix)");
    }
}
