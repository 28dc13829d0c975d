// Precision prelude for f64. Vulkan's GLSL.std.450 defines exp and log for 16- and 32-bit floats
// only (lavapipe returns garbage for f64), so both are written out here, accurate to about an
// ulp. Needs wgpu's SHADER_F64 feature.
alias real = f64;
// 64 KiB of reals in a uniform array (array<vec4<real>, UNIFORM_VEC4S>).
const UNIFORM_VEC4S: u32 = 2048u;

// exp(x) = 2^k · exp(r), r = x − k·ln2 with |r| ≤ ln2/2 split in two parts for exactness; exp(r)
// by its Taylor series to degree 13 (truncation error < 1e-17 on that interval).
fn exp_r(x: f64) -> f64 {
    if (x < -745.2lf) {
        return 0.0lf;
    }
    let xc = min(x, 709.9lf);
    let k = round(xc * 1.4426950408889634lf);
    let r = (xc - k * 6.93147180369123816490e-01lf) - k * 1.90821492927058770002e-10lf;
    var p = 1.6059043836821613e-10lf;          // 1/13!
    p = p * r + 2.08767569878681e-09lf;        // 1/12!
    p = p * r + 2.505210838544172e-08lf;       // 1/11!
    p = p * r + 2.755731922398589e-07lf;       // 1/10!
    p = p * r + 2.7557319223985893e-06lf;      // 1/9!
    p = p * r + 2.48015873015873e-05lf;        // 1/8!
    p = p * r + 1.984126984126984e-04lf;       // 1/7!
    p = p * r + 1.388888888888889e-03lf;       // 1/6!
    p = p * r + 8.333333333333333e-03lf;       // 1/5!
    p = p * r + 4.1666666666666664e-02lf;      // 1/4!
    p = p * r + 1.6666666666666666e-01lf;      // 1/3!
    p = p * r + 0.5lf;
    p = p * r + 1.0lf;
    p = p * r + 1.0lf;
    return ldexp(p, i32(k));
}

// log(x) for x in f32's normal range (softmax only takes logs of sums in [1, classes]): start
// from the f32 log (relative error ~1e-7) and take one Halley step on e^y = x, which cubes the
// error (~1e-21, far below f64's ε).
fn log_r(x: f64) -> f64 {
    let y = f64(log(f32(x)));
    let e = exp_r(y);
    return y + 2.0lf * (x - e) / (x + e);
}

// NaN and Inf survive the conversion to f32 (so does overflow past f32's range, which for a loss
// is divergence anyway), and f32's bits can be inspected where f64's cannot.
fn is_finite_r(x: f64) -> bool {
    return (bitcast<u32>(f32(x)) & 0x7f800000u) != 0x7f800000u;
}
