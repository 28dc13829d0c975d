//! `wgrad predict`: MNIST test digits written as PNGs (white on black and black on white, other
//! sizes, colour types and bit depths) are classified as `wgrad eval` classifies the same
//! images; `--no-invert`, `--top` and `--json` do what they say; bad files are refused by name.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::data::{Dataset, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};

/// A 784-64-10 net trained two epochs on the bundled MNIST (test accuracy about 0.92), once per
/// test binary. Training is seeded and the save atomic, so a run of the binary beside another
/// reads a whole file of the same net; one path keeps the target folder from filling up.
fn net() -> &'static Path {
    static NET: OnceLock<PathBuf> = OnceLock::new();
    NET.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("predict-net.safetensors");
        let args = ["train", "--hidden", "64", "--epochs", "2", "--save"];
        let run = wgrad(&[&args[..], &[path_str(&path)]].concat());
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        path
    })
}

fn test_set() -> &'static Dataset {
    static SET: OnceLock<Dataset> = OnceLock::new();
    SET.get_or_init(|| wgrad::data::bundled().unwrap().test)
}

/// An 8-bit PNG of colour type `color`, `width × height` pixels of `samples` (each below 256).
fn write_png(path: &Path, (width, height): (u32, u32), color: png::ColorType, samples: &[u16]) {
    write_png_with(
        path,
        (width, height),
        color,
        png::BitDepth::Eight,
        samples,
        None,
    )
}

/// A PNG of `color` at `depth` bits a sample; an indexed one looks its samples up in `palette`
/// (RGB triples).
fn write_png_with(
    path: &Path,
    (width, height): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    samples: &[u16],
    palette: Option<Vec<u8>>,
) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if let Some(palette) = palette {
        encoder.set_palette(palette);
    }
    let bytes: Vec<u8> = match depth {
        png::BitDepth::Sixteen => samples.iter().flat_map(|s| s.to_be_bytes()).collect(),
        _ => samples.iter().map(|&s| s as u8).collect(),
    };
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&bytes).unwrap();
    writer.finish().unwrap();
}

/// Test image `i` as a 28×28 greyscale PNG, as it is or inverted (black on white).
fn mnist_png(dir: &Path, i: usize, inverted: bool) -> PathBuf {
    let path = dir.join(format!("{}{i}.png", if inverted { "inv" } else { "" }));
    let pixels: Vec<u16> = (test_set().image(i).iter())
        .map(|&p| u16::from(if inverted { 255 - p } else { p }))
        .collect();
    write_png(&path, (28, 28), png::ColorType::Grayscale, &pixels);
    path
}

/// The first `n` test images as an IDX file (taken by predict as they are).
fn mnist_idx(dir: &Path, n: usize) -> PathBuf {
    let pixels = &test_set().images[..n * 784];
    write(
        dir,
        "first.idx",
        &idx(IMAGES_MAGIC, &[n as u32, 28, 28], pixels),
    )
}

/// `wgrad predict NET ARGS --json`, parsed.
fn predict_json(args: &[&str]) -> Vec<Value> {
    let run = wgrad(&[&["predict", path_str(net()), "--json"][..], args].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    serde_json::from_str::<Value>(&run.stdout)
        .expect("one JSON document")
        .as_array()
        .expect("an array")
        .clone()
}

fn top1(result: &Value) -> u64 {
    result["top"][0]["class"].as_u64().unwrap()
}

fn probabilities(result: &Value) -> Vec<f64> {
    let top = result["top"].as_array().unwrap();
    top.iter()
        .map(|g| g["probability"].as_f64().unwrap())
        .collect()
}

fn paths(files: &[PathBuf]) -> Vec<&str> {
    files.iter().map(|p| path_str(p)).collect()
}

/// The acceptance: 50 test images as PNGs, white on black and black on white, predicted
/// as `wgrad eval` predicts them. Eval reports no per-image classes, but its accuracy against
/// labels set to predict's top classes is 1 exactly when every one of its predictions agrees.
/// An MNIST digit is already fitted and centred, so its PNG must give the net the very input
/// the IDX file gives (which predict takes as it is): the probabilities are compared exactly.
#[test]
fn fifty_mnist_pngs_in_both_polarities_are_classified_as_eval_classifies_them() {
    let dir = TempDir::new().unwrap();
    let n = 50;
    let white: Vec<PathBuf> = (0..n).map(|i| mnist_png(dir.path(), i, false)).collect();
    let black: Vec<PathBuf> = (0..n).map(|i| mnist_png(dir.path(), i, true)).collect();
    let set = mnist_idx(dir.path(), n);
    let mut args = vec!["--top", "10"];
    args.extend(paths(&white).into_iter().chain(paths(&black)));
    args.push(path_str(&set));
    let results = predict_json(&args);
    assert_eq!(results.len(), 3 * n);
    let (white, rest) = results.split_at(n);
    let (black, from_idx) = rest.split_at(n);
    for i in 0..n {
        assert_eq!(from_idx[i]["index"], i);
        for (name, r) in [("white on black", &white[i]), ("black on white", &black[i])] {
            assert_eq!(r.get("index"), None);
            assert_eq!(r["top"], from_idx[i]["top"], "image {i}, {name}");
        }
    }
    // Eval on the same 50 images, labelled with predict's classes.
    let predicted: Vec<u8> = white.iter().map(|r| top1(r) as u8).collect();
    let data = TempDir::new().unwrap();
    let d = data.path();
    let images = idx(
        IMAGES_MAGIC,
        &[n as u32, 28, 28],
        &test_set().images[..n * 784],
    );
    let labels = idx(LABELS_MAGIC, &[n as u32], &predicted);
    for (name, bytes) in [
        (TRAIN_IMAGES, &images),
        (TRAIN_LABELS, &labels),
        (TEST_IMAGES, &images),
        (TEST_LABELS, &labels),
    ] {
        write(d, name, bytes);
    }
    let eval = wgrad(&["eval", path_str(net()), "--data", path_str(d), "--json"]);
    assert_eq!(eval.code, Some(0), "{}", eval.stderr);
    let report: Value = serde_json::from_str(eval.stdout.trim()).unwrap();
    assert_eq!(report["images"], n);
    assert_eq!(
        report["accuracy"], 1.0,
        "eval disagrees with predict: {report}"
    );
    // And the net is worth asking: most of predict's classes are the true digits.
    let right = (0..n)
        .filter(|&i| predicted[i] == test_set().labels[i])
        .count();
    assert!(right >= 40, "{right} of {n} right");
}

/// The first `n` test images that the net classifies right with probability 0.9 or more, with
/// predict's results for them from the IDX file.
fn confident(dir: &Path, n: usize) -> Vec<(usize, Value)> {
    let set = mnist_idx(dir, 50);
    let results = predict_json(&["--top", "10", path_str(&set)]);
    let chosen: Vec<(usize, Value)> = (results.into_iter().enumerate())
        .filter(|(i, r)| top1(r) == u64::from(test_set().labels[*i]) && probabilities(r)[0] >= 0.9)
        .take(n)
        .collect();
    assert_eq!(
        chosen.len(),
        n,
        "the net is sure of fewer than {n} of 50 digits"
    );
    chosen
}

/// Test image `i` pasted, as it is, into a white `height × width` canvas at (`top`, `left`), in
/// black: (canvas pixels, 0 white … 255 black ink) as 8-bit grey samples.
fn pasted(i: usize, (height, width): (usize, usize), (top, left): (usize, usize)) -> Vec<u16> {
    let mut canvas = vec![255u16; height * width];
    for (p, &v) in test_set().image(i).iter().enumerate() {
        canvas[(top + p / 28) * width + left + p % 28] = 255 - u16::from(v);
    }
    canvas
}

/// A digit that is already MNIST-made gives the net the very input of the IDX file in every
/// colour type and bit depth, and wherever it sits in a larger canvas of any shape (its box and
/// centre of mass are found); scaled up 3× in colour it is resampled, and keeps its class.
#[test]
fn other_sizes_colour_types_and_bit_depths_give_the_same_class() {
    use png::{BitDepth, ColorType};
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let chosen = confident(d, 5);
    let grey_palette: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let mut files = Vec::new();
    for (i, _) in &chosen {
        let p: Vec<u16> = test_set().image(*i).iter().map(|&v| u16::from(v)).collect();
        let f = |kind: &str| d.join(format!("{i}-{kind}.png"));
        // 16-bit grey, white on black.
        let wide: Vec<u16> = p.iter().map(|v| v * 257).collect();
        write_png_with(
            &f("grey16"),
            (28, 28),
            ColorType::Grayscale,
            BitDepth::Sixteen,
            &wide,
            None,
        );
        // Black ink on a transparent canvas (grey + alpha): the alpha is the digit.
        let ga: Vec<u16> = p.iter().flat_map(|&v| [0, v]).collect();
        write_png(&f("grey-alpha"), (28, 28), ColorType::GrayscaleAlpha, &ga);
        // White ink on a transparent canvas that hides red (RGBA).
        let rgba: Vec<u16> = (p.iter())
            .flat_map(|&v| {
                if v > 0 {
                    [255, 255, 255, v]
                } else {
                    [255, 0, 0, 0]
                }
            })
            .collect();
        write_png(&f("rgba"), (28, 28), ColorType::Rgba, &rgba);
        // A grey palette (indexed colour).
        write_png_with(
            &f("palette"),
            (28, 28),
            ColorType::Indexed,
            BitDepth::Eight,
            &p,
            Some(grey_palette.clone()),
        );
        // Black on white in a 61×90 canvas, off-centre.
        write_png(
            &f("canvas"),
            (90, 61),
            ColorType::Grayscale,
            &pasted(*i, (61, 90), (30, 7)),
        );
        // 3× larger, dark blue on white, in a 120×140 canvas (resampled: the class only).
        let small = pasted(*i, (40, 40), (6, 3));
        let rgb: Vec<u16> = (0..120 * 140)
            .flat_map(|q| {
                let (r, c) = (q / 140, q % 140);
                let v = match c {
                    10..130 => small[(r / 3) * 40 + (c - 10) / 3],
                    _ => 255,
                };
                [v, v, 128 + v / 2]
            })
            .collect();
        write_png(&f("rgb3x"), (140, 120), ColorType::Rgb, &rgb);
        files.extend(["grey16", "grey-alpha", "rgba", "palette", "canvas", "rgb3x"].map(f));
    }
    let results = predict_json(&[&["--top", "10"][..], &paths(&files)].concat());
    for ((i, expected), results) in chosen.iter().zip(results.chunks(6)) {
        for (kind, r) in ["grey16", "grey-alpha", "rgba", "palette", "canvas"]
            .iter()
            .zip(results)
        {
            assert_eq!(r["top"], expected["top"], "image {i}, {kind}");
        }
        assert_eq!(
            top1(&results[5]),
            top1(expected),
            "image {i}, 3× in RGB: {}",
            results[5]
        );
    }
}

/// Black on white is inverted unless --no-invert says not to: then the light picture is taken
/// as it is, and the net's answers fall apart. On white on black, --no-invert changes nothing.
#[test]
fn no_invert_takes_a_light_picture_as_it_is() {
    let dir = TempDir::new().unwrap();
    let chosen = confident(dir.path(), 10);
    let black: Vec<PathBuf> = (chosen.iter())
        .map(|(i, _)| mnist_png(dir.path(), *i, true))
        .collect();
    let white: Vec<PathBuf> = (chosen.iter())
        .map(|(i, _)| mnist_png(dir.path(), *i, false))
        .collect();
    let files = [paths(&black), paths(&white)].concat();
    let args = |extra: &[&'static str]| [&["--top", "10"][..], extra, &files].concat();
    let inverted = predict_json(&args(&[]));
    let as_is = predict_json(&args(&["--no-invert"]));
    let mut still_right = 0;
    for (k, (i, expected)) in chosen.iter().enumerate() {
        assert_eq!(inverted[k]["top"], expected["top"], "image {i}");
        assert_eq!(
            as_is[10 + k]["top"],
            expected["top"],
            "image {i}, white on black"
        );
        assert_ne!(
            as_is[k]["top"], expected["top"],
            "image {i}, black on white"
        );
        still_right += usize::from(top1(&as_is[k]) == top1(expected));
    }
    assert!(
        still_right <= 3,
        "{still_right} of 10 still right without inversion"
    );
}

/// --top K gives the K most probable classes, in order, K clamped to the net's 10 classes (whose
/// probabilities then sum to 1); text output names each picture, an IDX image by its index.
#[test]
fn top_k_in_text_and_json() {
    let dir = TempDir::new().unwrap();
    let png = mnist_png(dir.path(), 0, false);
    let set = mnist_idx(dir.path(), 2);
    let all = predict_json(&["--top", "20", path_str(&png)]);
    let p = probabilities(&all[0]);
    assert_eq!(p.len(), 10);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p:?}");
    assert!(p.windows(2).all(|w| w[0] >= w[1]), "{p:?}");
    let two = predict_json(&["--top", "2", path_str(&png)]);
    assert_eq!(
        two[0]["top"].as_array().unwrap()[..],
        all[0]["top"].as_array().unwrap()[..2]
    );
    assert_eq!(two[0]["file"], path_str(&png));
    assert_eq!(two[0].get("blank"), None);

    let text = wgrad(&[
        "predict",
        path_str(net()),
        path_str(&png),
        path_str(&set),
        "--top",
        "2",
    ]);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    let names = [
        path_str(&png).to_string(),
        format!("{}[0]", path_str(&set)),
        format!("{}[1]", path_str(&set)),
    ];
    assert_eq!(lines.len(), 3, "{}", text.stdout);
    let first = format!("{} ({:.3})", top1(&all[0]), p[0]);
    for (line, name) in lines.iter().zip(&names) {
        let (shown, guesses) = line.rsplit_once(": ").expect("NAME: guesses");
        assert_eq!(shown, name);
        assert_eq!(guesses.split(", ").count(), 2, "{line}");
    }
    assert!(lines[0].ends_with(&format!(
        ": {first}, {} ({:.3})",
        top1_second(&all[0]),
        p[1]
    )));
    // The first image of the IDX file is the PNG's.
    assert_eq!(
        lines[0].rsplit_once(": ").unwrap().1,
        lines[1].rsplit_once(": ").unwrap().1
    );

    let none = wgrad(&["predict", path_str(net()), path_str(&png), "--top", "0"]);
    assert_eq!(none.code, Some(ERROR_EXIT));
    assert_mentions(&none.stderr, &["--top 0", "1 or more"]);
}

fn top1_second(result: &Value) -> u64 {
    result["top"][1]["class"].as_u64().unwrap()
}

/// A picture with no ink is predicted (the net's answer for an empty field) and marked blank.
#[test]
fn an_all_background_picture_is_marked_blank() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("white.png");
    write_png(&path, (17, 9), png::ColorType::Grayscale, &[255; 17 * 9]);
    let results = predict_json(&[path_str(&path)]);
    assert_eq!(results[0]["blank"], true);
    assert_eq!(results[0]["top"].as_array().unwrap().len(), 3);
    let p = probabilities(&results[0]);
    assert!(p.iter().all(|p| p.is_finite() && *p > 0.0), "{p:?}");
    let text = wgrad(&["predict", path_str(net()), path_str(&path)]);
    assert_mentions(&text.stdout, &["white.png: ", "no ink found"]);
}

/// Every bad input stops predict with exit code 2, before any output, naming the file and the
/// fix; none panics.
#[test]
fn bad_files_exit_2_naming_the_file_and_the_fix() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let good = mnist_png(d, 0, false);
    let mut truncated = std::fs::read(&good).unwrap();
    truncated.truncate(truncated.len() / 2);
    let mut corrupt = std::fs::read(&good).unwrap();
    let end = corrupt.len();
    corrupt[40..end - 20].iter_mut().for_each(|b| *b ^= 0x5a);
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            d.join("missing.png"),
            vec!["missing.png", "cannot read", "check the path"],
        ),
        (
            write(d, "notes.txt", b"hello"),
            vec![
                "notes.txt",
                "neither a PNG nor an IDX",
                "68 65 6c 6c",
                "convert",
            ],
        ),
        (write(d, "empty.png", b""), vec!["empty.png", "it is empty"]),
        (
            write(d, "half.png", &truncated),
            vec!["half.png", "not a readable PNG", "save it again"],
        ),
        (
            write(d, "garbled.png", &corrupt),
            vec!["garbled.png", "not a readable PNG", "save it again"],
        ),
        (
            write(d, "labels.idx", &labels_idx(3)),
            vec!["labels.idx", "IDX labels", "expected"],
        ),
        (
            write(d, "short.idx", &images_idx(2, 28)[..100]),
            vec!["short.idx", "truncated"],
        ),
    ];
    for (path, parts) in &cases {
        // The bad file after a good one: nothing is printed for the good one either.
        let run = wgrad(&["predict", path_str(net()), path_str(&good), path_str(path)]);
        assert_eq!(run.code, Some(ERROR_EXIT), "{path:?}: {}", run.stderr);
        assert_mentions(&run.stderr, parts);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    let nothing = wgrad(&["predict", path_str(net())]);
    assert_eq!(nothing.code, Some(ERROR_EXIT));
    assert_mentions(&nothing.stderr, &["no pictures given", "digit.png"]);
}
