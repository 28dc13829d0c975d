//! `wgrad plot` and `wgrad gradcheck --plot` as a user runs them: pictures that decode, with the
//! legend's words in them, and bad input refused with the file and line named and no picture
//! left behind.

use std::fs;
use std::path::{Path, PathBuf};

mod common;

use common::cli::*;
use tempfile::TempDir;

/// Three epochs of a run with a validation split, and step records between them.
const RUN_A: &str = r#"{"kind":"step","epoch":1,"step":40,"lr":0.1,"train_loss":1.2,"seconds":0.4}
{"kind":"epoch","epoch":1,"step":80,"lr":0.1,"train_loss":0.61,"train_accuracy":0.81,"val_loss":0.66,"val_accuracy":0.8,"test_loss":0.7,"test_accuracy":0.79,"seconds":0.9,"samples_per_second":4100.0}
{"kind":"step","epoch":2,"step":120,"lr":0.1,"train_loss":0.5,"train_accuracy":null}
{"kind":"epoch","epoch":2,"step":160,"lr":0.1,"train_loss":0.38,"train_accuracy":0.89,"val_loss":0.45,"val_accuracy":0.87,"test_loss":0.5,"test_accuracy":0.86,"seconds":1.9,"samples_per_second":4150.0}

{"kind":"epoch","epoch":3,"step":240,"lr":0.05,"train_loss":0.29,"train_accuracy":0.92,"val_loss":null,"test_loss":0.41,"test_accuracy":0.9,"seconds":2.8,"samples_per_second":4120.0}
"#;

/// Another run, as CSV, without a validation split.
const RUN_B: &str = "kind,epoch,step,lr,train_loss,train_accuracy,test_loss,test_accuracy\n\
                     epoch,1,80,0.01,0.9,0.7,0.95,0.69\n\
                     step,2,120,0.01,0.8,,,\n\
                     epoch,2,160,0.01,0.7,0.78,0.74,0.77\n\
                     epoch,3,240,0.01,0.55,0.83,0.6,0.82\n";

struct Folder {
    dir: TempDir,
}

impl Folder {
    fn new() -> Folder {
        Folder {
            dir: TempDir::new().unwrap(),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        write(self.dir.path(), name, text.as_bytes())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn plot_ok(args: &[&str]) {
    let mut all = vec!["plot"];
    all.extend_from_slice(args);
    let run = wgrad(&all);
    assert_eq!(run.code, Some(0), "wgrad {all:?} failed:\n{}", run.stderr);
}

/// Runs `wgrad plot ARGS`, which must fail with exit status 2 naming every one of `expected`,
/// and leave the folder as it found it (no picture, no temporary file).
fn plot_fails(folder: &Folder, args: &[&str], expected: &[&str]) {
    let before = entries(folder.dir.path());
    let mut all = vec!["plot"];
    all.extend_from_slice(args);
    let run = wgrad_fails(&all, expected);
    assert_eq!(
        entries(folder.dir.path()),
        before,
        "a failed plot left files behind; stderr:\n{}",
        run.stderr
    );
}

/// Every piece of text an SVG draws, in document order; panics unless it parses as XML.
fn svg_texts(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

fn assert_has_texts(texts: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(
            texts.iter().any(|t| t.contains(w)),
            "no text contains {w:?}; the texts are {texts:?}"
        );
    }
}

/// Decodes a PNG: (width, height, RGB rows).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a PNG of sane size")];
    let info = reader.next_frame(&mut pixels).expect("PNG pixels");
    assert_eq!(info.color_type, png::ColorType::Rgb, "8-bit RGB");
    pixels.truncate(info.buffer_size());
    (info.width, info.height, pixels)
}

/// Dark pixels (text and axes are black) in rows `rows` of an RGB image `width` wide.
fn dark_pixels(pixels: &[u8], width: u32, rows: std::ops::Range<u32>) -> usize {
    let row_bytes = width as usize * 3;
    pixels[rows.start as usize * row_bytes..rows.end as usize * row_bytes]
        .chunks(3)
        .filter(|p| p.iter().all(|&c| c < 80))
        .count()
}

#[test]
fn one_run_as_png_with_text_under_the_panels() {
    let f = Folder::new();
    let run = f.file("run-a.jsonl", RUN_A);
    let out = f.path("curves.png");
    plot_ok(&[path_str(&run), "-o", path_str(&out)]);
    let (w, h, pixels) = decode_png(&out);
    assert!(w >= 1000 && h >= 500, "{w}×{h} is smaller than 1000×500");
    // The legend strip under the panels (the bottom 40 pixels hold its one row) has text in it;
    // were text not drawn (no font), it would hold the coloured line samples alone.
    assert!(
        dark_pixels(&pixels, w, h - 40..h) > 200,
        "no text in the legend strip"
    );
    // The panels' titles and tick labels are text too.
    assert!(dark_pixels(&pixels, w, 0..40) > 200, "no panel titles");
    assert_eq!(entries(f.dir.path()), ["curves.png", "run-a.jsonl"]);
}

#[test]
fn two_runs_overlaid_as_svg_name_runs_and_series() {
    let f = Folder::new();
    let a = f.file("run-a.jsonl", RUN_A);
    let b = f.file("run-b.csv", RUN_B);
    let out = f.path("both.svg");
    plot_ok(&[path_str(&a), path_str(&b), "-o", path_str(&out)]);
    let texts = svg_texts(&out);
    assert_has_texts(
        &texts,
        &[
            "Loss",
            "Accuracy",
            "epoch",
            "cross-entropy loss",
            "run-a",
            "run-b",
            "train",
            "validation",
            "test",
        ],
    );
    // Epoch records only: step records' figures are not named.
    assert!(!texts.iter().any(|t| t.contains("per step")), "{texts:?}");
    // run-b has no validation split: its legend row names train and test only, so the word
    // appears once (run-a's row).
    assert_eq!(texts.iter().filter(|t| *t == "validation").count(), 1);
}

#[test]
fn against_steps_the_step_records_join_in() {
    let f = Folder::new();
    let a = f.file("run-a.jsonl", RUN_A);
    let out = f.path("steps.svg");
    plot_ok(&[path_str(&a), "-o", path_str(&out), "--x", "step"]);
    let texts = svg_texts(&out);
    assert_has_texts(&texts, &["step", "train, per step", "validation"]);
    // The x axis reaches step 240.
    assert_has_texts(&texts, &["240"]);
}

#[test]
fn csv_and_jsonl_of_the_same_run_draw_the_same_picture() {
    let f = Folder::new();
    let csv = "kind,epoch,step,train_loss,train_accuracy\nepoch,1,10,0.9,0.6\nepoch,2,20,0.5,0.8\n";
    let jsonl = "{\"kind\":\"epoch\",\"epoch\":1,\"step\":10,\"train_loss\":0.9,\"train_accuracy\":0.6}\n\
                 {\"kind\":\"epoch\",\"epoch\":2,\"step\":20,\"train_loss\":0.5,\"train_accuracy\":0.8}\n";
    let (c, j) = (f.file("run.csv", csv), f.file("run.jsonl", jsonl));
    let (pc, pj) = (f.path("c.svg"), f.path("j.svg"));
    plot_ok(&[path_str(&c), "-o", path_str(&pc)]);
    plot_ok(&[path_str(&j), "-o", path_str(&pj)]);
    assert!(
        fs::read(&pc).unwrap() == fs::read(&pj).unwrap(),
        "the same records drew different pictures from CSV and JSON Lines"
    );
}

#[test]
fn bad_inputs_exit_2_naming_file_and_line_and_leave_no_picture() {
    let f = Folder::new();
    let good = f.file("good.jsonl", RUN_A);
    let good = path_str(&good).to_string();
    let out = f.path("out.png");
    let out = path_str(&out).to_string();

    let missing = f.path("missing.jsonl");
    plot_fails(&f, &[path_str(&missing), "-o", &out], &["missing.jsonl"]);

    let bad = f.file(
        "bad.jsonl",
        "{\"kind\":\"epoch\",\"epoch\":1,\"step\":8,\"train_loss\":0.5}\n{\"kind\":\"epoch\",\"epoch\":2,\n\n",
    );
    plot_fails(
        &f,
        &[&good, path_str(&bad), "-o", &out],
        &["bad.jsonl line 2", "bad JSON", "fix or delete the line"],
    );

    let empty = f.file("empty.jsonl", "\n");
    plot_fails(
        &f,
        &[path_str(&empty), "-o", &out],
        &["empty.jsonl", "holds no records"],
    );

    let columns = f.file("columns.csv", "kind,epoch,step,valid_loss\nepoch,1,8,0.5\n");
    plot_fails(
        &f,
        &[path_str(&columns), "-o", &out],
        &["columns.csv line 1", "'valid_loss'", "val_loss"],
    );

    let cell = f.file(
        "cell.csv",
        "kind,epoch,step,train_loss\nepoch,1,8,0.5\nepoch,2,16,lots\n",
    );
    plot_fails(
        &f,
        &[path_str(&cell), "-o", &out],
        &["cell.csv line 3", "train_loss", "'lots'"],
    );

    let field = f.file(
        "field.jsonl",
        "{\"kind\":\"epoch\",\"epoch\":1,\"step\":8,\"valid_loss\":0.5}\n",
    );
    plot_fails(
        &f,
        &[path_str(&field), "-o", &out],
        &["field.jsonl line 1", "valid_loss"],
    );

    let steps = f.file(
        "steps.jsonl",
        "{\"kind\":\"step\",\"epoch\":1,\"step\":8,\"train_loss\":0.5}\n",
    );
    plot_fails(
        &f,
        &[path_str(&steps), "-o", &out],
        &["steps.jsonl", "--x step"],
    );

    let pdf = f.path("out.pdf");
    plot_fails(
        &f,
        &[&good, "-o", path_str(&pdf)],
        &["out.pdf", ".pdf", ".svg", ".png"],
    );
    plot_fails(
        &f,
        &[&good, "-o", &out, "--x", "time"],
        &["'time'", "epoch or step"],
    );
    let nowhere = f.path("no/such/folder/out.svg");
    plot_fails(
        &f,
        &[&good, "-o", path_str(&nowhere)],
        &["no/such/folder", "does not exist"],
    );
}

#[test]
fn gradcheck_plot_names_every_tensor() {
    let f = Folder::new();
    let out = f.path("check.svg");
    let run = wgrad(&[
        "gradcheck",
        "--hidden",
        "8",
        "--batch",
        "2",
        "--plot",
        path_str(&out),
    ]);
    assert_eq!(
        run.code,
        Some(0),
        "gradcheck failed:\n{}{}",
        run.stdout,
        run.stderr
    );
    let texts = svg_texts(&out);
    // Each tensor's legend entry: name, element count, kink crossings.
    assert_has_texts(
        &texts,
        &[
            "W1: 6,272 elements, ",
            "b1: 8 elements",
            "W2: 80 elements",
            "b2: 10 elements",
            "PASSED",
            "relative error",
            "kink crossing",
        ],
    );
    assert_eq!(entries(f.dir.path()), ["check.svg"]);
}

#[test]
fn gradcheck_refuses_a_plot_it_cannot_write_before_checking() {
    let f = Folder::new();
    let out = f.path("check.pdf");
    let run = wgrad(&["gradcheck", "--hidden", "8", "--plot", path_str(&out)]);
    assert_eq!(run.code, Some(ERROR_EXIT), "{}", run.stderr);
    assert_mentions(&run.stderr, &["check.pdf", ".svg", ".png"]);
    assert!(run.stdout.trim().is_empty(), "{}", run.stdout);
    assert!(
        !run.stderr.contains("wgrad: adapter"),
        "the GPU was opened before the bad path was noticed:\n{}",
        run.stderr
    );
    assert_eq!(entries(f.dir.path()), Vec::<String>::new());
}
