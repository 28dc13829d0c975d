//! Watching and using a run: the metrics file is written record by record while the run
//! trains, its step records add up to the epoch's figures, a resumed run appends to it, the
//! plotter reads it; validation, early stopping and `wgrad eval`.

use std::path::Path;

mod common;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::data::{TEST_LABELS, TRAIN_LABELS};

fn train<'a>(data: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", path_str(data), "--batch-size", "20"];
    args.extend_from_slice(&["--hidden", "16", "--steps-per-submit", "4"]);
    args.extend_from_slice(rest);
    args
}

fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

#[test]
fn the_metrics_file_grows_while_the_run_trains() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    let path = out.path().join("m.jsonl");
    let args = train(
        data.path(),
        &["--epochs", "3", "--metrics", path_str(&path)],
    );
    let run = Running::until(&args, |line| line.starts_with("epoch   1/3"));
    // The epoch's line is printed after its record is written and flushed.
    let early = records(&path);
    assert!(run.finish().0.success());
    assert!(!early.is_empty() && early.len() < 3, "{early:?}");
    let all = records(&path);
    assert_eq!(all.len(), 3);
    for (k, r) in all.iter().enumerate() {
        assert_eq!(r["kind"], "epoch");
        assert_eq!(r["epoch"], k + 1);
        assert_eq!(r["step"], 30 * (k + 1));
        for field in [
            "lr",
            "train_loss",
            "train_accuracy",
            "test_loss",
            "test_accuracy",
        ] {
            assert!(r[field].is_f64(), "{field} in {r}");
        }
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
        assert!(r["samples_per_second"].as_f64().unwrap() > 0.0);
    }
}

/// Step records every 10 steps: three to an epoch of 30, whose losses average to the epoch's.
#[test]
fn step_records_add_up_to_the_epoch() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    let path = out.path().join("m.jsonl");
    let every = ["--metrics", path_str(&path), "--log-every", "10"];
    let run = wgrad(&train(
        data.path(),
        &[&["--epochs", "2"][..], &every].concat(),
    ));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let all = records(&path);
    let steps = of_kind(&all, "step");
    let epochs = of_kind(&all, "epoch");
    let at: Vec<u64> = steps.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(at, [10, 20, 30, 40, 50, 60]);
    for (k, epoch) in epochs.iter().enumerate() {
        let mean: f64 = steps[3 * k..3 * k + 3]
            .iter()
            .map(|r| r["train_loss"].as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        let want = epoch["train_loss"].as_f64().unwrap();
        assert!(
            (mean - want).abs() <= 1e-6 * want,
            "epoch {k}: {mean} vs {want}"
        );
        let accuracy = steps[3 * k]["train_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy));
    }
}

#[test]
fn a_resumed_run_appends_to_its_metrics_file() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    let (csv, saved) = (out.path().join("m.csv"), out.path().join("run.st"));
    let first = [
        "--epochs",
        "1",
        "--metrics",
        path_str(&csv),
        "--save",
        path_str(&saved),
    ];
    let run = wgrad(&train(data.path(), &first));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let resume = ["train", "--resume", path_str(&saved), "--epochs", "2"];
    let run = wgrad(&[&resume[..], &["--metrics", path_str(&csv)]].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("kind,epoch,step,lr,"));
    assert!(lines[1].starts_with("epoch,1,30,") && lines[2].starts_with("epoch,2,60,"));

    let refused = wgrad(&["train", "--metrics", "m.txt", "--epochs", "1"]);
    assert_eq!(refused.code, Some(ERROR_EXIT));
    assert_mentions(&refused.stderr, &[".jsonl", ".csv"]);
}

/// Labels that the images do not predict: the net can only memorise the training part, so the
/// validation loss turns up within a few epochs and early stopping has something to stop.
fn memorising_folder() -> TempDir {
    let dir = small_idx_folder();
    let scrambled = |n: u32| -> Vec<u8> {
        let labels: Vec<u8> = (0..n).map(|i| ((i * 7919 / 3) % 10) as u8).collect();
        idx(LABELS_MAGIC, &[n], &labels)
    };
    write(dir.path(), TRAIN_LABELS, &scrambled(600));
    write(dir.path(), TEST_LABELS, &scrambled(100));
    dir
}

#[test]
fn early_stopping_stops_patience_epochs_after_the_best_and_keeps_the_best() {
    let data = memorising_folder();
    let out = TempDir::new().unwrap();
    let (metrics, best) = (out.path().join("m.jsonl"), out.path().join("best.st"));
    let args = train(
        data.path(),
        &[
            "--epochs",
            "15",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--val-fraction",
            "0.2",
            "--patience",
            "2",
            "--json",
            "--metrics",
            path_str(&metrics),
            "--save-best",
            path_str(&best),
        ],
    );
    let run = wgrad(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let all = records(&metrics);
    let val: Vec<f64> = all
        .iter()
        .map(|r| r["val_loss"].as_f64().unwrap())
        .collect();
    let lowest = (0..val.len())
        .min_by(|&a, &b| val[a].total_cmp(&val[b]))
        .unwrap()
        + 1;
    assert_eq!(report["stopped_early"], true, "{report}");
    assert_eq!(report["best_epoch"], lowest);
    assert_eq!(all.len(), lowest + 2, "{val:?}");
    assert_mentions(
        &run.stderr,
        &["stopped early", &format!("epoch {lowest}'s")],
    );
    // The test set is evaluated once, at the end, not epoch by epoch.
    assert!(all.iter().all(|r| r.get("test_accuracy").is_none()));
    assert!(report["test_accuracy"].is_f64());
    // The best epoch's run, whole: it has trained exactly `lowest` epochs.
    let stored = wgrad::checkpoint::load_run(&best).unwrap().1;
    assert_eq!(stored.progress.epochs_done, lowest);
    assert_eq!(
        stored.progress.history[lowest - 1].val_loss,
        Some(val[lowest - 1])
    );
}

/// `wgrad eval` builds the net from the checkpoint alone and gives, for each split, the very
/// accuracy training reported; its confusion matrix accounts for every image.
#[test]
fn eval_reproduces_the_runs_figures_from_the_checkpoint_alone() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    let saved = out.path().join("run.st");
    let args = train(
        data.path(),
        &[
            "--epochs",
            "2",
            "--val-fraction",
            "0.2",
            "--json",
            "--save",
            path_str(&saved),
        ],
    );
    let run = wgrad(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    for (split, images, field) in [
        ("test", 100, "test_accuracy"),
        ("val", 120, "val_accuracy"),
        ("train", 480, "train_accuracy"),
    ] {
        let eval = wgrad(&["eval", path_str(&saved), "--split", split, "--json"]);
        assert_eq!(eval.code, Some(0), "{}", eval.stderr);
        let e: Value = serde_json::from_str(eval.stdout.trim()).unwrap();
        assert_eq!(e["accuracy"], report[field], "{split}");
        assert_eq!(e["images"], images);
        let confusion: Vec<Vec<u64>> = serde_json::from_value(e["confusion"].clone()).unwrap();
        let total: u64 = confusion.iter().flatten().sum();
        let right: u64 = (0..10).map(|c| confusion[c][c]).sum();
        assert_eq!(total, images);
        assert_eq!(
            right as f64 / total as f64,
            e["accuracy"].as_f64().unwrap(),
            "{split}"
        );
        let support: u64 = (0..10)
            .map(|c| e["classes"][c]["support"].as_u64().unwrap())
            .sum();
        assert_eq!(support, images);
    }
    let table = wgrad(&["eval", path_str(&saved)]);
    assert_mentions(&table.stdout, &["precision", "recall", "confusion matrix"]);
}

#[test]
fn eval_refuses_a_file_that_does_not_say_which_net_it_holds() {
    let out = TempDir::new().unwrap();
    let plain = out.path().join("plain.st");
    let spec = wgrad::nn::NetSpec::mlp(144, &[16], 10, wgrad::nn::Activation::Relu);
    let params = vec![0.01; spec.layout().total];
    wgrad::checkpoint::save(&plain, &spec.layout(), &params, &Default::default()).unwrap();
    let refused = wgrad(&["eval", path_str(&plain)]);
    assert_eq!(refused.code, Some(ERROR_EXIT), "{}", refused.stderr);
    assert_mentions(&refused.stderr, &["does not say which net", "--init-from"]);
    let no_val = wgrad(&["eval", path_str(&plain), "--split", "nope"]);
    assert_mentions(&no_val.stderr, &["unknown split", "test, train or val"]);
}

/// The trainer's own metrics files, both formats, with step records and a validation split,
/// are what `wgrad plot` reads: writer and reader agree on every column.
#[test]
fn the_trainers_metrics_files_plot() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    for name in ["m.jsonl", "m.csv"] {
        let metrics = out.path().join(name);
        let rest = [
            "--epochs",
            "2",
            "--val-fraction",
            "0.2",
            "--log-every",
            "7",
            "--metrics",
            path_str(&metrics),
        ];
        let run = wgrad(&train(data.path(), &rest));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let svg = out.path().join(format!("{name}.svg"));
        let plot = wgrad(&[
            "plot",
            path_str(&metrics),
            "-o",
            path_str(&svg),
            "--x",
            "step",
        ]);
        assert_eq!(plot.code, Some(0), "{name}: {}", plot.stderr);
        let text = std::fs::read_to_string(&svg).unwrap();
        assert_mentions(&text, &["validation", "train, per step"]);
    }
}

/// --save-best and --patience watch the validation loss, so without a split they are refused
/// before any training. A resumed run's split and patience are its own: another --patience is a
/// contradiction.
#[test]
fn watching_validation_without_a_split_is_refused() {
    let data = small_idx_folder();
    let out = TempDir::new().unwrap();
    let best = out.path().join("best.st");
    for flags in [["--save-best", path_str(&best)], ["--patience", "2"]] {
        let args = train(data.path(), &[&["--epochs", "1"][..], &flags].concat());
        let run = wgrad(&args);
        assert_eq!(run.code, Some(ERROR_EXIT), "{flags:?}: {}", run.stderr);
        assert_mentions(&run.stderr, &["validation", "--val-fraction"]);
        assert!(!run.stderr.contains("wgrad: adapter"), "{}", run.stderr);
    }
    let saved = out.path().join("run.st");
    let first = [
        "--epochs",
        "1",
        "--val-fraction",
        "0.2",
        "--save",
        path_str(&saved),
    ];
    let run = wgrad(&train(data.path(), &first));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let resume = [
        "train",
        "--resume",
        path_str(&saved),
        "--epochs",
        "2",
        "--patience",
        "3",
    ];
    let resumed = wgrad(&resume);
    assert_eq!(resumed.code, Some(ERROR_EXIT), "{}", resumed.stderr);
    assert_mentions(
        &resumed.stderr,
        &["--patience 3 contradicts the checkpoint"],
    );
}
