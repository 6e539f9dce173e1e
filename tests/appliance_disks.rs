//! Appliance disks end to end: virtio-blk driven by the probe guest on the local KVM.
#[path = "appliance_disks/testhost.rs"]
mod in_testhost;
#[path = "appliance_disks/local.rs"]
mod local;
mod support;
