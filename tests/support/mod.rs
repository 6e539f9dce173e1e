pub mod probes;
pub mod testhost;
pub mod images;
