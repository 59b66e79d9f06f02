//! whispernpu: OpenAI Whisper speech-to-text as a GStreamer element.
//!
//! The engine (`audio`, `model`, `engine`, `decode`, `transcribe`) knows nothing of GStreamer; the
//! `element` module adapts it to GStreamer. Examples, benchmarks and tests call the engine the same
//! way the element does.

pub mod audio;
pub mod decode;
pub mod element;
pub mod engine;
pub mod error;
pub mod fault;
pub mod model;
pub mod transcribe;

/// Test helpers shared by the unit and integration tests (not a public API).
#[doc(hidden)]
pub mod test_support;

pub use error::{Error, ModelError};
pub use transcribe::{Segment, Task, TranscribeOptions};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    element::register(plugin)
}

gst::plugin_define!(
    whispernpu,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
pub mod vad;
