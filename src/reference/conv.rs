//! Convolution and pooling references (being written).
