//! Named, detached appliances on the local /dev/kvm with probe guests: the
//! runtime directory, `herd ps/inspect/logs/stop/kill/pause/resume/rm`, the
//! control API (including hostile clients) and graceful stop through the
//! emulated i8042 (the probe's `kbd` actions play a guest's keyboard
//! driver). Each test has its own HERD_RUNTIME, so they run in parallel.

#[path = "appliance_control/api.rs"]
mod api;
#[path = "appliance_control/harness.rs"]
mod harness;
#[path = "appliance_control/lifecycle.rs"]
mod lifecycle;
#[path = "appliance_control/remove.rs"]
mod remove;
mod support;
#[path = "appliance_control/terminal.rs"]
mod terminal;
