//! The ILSVRC2012 devkit's class numbering, shared with the sample renderer.

/// Index 0 holds the wnid of ILSVRC2012_ID 1.
pub fn id_to_wnid() -> Vec<&'static str> {
    crate::sample::devkit_id_to_wnid()
}
