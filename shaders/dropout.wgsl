// dropout kernels (being written).
