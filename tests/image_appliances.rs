//! Appliance images end to end: `herd image build` into a store, Linux
//! appliances booted from it inside the emulated test host.
#[path = "image_appliances/store.rs"]
mod store;
mod support;
#[path = "image_appliances/testhost.rs"]
mod testhost;
#[path = "image_appliances/upgrade.rs"]
mod upgrade;
