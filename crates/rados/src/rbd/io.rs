//! Block I/O on an open image.

use super::image::Image;
use crate::error::{Error, Result};

impl Image {
    /// Reads into `buf` from `offset`; returns the number of bytes read
    /// (short at the end of the image).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.raw.read(offset, buf).map_err(|e| {
            Error::new(
                "rbd read",
                e,
                format!("{} bytes at {offset} of {}", buf.len(), self.ctx()),
            )
        })
    }

    /// Writes `buf` at `offset`; returns the number of bytes written.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<usize> {
        self.raw.write(offset, buf).map_err(|e| {
            Error::new(
                "rbd write",
                e,
                format!("{} bytes at {offset} of {}", buf.len(), self.ctx()),
            )
        })
    }

    /// Flushes cached writes.
    pub fn flush(&self) -> Result<()> {
        self.raw
            .flush()
            .map_err(|e| Error::new("rbd flush", e, self.ctx()))
    }

    /// Discards (deallocates) `len` bytes at `offset`; they read as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.raw.discard(offset, len).map_err(|e| {
            Error::new(
                "rbd discard",
                e,
                format!("{len} bytes at {offset} of {}", self.ctx()),
            )
        })
    }

    /// Makes `len` bytes at `offset` read as zeros: whole objects are discarded
    /// (deallocated), partial ones zeroed. Unlike [`Image::discard`], which may
    /// skip ranges smaller than `rbd_discard_granularity_bytes`, nothing is left
    /// behind, so this is what hole punching needs.
    pub fn write_zeroes(&self, offset: u64, len: usize) -> Result<usize> {
        self.raw.write_zeroes(offset, len).map_err(|e| {
            Error::new(
                "rbd write zeroes",
                e,
                format!("{len} bytes at {offset} of {}", self.ctx()),
            )
        })
    }
}
