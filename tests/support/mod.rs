pub mod images;
pub mod probes;
pub mod testhost;
