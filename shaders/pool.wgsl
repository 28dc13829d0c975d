// pool kernels (being written).
