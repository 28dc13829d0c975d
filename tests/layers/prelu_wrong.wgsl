// A planted bug (tests/custom_layers.rs): prelu.wgsl with a wrong parameter gradient.
// PReLU with one slope per feature (PyTorch's nn.PReLU(num_parameters=features)):
//   y = x for x > 0, alpha·x otherwise
//! output: same
//! param alpha: [in] = 0.25

fn forward(n: u32, j: u32) -> real {
    let v = x(n, j);
    return select(alpha(j) * v, v, v > real(0.0));
}

fn backward(n: u32, i: u32) -> real {
    return select(alpha(i), real(1.0), x(n, i) > real(0.0)) * dy(n, i);
}

// ∂L/∂alpha[k] = Σ_n dy[n, k]·x[n, k] over the samples where x ≤ 0
fn backward_alpha(k: u32) -> real {
    var sum = real(0.0);
    for (var n = 0u; n < batch(); n++) {
        let v = x(n, k);
        // BUG: the sign of the slope's gradient.
        sum -= select(v * dy(n, k), real(0.0), v > real(0.0));
    }
    return sum;
}
