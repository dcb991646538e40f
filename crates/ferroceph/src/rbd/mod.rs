//! The RBD driver: controller (provisioning through librbd) and node (attach and mount).

pub mod attach;
pub mod controller;
pub mod image;
pub mod node;
pub mod params;
