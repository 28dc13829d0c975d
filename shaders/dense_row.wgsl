// One dense row of an MLP's perturbed evaluation, shared by perturbed_mlp.wgsl and
// perturbed_norm_mlp.wgsl. The including shader provides `theta` (the parameters), `scratch`
// (each invocation's rows) and `layer(k, field)`, whose fields 0–3 are block k's in, out,
// W offset and b offset in both layer tables.

// row_out [out_k] = row_in [in_k] · W_k + b_k, four outputs a pass over row_in: lavapipe pays
// for every read inside a loop, and this reads each input once per four outputs.
fn dense_row(k: u32, row_in: u32, row_out: u32) {
    let ins = layer(k, 0u);
    let outs = layer(k, 1u);
    let w = layer(k, 2u);
    let b = layer(k, 3u);
    for (var c = 0u; c < outs; c += 4u) {
        // Columns past the last repeat it; their sums are not stored.
        let c1 = min(c + 1u, outs - 1u);
        let c2 = min(c + 2u, outs - 1u);
        let c3 = min(c + 3u, outs - 1u);
        var s = vec4<real>(theta[b + c], theta[b + c1], theta[b + c2], theta[b + c3]);
        for (var r = 0u; r < ins; r++) {
            let row = w + r * outs;
            let wr = vec4<real>(theta[row + c], theta[row + c1], theta[row + c2], theta[row + c3]);
            s += scratch[row_in + r] * wr;
        }
        scratch[row_out + c] = s.x;
        scratch[row_out + c1] = s.y;
        scratch[row_out + c2] = s.z;
        scratch[row_out + c3] = s.w;
    }
}
