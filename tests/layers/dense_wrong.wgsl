// A planted bug (tests/custom_layers.rs): dense.wgsl with a wrong index in backward.
// A fully connected layer without bias, [N, IN] -> [N, 7]: y = x·weight.
//! output: 7
//! param weight: [in, out] = xavier

fn forward(n: u32, j: u32) -> real {
    var sum = real(0.0);
    for (var i = 0u; i < in_size(); i++) {
        sum += x(n, i) * weight(i * out_size() + j);
    }
    return sum;
}

// ∂L/∂x[n, i] = Σ_j dy[n, j]·weight[i, j]
fn backward(n: u32, i: u32) -> real {
    var sum = real(0.0);
    for (var j = 0u; j < out_size(); j++) {
        // BUG: W's index transposed (row j, column i).
        sum += dy(n, j) * weight(j * in_size() + i);
    }
    return sum;
}

// ∂L/∂weight[i, j] = Σ_n x[n, i]·dy[n, j]
fn backward_weight(k: u32) -> real {
    let i = k / out_size();
    let j = k % out_size();
    var sum = real(0.0);
    for (var n = 0u; n < batch(); n++) {
        sum += x(n, i) * dy(n, j);
    }
    return sum;
}
