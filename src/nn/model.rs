//! GPU model (being written).
