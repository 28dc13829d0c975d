//! The data sets beside MNIST through the CLI: an EMNIST split, an IDX set of K classes under
//! MNIST's names, and CIFAR-10's binary version, each written small by the test. The net's last
//! layer follows the data's class count and its first the data's channels, the checkpoint
//! records both, and a folder or net that does not fit is refused before the GPU opens.

mod common;

use std::fs;
use std::path::Path;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::nn::NetSpec;

fn run_ok(args: &[&str]) -> Run {
    let run = wgrad(args);
    assert_eq!(run.code, Some(0), "wgrad {args:?} failed:\n{}", run.stderr);
    run
}

fn json(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

/// Fails with the error exit, before the GPU is opened, naming every part of `expected`.
fn fails_before_gpu(args: &[&str], expected: &[&str]) {
    let run = wgrad(args);
    assert_eq!(
        run.code,
        Some(ERROR_EXIT),
        "wgrad {args:?}:\n{}",
        run.stderr
    );
    assert_mentions(&run.stderr, expected);
    assert!(
        !run.stderr.contains("wgrad: adapter"),
        "the GPU was opened before the bad input was noticed:\n{}",
        run.stderr
    );
}

/// The net a checkpoint's metadata describes.
fn stored_spec(path: &Path) -> NetSpec {
    let meta = wgrad::checkpoint::read_metadata(path).unwrap();
    serde_json::from_str(&meta["spec"]).unwrap()
}

// ---------------------------------------------------------------------------------------------
// IDX sets of K classes

/// `labels.len()` side×side images in which class k lights the pixels p with p % K = k, over a
/// faint background that varies.
fn k_class_images(labels: &[u8], classes: usize, side: u32) -> Vec<u8> {
    let size = (side * side) as usize;
    let mut pixels = Vec::with_capacity(labels.len() * size);
    for (i, &label) in labels.iter().enumerate() {
        for p in 0..size {
            let lit = p % classes == usize::from(label);
            pixels.push(if lit { 255 } else { ((i + p) % 7) as u8 * 8 });
        }
    }
    idx(IMAGES_MAGIC, &[labels.len() as u32, side, side], &pixels)
}

/// An IDX set under `names` (train images, train labels, test images, test labels) whose labels
/// cycle through K classes.
fn k_class_folder(dir: &Path, names: [&str; 4], classes: usize, train: u32, test: u32) {
    for (images, labels, count) in [(names[0], names[1], train), (names[2], names[3], test)] {
        let values: Vec<u8> = (0..count).map(|i| (i as usize % classes) as u8).collect();
        write(dir, images, &gzip(&k_class_images(&values, classes, 8)));
        write(dir, labels, &idx(LABELS_MAGIC, &[count], &values));
    }
}

fn emnist_names(split: &str) -> [String; 4] {
    [
        "train-images-idx3",
        "train-labels-idx1",
        "test-images-idx3",
        "test-labels-idx1",
    ]
    .map(|part| format!("emnist-{split}-{part}-ubyte.gz"))
}

const MNIST_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The acceptance: an EMNIST-named folder of 47 classes (the balanced split's count)
/// trains, into a net of 47 class scores.
#[test]
fn an_emnist_split_of_47_classes_trains_a_47_way_net() {
    let data = TempDir::new().unwrap();
    let [a, b, c, d] = emnist_names("balanced");
    k_class_folder(data.path(), [&a, &b, &c, &d], 47, 470, 94);
    let out = TempDir::new().unwrap();
    let ckpt = out.path().join("emnist.safetensors");
    let run = run_ok(&[
        "train",
        "--data",
        path_str(data.path()),
        "--hidden",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "47",
        "--save",
        path_str(&ckpt),
        "--json",
    ]);
    let report = json(&run);
    assert_eq!(report["spec"]["output"], 47, "{report}");
    assert_eq!(report["spec"]["image"], serde_json::json!([1, 8, 8]));
    assert!(report["test_accuracy"].as_f64().unwrap() > 0.3, "{report}");
    assert_eq!(stored_spec(&ckpt).output, 47);
    // The same split named among others, as the EMNIST archive ships them.
    let [a, b, c, d] = emnist_names("letters");
    let letters: Vec<u8> = (0..52).map(|i| i % 26 + 1).collect();
    write(data.path(), &a, &gzip(&k_class_images(&letters, 27, 8)));
    write(data.path(), &b, &idx(LABELS_MAGIC, &[52], &letters));
    write(
        data.path(),
        &c,
        &gzip(&k_class_images(&letters[..26], 27, 8)),
    );
    write(data.path(), &d, &idx(LABELS_MAGIC, &[26], &letters[..26]));
    let balanced = data.path().join("emnist-balanced");
    fails_before_gpu(
        &["train", "--data", path_str(data.path())],
        &[
            "several EMNIST splits (balanced, letters)",
            path_str(&balanced),
        ],
    );
    let record = wgrad::checkpoint::load_net(&ckpt).unwrap().run.unwrap();
    let eval = run_ok(&[
        "eval",
        path_str(&ckpt),
        "--data",
        path_str(&balanced),
        "--json",
    ]);
    assert_eq!(json(&eval)["confusion"].as_array().unwrap().len(), 47);
    assert_eq!(record.data.channels, 1);
}

/// Any IDX set under MNIST's names whose labels run 0..K−1: here K = 12, and the named model
/// (`--model simple-conv`, the book's net ending in 10 scores on MNIST) ends in 12.
#[test]
fn a_12_class_idx_set_gives_the_named_model_12_outputs() {
    let data = TempDir::new().unwrap();
    k_class_folder(data.path(), MNIST_NAMES, 12, 120, 24);
    let run = run_ok(&[
        "train",
        "--data",
        path_str(data.path()),
        "--model",
        "simple-conv",
        "--epochs",
        "1",
        "--batch-size",
        "24",
        "--json",
    ]);
    let report = json(&run);
    assert_eq!(report["spec"]["output"], 12, "{report}");
    let last = report["spec"]["layers"].as_array().unwrap().last().unwrap();
    assert_eq!(last["units"], 12, "{report}");
    fails_before_gpu(
        &[
            "train",
            "--data",
            path_str(data.path()),
            "--layers",
            "conv4x3,relu,affine10",
        ],
        &[
            "gives 10 class scores",
            "the data has 12 classes",
            "affine12",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10's binary version

const RECORD: usize = 3073;

/// Records whose label says which colour plane is bright (0 red, 1 green, 2 blue), over noise in
/// every plane: a net that sees one plane only cannot tell the other two apart. (Planes read in
/// the wrong layout would still differ in where they are bright, so the loader's own tests check
/// the layout byte for byte.)
fn colour_batch(count: usize, seed: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(count * RECORD);
    for i in 0..count {
        let label = (i + seed) % 3;
        bytes.push(label as u8);
        for plane in 0..3 {
            for p in 0..1024 {
                let noise = ((i * 7919 + p * 104_729 + plane * 31 + seed) % 97) as u8;
                bytes.push(if plane == label { 120 + noise } else { noise });
            }
        }
    }
    bytes
}

fn cifar_folder(dir: &Path, per_batch: usize, test: usize) {
    for n in 1..=5 {
        write(
            dir,
            &format!("data_batch_{n}.bin"),
            &colour_batch(per_batch, n),
        );
    }
    write(dir, "test_batch.bin", &colour_batch(test, 0));
}

/// The acceptance: a CIFAR-10-format folder trains a small convnet, whose input shape
/// [3, 32, 32] the checkpoint records; `wgrad eval` and `--resume` take the colour net. The
/// labels are the bright channel, so learning them shows every channel reaches the net.
#[test]
fn a_cifar_folder_trains_a_convnet_on_3x32x32_colour_images() {
    let data = TempDir::new().unwrap();
    cifar_folder(data.path(), 40, 60);
    let out = TempDir::new().unwrap();
    let ckpt = out.path().join("cifar.safetensors");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--data", path_str(data.path()), "--json"];
        args.extend_from_slice(extra);
        json(&run_ok(&args))
    };
    let report = train(&[
        "--layers",
        "conv4x3p1,relu,maxpool4,affine10",
        "--epochs",
        "3",
        "--batch-size",
        "20",
        "--lr",
        "0.01",
        "--save",
        path_str(&ckpt),
    ]);
    assert_eq!(report["spec"]["image"], serde_json::json!([3, 32, 32]));
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "test accuracy {accuracy}: {report}");
    let spec = stored_spec(&ckpt);
    assert_eq!(
        (spec.image, spec.input, spec.output),
        ([3, 32, 32], 3072, 10)
    );
    let stored = wgrad::checkpoint::load_net(&ckpt).unwrap().run.unwrap();
    let identity = &stored.data;
    assert_eq!(
        (identity.channels, identity.rows, identity.cols),
        (3, 32, 32)
    );

    let eval = json(&run_ok(&["eval", path_str(&ckpt), "--json"]));
    assert_eq!(eval["accuracy"], report["test_accuracy"], "{eval}");

    let resumed = train(&["--resume", path_str(&ckpt), "--epochs", "4"]);
    assert_eq!(resumed["epochs"], 4, "{resumed}");

    // Other data: refused, and the message tells colour from greyscale.
    let mnist = TempDir::new().unwrap();
    k_class_folder(mnist.path(), MNIST_NAMES, 10, 100, 20);
    fails_before_gpu(
        &[
            "train",
            "--resume",
            path_str(&ckpt),
            "--data",
            path_str(mnist.path()),
        ],
        &[
            "images of 3×32×32",
            "images of 8×8",
            "point --data at the run's data",
        ],
    );
}

/// A gradient check of a convnet over colour input, on the central 6×6 of each channel.
#[test]
fn a_convnet_on_colour_crops_passes_gradcheck() {
    let data = TempDir::new().unwrap();
    cifar_folder(data.path(), 4, 4);
    let run = run_ok(&[
        "gradcheck",
        "--data",
        path_str(data.path()),
        "--layers",
        "conv3x3,relu,affine10",
        "--crop",
        "6",
        "--batch",
        "2",
        "--json",
    ]);
    let report = json(&run);
    assert_eq!(report["passed"], true, "{report}");
    let w1 = &report["tensors"][0];
    assert_eq!(
        (w1["name"].as_str(), w1["numel"].as_u64()),
        (Some("W1"), Some(3 * 3 * 3 * 3))
    );
}

#[test]
fn bad_cifar_folders_fail_before_the_gpu_opens() {
    let data = TempDir::new().unwrap();
    cifar_folder(data.path(), 4, 4);
    let mut cut = colour_batch(4, 3);
    cut.pop();
    let file = write(data.path(), "data_batch_3.bin", &cut);
    fails_before_gpu(
        &["train", "--data", path_str(data.path())],
        &[
            path_str(&file),
            "12291 bytes",
            "3073 bytes each",
            "download the file again",
        ],
    );
    let mut bad_label = colour_batch(4, 3);
    bad_label[2 * RECORD] = 11;
    write(data.path(), "data_batch_3.bin", &bad_label);
    fails_before_gpu(
        &["train", "--data", path_str(data.path())],
        &[
            path_str(&file),
            "record 2 has label 11",
            "not a CIFAR-10 class 0-9",
        ],
    );
    fs::remove_file(&file).unwrap();
    fails_before_gpu(
        &["train", "--data", path_str(data.path())],
        &[
            "data_batch_3.bin not found",
            "data_batch_1.bin to data_batch_5.bin",
        ],
    );
}

#[test]
fn a_folder_of_no_known_data_set_fails_with_the_layouts_it_looked_for() {
    let data = TempDir::new().unwrap();
    write(data.path(), "readme.txt", b"not data");
    fails_before_gpu(
        &["train", "--data", path_str(data.path())],
        &[
            path_str(data.path()),
            "holds no data set",
            "train-images-idx3-ubyte",
            "emnist-<split>",
            "data_batch_1.bin",
        ],
    );
}
