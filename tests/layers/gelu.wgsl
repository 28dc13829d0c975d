// GELU, tanh form (PyTorch's nn.GELU(approximate="tanh")):
//   y = x/2 · (1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³)
//   dy/dx = (1 + tanh(u))/2 + x/2 · (1 − tanh²(u)) · √(2/π)·(1 + 3·0.044715·x²)
//! output: same

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const CUBIC: f32 = 0.044715;

fn inner(v: real) -> real {
    return real(SQRT_2_OVER_PI) * (v + real(CUBIC) * v * v * v);
}

fn forward(n: u32, j: u32) -> real {
    let v = x(n, j);
    return real(0.5) * v * (real(1.0) + tanh_r(inner(v)));
}

fn backward(n: u32, i: u32) -> real {
    let v = x(n, i);
    let t = tanh_r(inner(v));
    let du = real(SQRT_2_OVER_PI) * (real(1.0) + real(3.0 * CUBIC) * v * v);
    return dy(n, i) * (real(0.5) * (real(1.0) + t) + real(0.5) * v * (real(1.0) - t * t) * du);
}
