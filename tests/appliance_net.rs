//! Appliance networking end to end: virtio-net driven by the probe guest on the local KVM.
#[path = "appliance_net/testhost.rs"]
mod in_testhost;
#[path = "appliance_net/local.rs"]
mod local;
mod support;
