//! safetensors checkpoints (being written).
