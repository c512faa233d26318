//! The `zeroscale` commands that speak to a cluster or a running `zeroscale dev`.
pub mod cluster;
