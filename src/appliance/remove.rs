//! `herd rm`: forgets stopped appliances, as `docker rm` does containers:
//! their runtime directories (logs, config, boot report) go. A running one
//! is refused unless `-f`, which kills it first as `herd kill` does.

use super::control::{self, ControlError};
use super::runtime_dir;

/// Removes NAME's runtime directory; with `force`, kills it first if it
/// runs.
pub fn remove(name: &str, force: bool) -> Result<(), ControlError> {
    if force {
        match control::kill(name) {
            Ok(how) => log::info!("{name} stopped ({how})"),
            Err(ControlError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(runtime_dir::remove(name)?)
}
