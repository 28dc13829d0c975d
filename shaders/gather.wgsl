// Batch gather: the data set lives on the GPU for the whole run (pixels as packed bytes, so
// the full 60k MNIST fits one binding even in f64), and each step picks its rows through an
// index buffer (the epoch's permutation) at the batch cursor kept in `state`. No upload per step.
//
//   x[r, d] = pixel(index[cursor·N + r], d) / 255        x: [N, D], labels_out: [N]

struct Params {
    n: u32,            // rows per batch
    features: u32,     // D
    samples: u32,      // valid entries of `index`
    cursor_slot: u32,  // which state word holds the batch number
    row_width: u32,    // invocations per grid row
    _pad0: u32, _pad1: u32, _pad2: u32,
}

const INVALID: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;   // 4 bytes a word, little end first
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> index: array<u32>;
@group(0) @binding(4) var<storage, read> state: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<real>;
@group(0) @binding(6) var<storage, read_write> labels_out: array<u32>;

// Built when D is a multiple of 4 (rows start on a word): each invocation unpacks one word,
// four pixels of a row, so a quarter of the invocations and reads.
override QUADS: bool = false;

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let per = select(1u, 4u, QUADS);
    let i = (gid.y * P.row_width + gid.x) * per;
    if (i >= P.n * P.features) {
        return;
    }
    let r = i / P.features;
    let d = i % P.features;
    let pos = state[P.cursor_slot] * P.n + r;
    if (pos >= P.samples) {
        // Padding row of a last, partial batch: zero input, ignored by the loss.
        for (var e = 0u; e < per; e++) {
            x[i + e] = real(0.0);
        }
        if (d == 0u) {
            labels_out[r] = INVALID;
        }
        return;
    }
    let sample = index[pos];
    let byte_at = sample * P.features + d;
    if (QUADS) {
        let word = pixels[byte_at / 4u];
        for (var e = 0u; e < 4u; e++) {
            x[i + e] = real((word >> (8u * e)) & 0xffu) / real(255.0);
        }
    } else {
        let byte = (pixels[byte_at / 4u] >> (8u * (byte_at % 4u))) & 0xffu;
        x[i] = real(byte) / real(255.0);
    }
    if (d == 0u) {
        labels_out[r] = labels[sample];
    }
}
