pub mod probes;
pub mod testhost;
