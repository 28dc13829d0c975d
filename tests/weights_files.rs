//! `wgrad eval` and `wgrad predict` on plain weights files, as numpy and PyTorch write them: the
//! book's SimpleConvNet (W1, b1, W2, b2, W3, b3) saved as safetensors and as numpy's `.npz`
//! (`savez` and `savez_compressed`), in f64 and f32, read with `--model simple-conv`. Eval's
//! accuracy must be predict's classes scored against the labels, and predict's classes and
//! probabilities those of the f64 CPU reference net on the same weights.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::checkpoint::TensorData;
use wgrad::data::Dataset;
use wgrad::nn::NetSpec;
use wgrad::reference::net::{DropoutMasks, RefNet};

/// Test images in the data folder the tests write: eval, predict and the (slow) CPU reference of
/// a convnet all classify these.
const CHECKED: usize = 300;

fn simple_conv() -> NetSpec {
    let words = wgrad::nn::layers::named_model("simple-conv", 10).unwrap();
    NetSpec::sequential(
        [1, 28, 28],
        wgrad::nn::layers::parse_layers(&words).unwrap(),
    )
    .unwrap()
}

fn test_set() -> &'static Dataset {
    static SET: OnceLock<Dataset> = OnceLock::new();
    SET.get_or_init(|| wgrad::data::bundled().unwrap().test)
}

/// SimpleConvNet trained a few Adam steps on the bundled set (well above chance, so that weights
/// read in a wrong layout would show), once per test binary.
fn trained() -> &'static [f64] {
    static PARAMS: OnceLock<Vec<f64>> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let ctx = common::ctx();
        let mnist = wgrad::data::bundled().unwrap();
        let config = wgrad::train::TrainConfig {
            spec: simple_conv(),
            optimizer: wgrad::optim::Optimizer::from_name("adam", None).unwrap(),
            epochs: 1,
            max_steps: Some(15),
            ..Default::default()
        };
        wgrad::train::train(ctx, &mnist, &config, None)
            .unwrap()
            .run
            .params
    })
}

/// The book's names and shapes, in its order.
fn tensors(params: &[f64], f64_data: bool) -> Vec<(String, Vec<usize>, TensorData)> {
    let layout = simple_conv().layout();
    let names: Vec<(&str, Vec<usize>)> = (layout.tensors.iter())
        .map(|t| (t.name.as_str(), t.shape.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("W1", vec![30, 1, 5, 5]),
            ("b1", vec![30]),
            ("W2", vec![4320, 100]),
            ("b2", vec![100]),
            ("W3", vec![100, 10]),
            ("b3", vec![10]),
        ],
        "SimpleConvNet's tensors are the book's"
    );
    (layout.tensors.iter())
        .map(|t| {
            let values = &params[t.offset..t.offset + t.numel];
            let data = if f64_data {
                TensorData::F64(values.to_vec())
            } else {
                TensorData::F32(values.iter().map(|&v| v as f32).collect())
            };
            (t.name.clone(), t.shape.clone(), data)
        })
        .collect()
}

/// One `.npy` array, format 1.0, little-endian, C order, as numpy's `save` writes it.
fn npy(shape: &[usize], data: &TensorData) -> Vec<u8> {
    let (descr, bytes) = match data {
        TensorData::F64(v) => ("<f8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::F32(v) => (
            "<f4",
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        ),
        TensorData::U32(v) => ("<u4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        TensorData::U8(v) => ("|u1", v.clone()),
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(bytes);
    out
}

/// An `.npz` as `np.savez` (stored) or `np.savez_compressed` (deflated) writes it.
fn write_npz(path: &Path, tensors: &[(String, Vec<usize>, TensorData)], compressed: bool) {
    use zip::write::SimpleFileOptions;
    let method = if compressed {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = SimpleFileOptions::default().compression_method(method);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, shape, data) in tensors {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(&npy(shape, data)).unwrap();
    }
    zip.finish().unwrap();
}

/// The first `n` test images as an IDX file, for predict.
fn test_images(dir: &Path, n: usize) -> PathBuf {
    let set = test_set();
    let path = dir.join(wgrad::data::TEST_IMAGES);
    let body = &set.images[..n * set.image_size()];
    std::fs::write(&path, idx(IMAGES_MAGIC, &[n as u32, 28, 28], body)).unwrap();
    path
}

/// An MNIST folder whose test set is the first `n` bundled test images (its training set the
/// same images), so that eval covers what predict and the reference classify; returns the
/// images' IDX file.
fn mnist_folder(dir: &Path, n: usize) -> PathBuf {
    let images = test_images(dir, n);
    std::fs::copy(&images, dir.join(wgrad::data::TRAIN_IMAGES)).unwrap();
    let labels = idx(LABELS_MAGIC, &[n as u32], &test_set().labels[..n]);
    for name in [wgrad::data::TEST_LABELS, wgrad::data::TRAIN_LABELS] {
        std::fs::write(dir.join(name), &labels).unwrap();
    }
    images
}

fn json(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn simple_conv_weights_as_safetensors_and_npz_evaluate_and_predict() {
    let dir = TempDir::new().unwrap();
    let params = trained();
    let spec = simple_conv();
    let images = mnist_folder(dir.path(), CHECKED);
    let data = path_str(dir.path());
    // The reference net's class and top probability for the checked images, from the weights
    // as each file holds them (f32 files hold rounded weights).
    let reference = |weights: &[f64]| -> Vec<(usize, f64)> {
        let net = RefNet::new(&spec, DropoutMasks::gradient_check(0)).unwrap();
        let (x, _) = wgrad::gradcheck::first_batch(test_set(), CHECKED).unwrap();
        let logits = net
            .forward(weights, &x, CHECKED)
            .outputs
            .last()
            .unwrap()
            .clone();
        (logits.chunks(10))
            .map(|row| {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                let class = row.iter().position(|&v| v == max).unwrap();
                (class, 1.0 / sum)
            })
            .collect()
    };
    let rounded: Vec<f64> = params.iter().map(|&v| v as f32 as f64).collect();
    let files = [
        ("net64.safetensors", true, None),
        ("net32.safetensors", false, None),
        ("net64.npz", true, Some(false)),
        ("net32-compressed.npz", false, Some(true)),
        ("net64-compressed.npz", true, Some(true)),
    ];
    let mut accuracies = Vec::new();
    for (name, f64_data, npz) in files {
        let path = dir.path().join(name);
        let tensors = tensors(params, f64_data);
        match npz {
            None => wgrad::checkpoint::save_tensors(&path, &tensors, &Default::default()).unwrap(),
            Some(compressed) => write_npz(&path, &tensors, compressed),
        }
        let p = path_str(&path);
        let eval = json(&wgrad(&[
            "eval",
            p,
            "--model",
            "simple-conv",
            "--data",
            data,
            "--json",
        ]));
        let accuracy = eval["accuracy"].as_f64().unwrap();
        assert!(
            accuracy > 0.5,
            "{name}: accuracy {accuracy}, near chance: the weights were not read as trained"
        );
        let images_n = eval["images"].as_u64().unwrap() as usize;
        assert_eq!(images_n, CHECKED);
        let predicted = json(&wgrad(&[
            "predict",
            p,
            "--model",
            "simple-conv",
            path_str(&images),
            "--top",
            "1",
            "--json",
        ]));
        let predicted = predicted.as_array().unwrap();
        let classes: Vec<usize> = (predicted.iter())
            .map(|v| v["top"][0]["class"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(classes.len(), CHECKED);
        let right = (classes.iter().zip(&test_set().labels))
            .filter(|(c, l)| **c == **l as usize)
            .count();
        assert_eq!(
            right as f64 / images_n as f64,
            accuracy,
            "{name}: eval's accuracy is predict's classes against the labels"
        );
        // The reference on the same weights, f64 on the CPU.
        let want = reference(if f64_data { params } else { &rounded });
        for (i, (v, (class, prob))) in predicted.iter().zip(&want).enumerate() {
            let got_class = v["top"][0]["class"].as_u64().unwrap() as usize;
            let got_prob = v["top"][0]["probability"].as_f64().unwrap();
            assert!(
                (got_prob - prob).abs() < 1e-4,
                "{name}, image {i}: probability {got_prob}, the reference's {prob}"
            );
            // A near tie may go either way in f32.
            if *prob > 0.55 {
                assert_eq!(got_class, *class, "{name}, image {i}");
            }
        }
        accuracies.push(accuracy);
    }
    // f64 and f32 files of the same weights: the same net, to f32 rounding.
    assert!(
        accuracies
            .windows(2)
            .all(|w| (w[0] - w[1]).abs() <= 1.0 / CHECKED as f64),
        "{accuracies:?}"
    );
}

#[test]
fn npz_missing_or_misshapen_tensors_are_named() {
    let dir = TempDir::new().unwrap();
    let params = wgrad::nn::init_params(&simple_conv(), wgrad::nn::Init::He, 7);
    let all = tensors(&params, true);
    let missing = dir.path().join("missing.npz");
    let without_b3: Vec<_> = all.iter().filter(|t| t.0 != "b3").cloned().collect();
    write_npz(&missing, &without_b3, false);
    let images = test_images(dir.path(), 2);
    for command in [
        vec!["eval", path_str(&missing), "--model", "simple-conv"],
        vec![
            "predict",
            path_str(&missing),
            "--model",
            "simple-conv",
            path_str(&images),
        ],
    ] {
        let run = wgrad_fails(&command, &["missing.npz", "no tensor named b3", "W1, W2"]);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let misshapen = dir.path().join("misshapen.npz");
    let mut swapped = all.clone();
    swapped[4].1 = vec![10, 100];
    write_npz(&misshapen, &swapped, true);
    wgrad_fails(
        &["eval", path_str(&misshapen), "--model", "simple-conv"],
        &["W3", "[10, 100]", "[100, 10]"],
    );
    // The file does not say which net it holds: the flags must.
    wgrad_fails(
        &["eval", path_str(&misshapen)],
        &["does not say which net", "--model simple-conv"],
    );
    // A zip that is not numpy's.
    let foreign = dir.path().join("foreign.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&foreign).unwrap());
    zip.start_file("notes.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"hello").unwrap();
    zip.finish().unwrap();
    wgrad_fails(
        &["eval", path_str(&foreign), "--model", "simple-conv"],
        &["foreign.npz", "notes.txt", "savez"],
    );
    // --init-from reads the .npz too.
    let good = dir.path().join("good.npz");
    write_npz(&good, &all, true);
    let run = wgrad(&[
        "gradcheck",
        "--model",
        "simple-conv",
        "--init-from",
        path_str(&good),
        "--params",
        "b3",
        "--json",
    ]);
    let report = json(&run);
    assert_eq!(report["passed"], true, "{}", run.stdout);
}
