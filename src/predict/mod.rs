//! `wgrad predict`: pictures (PNGs of any size and colour type, or IDX image files) made into a
//! trained net's input as MNIST was made ([`picture`]), classified on the GPU by the evaluation
//! pass that `wgrad eval` uses, and turned into class probabilities on the host.

pub mod picture;

use std::path::Path;

use serde::Serialize;

use crate::data::{idx, Dataset};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Precision};
use crate::nn::{NamedTensor, NetSpec};
use crate::train::{with_evaluator, RunRecord};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One image to classify, made into the net's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The file it came from, as given.
    pub file: String,
    /// Its place in an IDX file (None for a PNG).
    pub index: Option<usize>,
    /// `rows × cols` pixels, row-major, 0 (background) to 255.
    pub pixels: Vec<u8>,
    /// The picture held no ink: `pixels` are all 0.
    pub blank: bool,
}

/// A class and its probability.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Guess {
    pub class: usize,
    pub probability: f64,
}

/// The (rows, columns) of the pictures a one-channel net takes. A net built by the library's
/// [`NetSpec::mlp`] records its input as one row of `input` values: its run's data (or, failing
/// that, a square) says the shape.
pub fn input_shape(spec: &NetSpec, run: Option<&RunRecord>) -> Result<(usize, usize)> {
    let [channels, rows, cols] = spec.image;
    if channels != 1 {
        return Err(Error::InvalidArgument(format!(
            "the net takes {channels}-channel {rows}×{cols} images; predict makes greyscale \
             inputs only: use a net trained on one-channel (greyscale) data"
        )));
    }
    if rows > 1 {
        return Ok((rows, cols));
    }
    if let Some(data) = run.map(|r| &r.data) {
        if data.rows * data.cols == spec.input {
            return Ok((data.rows, data.cols));
        }
    }
    let side = (spec.input as f64).sqrt().round() as usize;
    if side * side == spec.input {
        return Ok((side, side));
    }
    Err(Error::InvalidArgument(format!(
        "the net takes {} values in one row and its checkpoint does not say the pictures' \
         shape: predict needs a net trained by `wgrad train`, whose checkpoint records it",
        spec.input
    )))
}

/// The inputs in the file at `path`, made for a `rows × cols` net: one for a PNG, one per image
/// for an IDX image file (raw or gzip). IDX images of the net's size are taken as they are (they
/// are MNIST-made already); others, like PNGs, go through [`picture::prepare`], inverted when
/// their background is light and `invert` is set.
pub fn read_file(path: &Path, (rows, cols): (usize, usize), invert: bool) -> Result<Vec<Input>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let context = format!("cannot read {file} (check the path: a PNG or an IDX image file)");
        Error::io(context, e)
    })?;
    if bytes.starts_with(&PNG_SIGNATURE) {
        let picture = picture::decode_png(&bytes).map_err(|e| Error::Picture {
            file: file.clone(),
            message: format!("not a readable PNG ({e}); save it again as a PNG"),
        })?;
        let made = picture::prepare(&picture, rows, cols, invert);
        return Ok(vec![Input {
            file,
            index: None,
            pixels: made.pixels,
            blank: made.blank,
        }]);
    }
    // Every IDX file begins with two zero bytes.
    if bytes.starts_with(&GZIP_MAGIC) || bytes.starts_with(&[0, 0]) {
        return read_idx(file, &bytes, (rows, cols), invert);
    }
    Err(Error::Picture {
        file,
        message: format!(
            "neither a PNG nor an IDX image file ({}); give a PNG picture (convert other formats \
             to PNG first) or an IDX image file, raw or gzip",
            describe_start(&bytes)
        ),
    })
}

fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "it is empty".into();
    }
    let start: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("it begins with the bytes {}", start.join(" "))
}

fn read_idx(
    file: String,
    bytes: &[u8],
    (rows, cols): (usize, usize),
    invert: bool,
) -> Result<Vec<Input>> {
    let images = idx::parse_images(&file, bytes)?;
    let size = images.rows * images.cols;
    let as_they_are = (images.rows, images.cols) == (rows, cols);
    let inputs = images.pixels.chunks(size).enumerate().map(|(i, image)| {
        let (pixels, blank) = if as_they_are {
            (image.to_vec(), image.iter().all(|&p| p == 0))
        } else {
            let grey = picture::Grey::from_u8(images.cols, images.rows, image);
            let made = picture::prepare(&grey, rows, cols, invert);
            (made.pixels, made.blank)
        };
        Input {
            file: file.clone(),
            index: Some(i),
            pixels,
            blank,
        }
    });
    Ok(inputs.collect())
}

/// Each input's class probabilities, in input order: the net's scores from the GPU's evaluation
/// pass (as `wgrad eval` computes them), then a softmax in f64.
pub fn predict(
    ctx: &GpuContext,
    net: (&NetSpec, &[f64], &[NamedTensor]),
    inputs: &[Input],
    (rows, cols): (usize, usize),
    precision: Precision,
) -> Result<Vec<Vec<f64>>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let classes = net.0.output;
    let set = input_set(inputs, rows, cols, classes);
    let scores = with_evaluator(ctx, net, &set, precision, |e, d, set| {
        e.scores(ctx, d, set, classes)
    })?;
    Ok(scores.chunks(classes).map(softmax).collect())
}

/// The inputs as a greyscale data set of the net's `classes` (every label 0: the evaluation
/// pass needs one, and predict reads only the scores).
fn input_set(inputs: &[Input], rows: usize, cols: usize, classes: usize) -> Dataset {
    Dataset {
        images: inputs
            .iter()
            .flat_map(|i| i.pixels.iter().copied())
            .collect(),
        labels: vec![0; inputs.len()],
        channels: 1,
        rows,
        cols,
        classes,
    }
}

/// exp(s − max) / Σ exp(s − max): never overflows, and sums to 1.
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// The `k` most probable classes, most probable first (the lower class first among equals).
pub fn top(probabilities: &[f64], k: usize) -> Vec<Guess> {
    let mut guesses: Vec<Guess> = (probabilities.iter().enumerate())
        .map(|(class, &probability)| Guess { class, probability })
        .collect();
    guesses.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    guesses.truncate(k);
    guesses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_scores() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12);
        assert!(p[2] < 1e-300);
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!((p[2] / p[1] - std::f64::consts::E).abs() < 1e-12);
    }

    #[test]
    fn top_orders_by_probability_then_class() {
        let guesses = top(&[0.1, 0.4, 0.1, 0.4], 3);
        let classes: Vec<usize> = guesses.iter().map(|g| g.class).collect();
        assert_eq!(classes, [1, 3, 0]);
        assert_eq!(top(&[0.5, 0.5], 10).len(), 2);
    }

    #[test]
    fn a_flat_library_net_takes_square_pictures_unless_its_run_says_otherwise() {
        let spec = NetSpec::mlp(784, &[10], 10, crate::nn::Activation::Relu);
        assert_eq!(input_shape(&spec, None).unwrap(), (28, 28));
        let odd = NetSpec::mlp(780, &[10], 10, crate::nn::Activation::Relu);
        let message = input_shape(&odd, None).unwrap_err().to_string();
        assert!(
            message.contains("780") && message.contains("wgrad train"),
            "{message}"
        );
        let mut shaped = odd.clone();
        shaped.image = [1, 26, 30];
        assert_eq!(input_shape(&shaped, None).unwrap(), (26, 30));
        shaped.image = [3, 26, 10];
        let message = input_shape(&shaped, None).unwrap_err().to_string();
        assert!(message.contains("3-channel"), "{message}");
    }
}
