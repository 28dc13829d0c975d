// conv kernels (being written).
