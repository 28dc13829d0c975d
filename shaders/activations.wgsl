// The nonlinearities, written once: activation.wgsl's layers and perturbed_mlp.wgsl's incremental
// losses both include this file. The host names a kind by its ACT_ code
// (src/nn/layers/activation.rs, whose test checks that the codes agree).

const ACT_RELU: u32 = 0u;
const ACT_SIGMOID: u32 = 1u;
const ACT_TANH: u32 = 2u;

// y = f(x)
fn activate(kind: u32, x: real) -> real {
    switch kind {
        case ACT_SIGMOID: {
            return real(1.0) / (real(1.0) + exp_r(-x));
        }
        case ACT_TANH: {
            // Through exp_r, as Vulkan has no f64 tanh: 1 − 2/(e^{2x} + 1), which saturates to
            // ±1 without overflow (e^{2x} = ∞ gives 1, 0 gives −1).
            return real(1.0) - real(2.0) / (exp_r(real(2.0) * x) + real(1.0));
        }
        default: {
            return max(x, real(0.0));
        }
    }
}

// dy·f′, with f′ from what the forward saved for it: the input x for ReLU (zero at x = 0, as the
// book's mask), the output y for the others (src/nn/layers/activation.rs binds the right one).
fn backpropagate(kind: u32, dy: real, saved: real) -> real {
    switch kind {
        case ACT_SIGMOID: {
            return dy * saved * (real(1.0) - saved);
        }
        case ACT_TANH: {
            return dy * (real(1.0) - saved * saved);
        }
        default: {
            return select(real(0.0), dy, saved > real(0.0));
        }
    }
}

// Whether f has a kink between a and b (their sides of it differ): a central difference across
// it does not estimate the derivative.
fn crosses_kink(kind: u32, a: real, b: real) -> bool {
    return kind == ACT_RELU && ((a > real(0.0)) != (b > real(0.0)));
}
