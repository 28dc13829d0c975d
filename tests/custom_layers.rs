//! Custom WGSL layers from the command line (`--layers …,wgsl:PATH,…`): gradient checks of
//! right and wrong layers (tests/layers/), training one to MNIST accuracy with its parameters
//! saved and loaded by name, and every way a layer file can break the contract.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

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

/// Tensor `name` of shape `shape` of a saved run, through the checkpoint reader.
fn saved_tensor(path: &Path, name: &str, shape: &[usize]) -> Vec<f64> {
    wgrad::checkpoint::load_optional(path, name, shape)
        .unwrap()
        .unwrap_or_else(|| panic!("{} has no tensor {name}", path.display()))
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

/// Full recomputes every perturbed loss from the first layer, but an input check must move the
/// custom layer's own input: its route starts there. `--params` picks the rows, and the
/// input's gradients are saved beside the parameters'.
#[test]
fn full_strategy_input_checks_and_saved_input_gradients() {
    let out = TempDir::new().unwrap();
    let grads = out.path().join("grads.safetensors");
    let layers = format!("affine13,wgsl:{},affine10", layer("prelu.wgsl"));
    let extra = [
        "--strategy",
        "full",
        "--params",
        "alpha2,x2",
        "--save-grads",
        path_str(&grads),
    ];
    let (code, report) = gradcheck(&layers, &extra);
    assert_eq!(code, Some(0), "{report}");
    let names: Vec<&str> = (report["tensors"].as_array().unwrap().iter())
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha2", "x2"]);
    let bytes = fs::read(&grads).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "analytic.x2",
        "numeric.x2",
        "analytic.alpha2",
        "numeric.alpha2",
    ] {
        assert!(file.tensor(name).is_ok(), "{name} missing");
    }
    assert_eq!(file.tensor("numeric.x2").unwrap().shape(), [3, 13]);
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
        // Training runs in f32 unless --precision f64 says otherwise.
        assert_eq!(
            file.tensor("alpha2").unwrap().dtype(),
            safetensors::Dtype::F32
        );
        // The slopes under their declared name.
        saved_tensor(path, "alpha2", &[20])
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

/// A custom layer's tensors are in the parameter arena like any other: every optimizer moves
/// them, from the declared start, and a resumed run continues them bit for bit.
#[test]
fn every_optimizer_trains_a_custom_layers_tensors() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    let layers = format!("affine8,wgsl:{},affine10", layer("scale_shift.wgsl"));
    for optimizer in [
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
    ] {
        let saved = out.path().join(format!("{optimizer}.safetensors"));
        let run = wgrad(&[
            "train",
            "--data",
            path_str(data.path()),
            "--layers",
            &layers,
            "--optimizer",
            optimizer,
            "--epochs",
            "1",
            "--batch-size",
            "20",
            "--save",
            path_str(&saved),
        ]);
        assert_eq!(run.code, Some(0), "{optimizer}: {}", run.stderr);
        // beta2 starts at the declared 0.1 everywhere.
        let shift = saved_tensor(&saved, "beta2", &[8]);
        assert!(
            shift.iter().all(|b| b.is_finite()),
            "{optimizer}: {shift:?}"
        );
        assert!(
            shift.iter().any(|&b| (b - 0.1).abs() > 1e-5),
            "{optimizer}: {shift:?}"
        );
    }

    // One epoch, then one more from the checkpoint, against two epochs at once.
    let [once, twice, resumed] = ["once", "twice", "resumed"].map(|n| out.path().join(n));
    let train = |epochs: &str, save: &PathBuf, resume: Option<&PathBuf>| {
        let mut args = vec!["train", "--data", path_str(data.path()), "--epochs", epochs];
        args.extend(["--batch-size", "20", "--save", path_str(save)]);
        match resume {
            Some(from) => args.extend(["--resume", path_str(from)]),
            None => args.extend(["--layers", &layers, "--optimizer", "adam"]),
        }
        let run = wgrad(&args);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    };
    train("1", &once, None);
    train("2", &twice, None);
    train("2", &resumed, Some(&once));
    let shapes: [(&str, &[usize]); 4] = [
        ("gamma2", &[8]),
        ("beta2", &[8]),
        ("W1", &[144, 8]),
        ("W2", &[8, 10]),
    ];
    for (name, shape) in shapes {
        assert_eq!(
            saved_tensor(&resumed, name, shape),
            saved_tensor(&twice, name, shape),
            "{name}"
        );
    }
}

/// The five kinds of bad layer file (a WGSL error, a missing function or declaration, a
/// binding of its own, a shape that does not fit), and what a newcomer's first tries showed
/// (f64 `exp`, which lavapipe gets wrong in forward and backward alike; `// param`; a name
/// another tensor has), each refused with exit 2, the file, the place where there is one, and
/// the fix; none panics.
#[test]
fn bad_layer_files_get_their_message_and_exit_2() {
    let dir = TempDir::new().unwrap();
    let right = "fn forward(n: u32, j: u32) -> real {\n    return x(n, j);\n}\n\
                 fn backward(n: u32, i: u32) -> real {\n    return dy(n, i);\n}\n";
    let cases: [(&str, String, &[&str]); 13] = [
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
            "fixed_f32",
            format!(
                "//! output: same\n{}",
                right.replace(") -> real {\n    return x(n, j);", ") -> f32 {\n    return f32(x(n, j));")
            ),
            &["`fn forward` does not have the contract's signature", "f32 or f64"],
        ),
        (
            "f64_exp",
            format!(
                "//! output: same\n{}",
                right.replace("return x(n, j);", "return exp(x(n, j));")
            ),
            &["f64_exp.wgsl:3:12:", "`exp` of a `real`", "no f64 exp", "use exp_r"],
        ),
        (
            "plain_comment_param",
            format!("//! output: same\n// param scale: [in] = 1\n{}", right.replace("x(n, j);", "scale(j) * x(n, j);")),
            &["plain_comment_param.wgsl:4:", "`scale`", "`//! param`, not `// param`"],
        ),
        (
            "taken_name",
            format!("//! output: same\n//! param W: [in] = 1\n{right}fn backward_W(k: u32) -> real {{\n    return real(0.0);\n}}\n"),
            &["layer 2", "its tensor W2 has the name of another tensor", "rename its `//! param`", "taken_name.wgsl"],
        ),
        (
            "block_comment",
            format!("//! output: same\n{}", right.replace("fn backward", "/* fn backward").replace("dy(n, i);\n}", "dy(n, i);\n} */")),
            &["block_comment.wgsl", "no `fn backward`"],
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
