//! Image definition target: a TOML image definition (user input, also
//! shipped as examples) through the parser and validation `herd image
//! build` uses. The parser lives in the `herd` binary crate, so it is
//! compiled in here from its source file.

#[allow(dead_code)]
#[path = "../../../src/image/definition.rs"]
mod definition;

use std::path::Path;

pub fn image_definition(data: &[u8]) {
    let _ = image_definition_outcome(data);
}

/// The image's NAME:VERSION reference when the definition is valid.
pub fn image_definition_outcome(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let def = definition::Definition::parse(Path::new("fuzz.toml"), text).ok()?;
    Some(def.reference())
}
