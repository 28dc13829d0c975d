// One sample's cross-entropy loss from d = logsumexp(z) − z_t = −log softmax(z)_t, the form every
// loss kernel computes without overflow:
//
//   PyTorch's (LOSS_EPS = 0):   d
//   the book's (LOSS_EPS = 1e-7): −log(softmax(z)_t + 1e-7)   (cross_entropy_error)
//
// LOSS_EPS is set by the host above every shader (kernel::source_for, from the net's
// conventions). The gradient kernels keep (softmax − onehot)/N for both: the book's backward
// pass drops the 1e-7 too.
fn sample_loss(d: real) -> real {
    if (LOSS_EPS == real(0.0)) {
        return d;
    }
    return -log_r(exp_r(-d) + LOSS_EPS);
}
