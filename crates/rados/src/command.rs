//! Monitor and manager commands (the JSON command interface of `ceph`).

use crate::cluster::Cluster;
use crate::error::{Error, Result};

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
    pub fn mgr_command(&self, json: &str, input: &[u8]) -> Result<CommandOutput> {
        run(self, true, json, input)
    }
}

fn run(c: &Cluster, mgr: bool, json: &str, input: &[u8]) -> Result<CommandOutput> {
    let (r, out, status) = c.handle.command(mgr, json, input);
    if r != 0 {
        let op = if mgr { "mgr command" } else { "mon command" };
        return Err(Error::new(op, r, describe(json)).with_detail(status));
    }
    Ok(CommandOutput { out, status })
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
