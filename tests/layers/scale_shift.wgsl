// A per-feature scale and shift: y = gamma·x + beta.
//! output: same
//! param gamma: [in] = normal(0.5)
//! param beta: [in] = 0.1

fn forward(n: u32, j: u32) -> real {
    return gamma(j) * x(n, j) + beta(j);
}

fn backward(n: u32, i: u32) -> real {
    return gamma(i) * dy(n, i);
}

fn backward_gamma(k: u32) -> real {
    var sum = real(0.0);
    for (var n = 0u; n < batch(); n++) {
        sum += dy(n, k) * x(n, k);
    }
    return sum;
}

fn backward_beta(k: u32) -> real {
    var sum = real(0.0);
    for (var n = 0u; n < batch(); n++) {
        sum += dy(n, k);
    }
    return sum;
}
