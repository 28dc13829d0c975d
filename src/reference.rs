//! f64 CPU oracle (being written).
