//! Marks tests that need an external component as ignored when it is missing.

include!("build/components.rs");

fn main() {
    detect_components(&["mosquitto"]);
}
