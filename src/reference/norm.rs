//! BatchNorm and Dropout references (being written).
