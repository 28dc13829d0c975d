// Precision prelude for f32: every kernel is written once over `real` and built with this or
// precision_f64.wgsl in front of it.
alias real = f32;
// 64 KiB of reals in a uniform array (array<vec4<real>, UNIFORM_VEC4S>).
const UNIFORM_VEC4S: u32 = 4096u;

fn exp_r(x: f32) -> f32 { return exp(x); }

fn log_r(x: f32) -> f32 { return log(x); }

// Float compares cannot be trusted to see NaN or Inf (drivers may compile with fast-math), so
// look at the exponent bits.
fn is_finite_r(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}
