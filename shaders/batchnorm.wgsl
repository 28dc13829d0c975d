// batchnorm kernels (being written).
