//! The `whispernpu` GStreamer element. (In progress.)

pub fn register(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Ok(())
}
