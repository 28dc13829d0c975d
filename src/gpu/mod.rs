//! GPU plumbing (being written).
