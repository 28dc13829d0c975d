//! `wgrad::check_layer` used the way a crate that ships WGSL kernels would use it in its own
//! `cargo test`: only the public API, the layer's source compiled in, and a verdict to assert.

use wgrad::gpu::{GpuContext, Precision};
use wgrad::{check_layer, LayerCheckOptions, WgslLayer};

fn layer(file: &str) -> WgslLayer {
    let path = format!("{}/tests/layers/{file}", env!("CARGO_MANIFEST_DIR"));
    WgslLayer::from_file(path).expect("the example keeps the contract")
}

fn context() -> GpuContext {
    GpuContext::new(&Default::default()).expect("an adapter (lavapipe in CI)")
}

fn precisions(ctx: &GpuContext) -> Vec<Precision> {
    let mut all = vec![Precision::F32];
    if ctx.supports(Precision::F64) {
        all.push(Precision::F64);
    }
    all
}

#[test]
fn correct_layers_pass_in_both_precisions() {
    let ctx = context();
    // Shapes differ from each other and from the head's 5 classes, so a mixed-up size shows.
    let cases: [(&str, &[usize], &[&str]); 5] = [
        ("gelu.wgsl", &[7], &["x1"]),
        ("swish.wgsl", &[5], &["beta1", "x1"]),
        ("prelu.wgsl", &[2, 3, 3], &["alpha1", "x1"]),
        ("scale_shift.wgsl", &[11], &["gamma1", "beta1", "x1"]),
        ("dense.wgsl", &[9], &["weight1", "x1"]),
    ];
    for (file, shape, rows) in cases {
        for precision in precisions(&ctx) {
            let options = LayerCheckOptions {
                precision,
                ..Default::default()
            };
            let report = check_layer(&ctx, &layer(file), shape, &options).unwrap();
            let names: Vec<&str> = report.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, rows, "{file}");
            assert!(report.passed, "{file} {precision}: {:#?}", report.tensors);
        }
    }
}

#[test]
fn a_wrong_backward_fails_at_the_tensor_and_element_it_breaks() {
    let ctx = context();
    // (file, the row that must fail and its rank, the rows that must pass)
    let cases: [(&str, &str, usize, &[&str]); 3] = [
        // A missing factor 1/2 in dx: x1 is [N, IN].
        ("gelu_wrong.wgsl", "x1", 2, &[]),
        // The sign of dalpha: alpha fails, dx is right.
        ("prelu_wrong.wgsl", "alpha1", 1, &["x1"]),
        // W's index transposed in dx: the weight's own gradient is right.
        ("dense_wrong.wgsl", "x1", 2, &["weight1"]),
    ];
    for (file, broken, rank, sound) in cases {
        for precision in precisions(&ctx) {
            let options = LayerCheckOptions {
                precision,
                ..Default::default()
            };
            let report = check_layer(&ctx, &layer(file), &[6], &options).unwrap();
            assert!(!report.passed, "{file} {precision} passed");
            let row = |name: &str| report.tensors.iter().find(|t| t.name == name).unwrap();
            let bad = row(broken);
            assert!(!bad.passed, "{file} {precision}: {broken} passed");
            // The element where the error is largest, by its index in the row's shape.
            assert_eq!(bad.max_rel_err_at.len(), rank, "{file}: {bad:?}");
            assert!(bad.max_rel_err > 1e-2, "{file} {precision}: {bad:?}");
            for name in sound {
                assert!(row(name).passed, "{file} {precision}: {name} failed");
            }
        }
    }
}

#[test]
fn a_layer_that_breaks_the_contract_is_refused_with_the_place_and_fix() {
    let err = WgslLayer::from_wgsl(
        "broken.wgsl",
        "//! output: same\nfn forward(n: u32, j: u32) -> real {\n    return x(n, j) +;\n}\n\
         fn backward(n: u32, i: u32) -> real { return dy(n, i); }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("broken.wgsl:3:"), "{err}");
    assert!(err.contains("fix the WGSL there"), "{err}");
}
