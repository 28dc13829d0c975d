// Written by a newcomer from README's "Your own layer in WGSL" alone (issue #11's acceptance).
// Parametric Swish: y = x * sigmoid(beta * x), one beta per feature.
//   s = sigmoid(beta*x);  dy/dx = s + beta*x*s*(1-s);  dy/dbeta = x*x*s*(1-s)
//! output: same
//! param beta: [in] = 1

fn sig(z: real) -> real {
    // numerically stable: never exponentiate a large positive number
    if (z >= real(0.0)) {
        return real(1.0) / (real(1.0) + exp_r(-z));
    }
    let e = exp_r(z);
    return e / (real(1.0) + e);
}

fn forward(n: u32, j: u32) -> real {
    let v = x(n, j);
    return v * sig(beta(j) * v);
}

fn backward(n: u32, i: u32) -> real {
    let v = x(n, i);
    let b = beta(i);
    let s = sig(b * v);
    return dy(n, i) * (s + b * v * s * (real(1.0) - s));
}

fn backward_beta(k: u32) -> real {
    let b = beta(k);
    var sum = real(0.0);
    for (var n = 0u; n < batch(); n++) {
        let v = x(n, k);
        let s = sig(b * v);
        sum += dy(n, k) * v * v * s * (real(1.0) - s);
    }
    return sum;
}
