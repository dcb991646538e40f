//! The cephx identity a request carries in its `secrets`, shared by the RBD and CephFS
//! drivers. The key never appears in `Debug` output or in errors.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// A cephx user (without `client.`) and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ user: {:?}, key: *** }}", self.user)
    }
}

fn value<'a>(secrets: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    secrets.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn make(id_key: &str, user: &str, key: &str) -> Result<Credentials> {
    let user = user.strip_prefix("client.").unwrap_or(user);
    if user
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(Error::invalid(format!(
            "secret {id_key} must be a plain cephx user name"
        )));
    }
    Ok(Credentials {
        user: user.to_string(),
        key: key.to_string(),
    })
}

fn present(secrets: &HashMap<String, String>) -> String {
    let mut keys: Vec<&str> = secrets.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys.join(", ")
}

/// The first of the (user, key) secret pairs in `order` that `secrets` holds.
pub fn pick(secrets: &HashMap<String, String>, order: &[(&str, &str)]) -> Result<Credentials> {
    for (id, key) in order {
        if let (Some(u), Some(k)) = (value(secrets, id), value(secrets, key)) {
            return make(id, u, k);
        }
    }
    let mut wanted: Vec<String> = order.iter().map(|(i, k)| format!("{i} and {k}")).collect();
    let first = if wanted.is_empty() {
        String::from("credentials")
    } else {
        wanted.remove(0)
    };
    let others = if wanted.is_empty() {
        String::new()
    } else {
        format!(" (or {})", wanted.join(", or "))
    };
    Err(Error::invalid(format!(
        "secrets must hold {first}{others}; got keys: [{}]",
        present(secrets)
    )))
}

/// Admin first: adminID/adminKey, else userID/userKey (CephFS provisioning, and staging of
/// provisioned CephFS volumes).
pub fn admin_first(secrets: &HashMap<String, String>) -> Result<Credentials> {
    pick(secrets, &[("adminID", "adminKey"), ("userID", "userKey")])
}

/// User first: userID/userKey, else adminID/adminKey (static CephFS volumes).
pub fn user_first(secrets: &HashMap<String, String>) -> Result<Credentials> {
    pick(secrets, &[("userID", "userKey"), ("adminID", "adminKey")])
}

/// RBD provisioning: adminID/adminKey, userID/userKey, or the legacy in-tree single `key`
/// (user from the `adminId` parameter, in-tree default "admin").
pub fn rbd_provisioning(
    secrets: &HashMap<String, String>,
    legacy_user: Option<&str>,
) -> Result<Credentials> {
    if let Ok(c) = pick(secrets, &[("adminID", "adminKey"), ("userID", "userKey")]) {
        return Ok(c);
    }
    if let Some(k) = value(secrets, "key") {
        return make("adminId", legacy_user.unwrap_or("admin"), k);
    }
    Err(Error::invalid(format!(
        "secrets must hold userID and userKey (or adminID and adminKey, or the legacy key); got keys: [{}]",
        present(secrets)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pairs_in_order_and_the_key_never_shown() {
        let both = map(&[
            ("adminID", "client.admin"),
            ("adminKey", "A"),
            ("userID", "u"),
            ("userKey", "U"),
        ]);
        assert_eq!(admin_first(&both).unwrap().user, "admin");
        assert_eq!(user_first(&both).unwrap().user, "u");
        let c = rbd_provisioning(&map(&[("key", "K")]), Some("kube")).unwrap();
        assert_eq!((c.user.as_str(), c.key.as_str()), ("kube", "K"));
        assert!(!format!("{c:?}").contains('K'));
        let e = admin_first(&map(&[("userID", "u"), ("other", "x")])).unwrap_err();
        let m = e.message();
        assert!(
            m.contains("adminID and adminKey") && m.contains("[other, userID]"),
            "{m}"
        );
        assert!(!m.contains("U"));
        assert!(admin_first(&map(&[("adminID", "a b"), ("adminKey", "k")])).is_err());
    }
}
