//! Custom WGSL layers from the command line (`--layers …,wgsl:PATH,…`): gradient checks of
//! right and wrong layers (tests/layers/), training one to MNIST accuracy with its parameters
//! saved and loaded by name, and every way a layer file can break the contract.

mod common;

use std::fs;
use std::path::PathBuf;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;

fn layer(file: &str) -> String {
    format!("{}/tests/layers/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// `wgrad gradcheck --layers LAYERS --json EXTRA…`: (exit code, report).
fn gradcheck(layers: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["gradcheck", "--layers", layers, "--json"];
    args.extend_from_slice(extra);
    let run = wgrad(&args);
    let report = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}):\n{}", run.stderr));
    (run.code, report)
}

fn row<'r>(report: &'r Value, name: &str) -> &'r Value {
    (report["tensors"].as_array().unwrap().iter())
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {report}"))
}

#[test]
fn right_layers_pass_and_wrong_ones_fail_with_exit_1_at_the_broken_row() {
    let precisions: &[&str] = if common::f64_runs() {
        &["f64", "f32"]
    } else {
        &["f32"]
    };
    for precision in precisions {
        let extra = ["--precision", precision];
        for (file, rows) in [
            ("gelu.wgsl", &["x2"][..]),
            ("prelu.wgsl", &["alpha2", "x2"]),
            ("scale_shift.wgsl", &["gamma2", "beta2", "x2"]),
        ] {
            let (code, report) =
                gradcheck(&format!("affine13,wgsl:{},affine10", layer(file)), &extra);
            assert_eq!(code, Some(0), "{file} {precision}: {report}");
            for name in rows {
                assert_eq!(row(&report, name)["passed"], true, "{file} {precision}");
            }
        }
        // A parameter gradient and an input gradient, each wrong.
        for (file, broken, sound) in [
            ("prelu_wrong.wgsl", "alpha2", "x2"),
            ("gelu_wrong.wgsl", "x2", "W2"),
        ] {
            let (code, report) =
                gradcheck(&format!("affine13,wgsl:{},affine10", layer(file)), &extra);
            assert_eq!(code, Some(1), "{file} {precision}: {report}");
            assert_eq!(report["passed"], false);
            let bad = row(&report, broken);
            assert_eq!(bad["passed"], false, "{file} {precision}: {bad}");
            assert!(bad["max_rel_err"].as_f64().unwrap() > 1e-2, "{bad}");
            assert_eq!(row(&report, sound)["passed"], true, "{file} {precision}");
        }
    }
}

/// The acceptance: GELU between two affine layers trains to 0.90 on the bundled data;
/// `wgrad eval` gets the run's accuracy back from the checkpoint alone (which holds the layer's
/// text), and a PReLU's slopes are saved under their names and read back by `--init-from`.
#[test]
fn a_custom_layer_trains_saves_and_loads() {
    let out = TempDir::new().unwrap();
    let saved = out.path().join("gelu.safetensors");
    let gelu = format!("affine100,wgsl:{},affine10", layer("gelu.wgsl"));
    let args = [
        "train",
        "--layers",
        &gelu,
        "--epochs",
        "3",
        "--json",
        "--save",
        path_str(&saved),
    ];
    let run = wgrad(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.90, "GELU net test accuracy {accuracy}");

    // The checkpoint holds the layer: eval needs no file.
    let moved = out.path().join("elsewhere.safetensors");
    fs::rename(&saved, &moved).unwrap();
    let eval = wgrad(&["eval", path_str(&moved), "--json"]);
    assert_eq!(eval.code, Some(0), "{}", eval.stderr);
    let e: Value = serde_json::from_str(eval.stdout.trim()).unwrap();
    assert_eq!(e["accuracy"], report["test_accuracy"]);

    let first = out.path().join("prelu.safetensors");
    let second = out.path().join("again.safetensors");
    let prelu = format!("affine20,wgsl:{},affine10", layer("prelu.wgsl"));
    let train = |extra: &[&str], save: &PathBuf| {
        let mut args = vec![
            "train",
            "--layers",
            &prelu,
            "--epochs",
            "1",
            "--save",
            path_str(save),
        ];
        args.extend_from_slice(extra);
        let run = wgrad(&args);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    };
    train(&[], &first);
    let slopes = |path: &PathBuf| -> Vec<f64> {
        let bytes = fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = file
            .tensor("alpha2")
            .expect("the slopes under their declared name");
        assert_eq!(t.shape(), [20]);
        // Training runs in f32 unless --precision f64 says otherwise.
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        (t.data().chunks(4))
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect()
    };
    let trained = slopes(&first);
    // Training moved them off the declared 0.25.
    assert!(
        trained.iter().any(|&a| (a - 0.25).abs() > 1e-4),
        "{trained:?}"
    );
    // A step too small to move them: what --init-from loaded comes back out.
    train(
        &[
            "--init-from",
            path_str(&first),
            "--optimizer",
            "sgd",
            "--lr",
            "1e-300",
        ],
        &second,
    );
    assert_eq!(slopes(&second), trained);
}

/// The five kinds of bad layer file (a WGSL error, a missing function or declaration, a
/// binding of its own, a shape that does not fit), each refused with exit 2, the file, the
/// place where there is one, and the fix; none panics.
#[test]
fn bad_layer_files_get_their_message_and_exit_2() {
    let dir = TempDir::new().unwrap();
    let right = "fn forward(n: u32, j: u32) -> real {\n    return x(n, j);\n}\n\
                 fn backward(n: u32, i: u32) -> real {\n    return dy(n, i);\n}\n";
    let cases: [(&str, String, &[&str]); 8] = [
        (
            "syntax",
            format!("//! output: same\n{}", right.replace("x(n, j);", "x(n, j) +;")),
            &["syntax.wgsl:3:", "expected expression", "fix the WGSL there"],
        ),
        (
            "undefined",
            format!("//! output: same\n{}", right.replace("x(n, j);", "x(n, j) * scale;")),
            &["undefined.wgsl:3:", "scale", "fix the WGSL there"],
        ),
        (
            "no_backward",
            format!("//! output: same\n{}", &right[..right.find("fn backward").unwrap()]),
            &["no_backward.wgsl", "no `fn backward`", "fn backward(n: u32, i: u32) -> real"],
        ),
        (
            "no_param_gradient",
            format!("//! output: same\n//! param scale: [in] = 1\n{right}"),
            &["no `fn backward_scale`", "fn backward_scale(k: u32) -> real"],
        ),
        (
            "no_output",
            right.to_string(),
            &["no `//! output:` declaration", "//! output: same"],
        ),
        (
            "signature",
            format!(
                "//! output: same\n{}",
                right.replace("(n: u32, j: u32) -> real {\n    return x(n, j);", "(n: u32) -> real {\n    return x(n, 0u);")
            ),
            &["`fn forward` does not have the contract's signature", "fn forward(n: u32, j: u32) -> real"],
        ),
        (
            "binding",
            format!(
                "//! output: same\n@group(0) @binding(2) var<storage, read> w: array<real>;\n{right}"
            ),
            &["binding.wgsl:2:", "does not follow the contract", "remove it"],
        ),
        (
            "shape",
            format!("//! output: same\n//! input: 30\n{right}"),
            &["layer 2", "requires 30 input features", "gives 13"],
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.wgsl"));
        fs::write(&path, text).unwrap();
        let layers = format!("affine13,wgsl:{},affine10", path_str(&path));
        for command in ["gradcheck", "train"] {
            let run = wgrad_fails(&[command, "--layers", &layers], expected);
            assert!(!run.stderr.contains("panicked"), "{name}: {}", run.stderr);
            // Refused before the GPU opens: a bad file costs no device time.
            assert!(
                !run.stderr.contains("wgrad: adapter"),
                "{name}: {}",
                run.stderr
            );
        }
    }
    wgrad_fails(
        &[
            "gradcheck",
            "--layers",
            "affine13,wgsl:/no/such/layer.wgsl,affine10",
        ],
        &[
            "cannot read the layer file /no/such/layer.wgsl",
            "check the path",
        ],
    );
}
