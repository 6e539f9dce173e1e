pub mod herd_run;
pub mod images;
pub mod probes;
pub mod staging;
pub mod testhost;
