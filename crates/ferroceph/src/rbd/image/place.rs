//! Where RBD work happens: a pool (and RADOS namespace) on a connected cluster, with
//! its journals and trash log.

use super::*;

/// A pool (and RADOS namespace) on a connected cluster, with its journals.
pub struct Place<'a> {
    pub cluster: &'a Cluster,
    pub io: IoCtx,
    pub pool_id: i64,
    pub instance: String,
}

impl<'a> Place<'a> {
    pub fn by_name(
        cluster: &'a Cluster,
        pool: &str,
        namespace: &str,
        instance: &str,
    ) -> Result<Self> {
        let io = cluster.ioctx(pool, namespace).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::invalid(format!(
                "pool {pool:?} does not exist in the cluster; check the StorageClass pool parameter"
            )),
            _ => Error::ceph(format!("open pool {pool}"), e),
        })?;
        let pool_id = io.pool_id();
        Ok(Place {
            cluster,
            io,
            pool_id,
            instance: instance.to_string(),
        })
    }

    /// None when the pool no longer exists.
    pub fn by_id(
        cluster: &'a Cluster,
        pool_id: i64,
        namespace: &str,
        instance: &str,
    ) -> Result<Option<Self>> {
        match cluster.ioctx_by_id(pool_id, namespace) {
            Ok(io) => Ok(Some(Place {
                cluster,
                io,
                pool_id,
                instance: instance.to_string(),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::ceph(format!("open pool id {pool_id}"), e)),
        }
    }

    pub fn volumes(&self) -> Journal<'_> {
        Journal::new(&self.io, Kind::Volume, &self.instance)
    }

    pub fn snaps(&self) -> Journal<'_> {
        Journal::new(&self.io, Kind::Snapshot, &self.instance)
    }

    pub(crate) fn trash_log(&self) -> TrashLog<'_> {
        TrashLog::new(&self.io, &self.instance)
    }

    pub(super) fn open(&self, image: &str) -> Result<Option<Image>> {
        self.open_with(image, false)
    }

    pub(super) fn open_read_only(&self, image: &str) -> Result<Option<Image>> {
        self.open_with(image, true)
    }

    fn open_with(&self, image: &str, read_only: bool) -> Result<Option<Image>> {
        let opened = if read_only {
            Image::open_read_only(&self.io, image)
        } else {
            Image::open(&self.io, image)
        };
        match opened {
            Ok(img) => Ok(Some(img)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::ceph(format!("open image {image}"), e)),
        }
    }
}
