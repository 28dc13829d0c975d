//! A gradient check split into shards (`--shard K/N --save-grads`, then `--merge`) or over
//! adapters (`--adapter all`): the merged check is the single run's, numerical gradients bit for
//! bit, and everything that cannot be merged is refused, naming the problem and the fix.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::gpu::{AdapterOptions, GpuContext, Precision};
use wgrad::gradcheck::{self, GradcheckConfig, GradcheckReport, Shard, Subject};
use wgrad::nn::layers::parse_layers;
use wgrad::nn::{init_params, Init, NetSpec};
use wgrad::numgrad::{default_h, Strategy};

/// A small check with awkward sizes: 784-7-10 on 5 images.
const CHECK: &[&str] = &["gradcheck", "--hidden", "7", "--batch", "5"];

/// The precisions this adapter checks in (f64 unless it lacks it, see `common::f64_runs`).
fn precisions() -> &'static [&'static str] {
    if common::f64_runs() {
        &["f64", "f32"]
    } else {
        &["f32"]
    }
}

/// `wgrad ARGS`, which must succeed: its stdout.
fn succeeds(args: &[&str]) -> String {
    let run = wgrad(args);
    assert_eq!(run.code, Some(0), "wgrad {args:?}:\n{}", run.stderr);
    run.stdout
}

/// A report without how it ran: its timings, which no two runs share, and its chunk size, which
/// a shard sizes to its part.
fn untimed(json: &str) -> Value {
    let mut report: Value = serde_json::from_str(json.trim()).unwrap();
    let report_object = report.as_object_mut().unwrap();
    report_object.retain(|key, _| !key.starts_with("seconds") && key != "chunk");
    report
}

/// The text report without its timing line.
fn untimed_text(text: &str) -> Vec<&str> {
    (text.lines())
        .filter(|l| !l.contains("perturbed losses"))
        .collect()
}

/// Every tensor of a safetensors file: dtype, shape and bytes, by name.
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (file.tensors().into_iter())
        .map(|(name, t)| {
            let dtype = format!("{:?}", t.dtype());
            (name, (dtype, t.shape().to_vec(), t.data().to_vec()))
        })
        .collect()
}

/// Runs shards 1..=N of `check` (each writing dir/shard-K.safetensors) and returns the files and
/// the element count each shard reported.
fn shards(check: &[&str], n: usize, dir: &Path) -> (Vec<String>, Vec<u64>) {
    (1..=n)
        .map(|k| {
            let file = path_str(&dir.join(format!("shard-{k}.safetensors"))).to_string();
            let shard = format!("{k}/{n}");
            let args = [check, &["--shard", &shard, "--save-grads", &file, "--json"]].concat();
            let summary: Value = serde_json::from_str(succeeds(&args).trim()).unwrap();
            assert_eq!(summary["shard"], shard.as_str(), "{summary}");
            (file, summary["elements"].as_u64().unwrap())
        })
        .unzip()
}

#[test]
fn three_shards_merge_to_the_single_runs_report_and_gradients_bit_for_bit() {
    for precision in precisions() {
        let dir = TempDir::new().unwrap();
        let check = [CHECK, &["--precision", precision]].concat();
        let single_grads = dir.path().join("single.safetensors");
        let single = [&check[..], &["--save-grads", path_str(&single_grads)]].concat();
        let single_json = succeeds(&[&single[..], &["--json"]].concat());
        let single_text = succeeds(&single);

        let (files, elements) = shards(&check, 3, dir.path());
        // 784·7 + 7 + 7·10 + 10 = 5,575 elements, interleaved: 1,859, 1,858, 1,858.
        assert_eq!(elements, [1859, 1858, 1858], "{precision}");
        let merged_grads = dir.path().join("merged.safetensors");
        // In any order.
        let merge = [
            "gradcheck",
            "--merge",
            &files[2],
            &files[0],
            &files[1],
            "--save-grads",
            path_str(&merged_grads),
        ];
        let merged_json = succeeds(&[&merge[..], &["--json"]].concat());
        let merged_text = succeeds(&merge);

        assert_eq!(
            untimed(&merged_json),
            untimed(&single_json),
            "{precision}: the merged report is not the single run's"
        );
        assert_eq!(untimed_text(&merged_text), untimed_text(&single_text));
        let (merged, single) = (tensors(&merged_grads), tensors(&single_grads));
        assert_eq!(merged.len(), 8, "{:?}", merged.keys());
        for (name, (dtype, shape, bytes)) in &single {
            let (m_dtype, m_shape, m_bytes) = &merged[name];
            assert_eq!((m_dtype, m_shape), (dtype, shape), "{precision} {name}");
            assert!(
                m_bytes == bytes,
                "{precision} {name}: the merged gradient differs from the single run's"
            );
        }
    }
}

/// The check of `spec` on 5 images, its subject's parts owned.
struct Problem {
    spec: NetSpec,
    params: Vec<f64>,
    x: Vec<f64>,
    labels: Vec<u32>,
    config: GradcheckConfig,
}

impl Problem {
    fn new(layers: &str, precision: Precision) -> Problem {
        let spec = NetSpec::sequential([1, 28, 28], parse_layers(layers).unwrap()).unwrap();
        let mnist = wgrad::data::bundled().unwrap();
        let (x, labels) = gradcheck::first_batch(&mnist.train, 5).unwrap();
        Problem {
            params: init_params(&spec, Init::Std(0.1), 3),
            spec,
            x,
            labels,
            config: GradcheckConfig {
                precision,
                h: default_h(precision),
                strategy: Strategy::Incremental,
                tensors: Vec::new(),
                directions: 1,
                seed: 1,
                chunk: None,
                analytic_fault: None,
            },
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            spec: &self.spec,
            params: &self.params,
            x: &self.x,
            labels: &self.labels,
            config: &self.config,
        }
    }
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// `other` has `single`'s numerical gradients bit for bit (the parameters', and the checked
/// inputs'), its kinks, and so its figures.
fn assert_same_numbers(single: &GradcheckReport, other: &GradcheckReport, what: &str) {
    assert_eq!(bits(&other.numeric), bits(&single.numeric), "{what}");
    assert_eq!(other.kinks, single.kinks, "{what}");
    assert_eq!(other.inputs.len(), single.inputs.len(), "{what}");
    for (o, s) in other.inputs.iter().zip(&single.inputs) {
        assert_eq!(bits(&o.numeric), bits(&s.numeric), "{what}: {}", s.name);
    }
    let figures = |r: &GradcheckReport| {
        let value = serde_json::to_value(r).unwrap();
        (value["tensors"].clone(), value["directions"].clone())
    };
    assert_eq!(figures(other), figures(single), "{what}");
    assert_eq!(other.perturbed_losses, single.perturbed_losses, "{what}");
    assert_eq!(other.idle_losses, single.idle_losses, "{what}");
}

/// Through the library, on a net with a custom layer (whose input x2 is checked element by
/// element after the parameters): three shares merged, and the check spread over two devices
/// (two threads, here on one adapter), each give the single check's numbers, in f64 and f32
/// (whose central differences at 2h, the noise floor's, are split too).
#[test]
fn shares_and_devices_give_the_single_checks_numbers_bit_for_bit() {
    let prelu = format!("{}/tests/layers/prelu.wgsl", env!("CARGO_MANIFEST_DIR"));
    let layers = format!("affine7,wgsl:{prelu},affine10");
    let ctx = common::ctx();
    let two = [ctx_of_default(), ctx_of_default()];
    for precision in precisions() {
        let problem = Problem::new(&layers, precision.parse().unwrap());
        let subject = problem.subject();
        let single = gradcheck::check_on_adapters(std::slice::from_ref(ctx), &subject).unwrap();
        assert_eq!(single.inputs.len(), 1, "x2 is checked");
        let shares = (1..=3)
            .map(|k| {
                let shard = Shard::new(k, 3).unwrap();
                gradcheck::numeric_share(std::slice::from_ref(ctx), &subject, shard).unwrap()
            })
            .collect();
        let merged = gradcheck::merge(ctx, &subject, shares).unwrap();
        assert_same_numbers(&single, &merged, &format!("{precision}, 3 shares"));
        let spread = gradcheck::check_on_adapters(&two, &subject).unwrap();
        assert_same_numbers(&single, &spread, &format!("{precision}, 2 devices"));
    }
}

fn ctx_of_default() -> GpuContext {
    GpuContext::new(&AdapterOptions::default()).unwrap()
}

#[test]
fn adapter_all_gives_the_single_runs_report() {
    let single = succeeds(&[CHECK, &["--json"]].concat());
    let all = wgrad(&[CHECK, &["--adapter", "all", "--json"]].concat());
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    assert_eq!(untimed(&all.stdout), untimed(&single));
    // Other commands run on one adapter, and say so.
    wgrad_fails(
        &["train", "--adapter", "all", "--epochs", "1"],
        &["--adapter all", "gradcheck", "name it", "wgrad devices"],
    );
}

/// Everything `--merge` cannot join is refused before any output: exit 2, the problem and the
/// fix on stderr, nothing on stdout, no --save-grads file.
#[test]
fn merging_what_is_not_one_whole_check_fails_naming_the_problem_and_the_fix() {
    let dir = TempDir::new().unwrap();
    let (files, _) = shards(CHECK, 3, dir.path());
    let folder = |name: &str| {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        folder
    };
    let other_check = ["gradcheck", "--hidden", "7", "--batch", "4"];
    let (other, _) = shards(&other_check, 3, &folder("other"));
    let (halves, _) = shards(CHECK, 2, &folder("halves"));
    let plain = dir.path().join("plain.safetensors");
    succeeds(&[CHECK, &["--save-grads", path_str(&plain)]].concat());
    let out = dir.path().join("merged.safetensors");

    let f = |k: usize| files[k].as_str();
    let cases: [(&[&str], &[&str]); 7] = [
        (&[f(0), f(1)], &["shard 3/3", "missing", "--shard K/N"]),
        (
            &[f(0), f(1), f(2), f(1)],
            &["both shard 2/3", "each shard once"],
        ),
        (
            &[f(0), f(1), &other[2]],
            &["different checks", "batch 5 vs 4", "the batch's images"],
        ),
        (
            &[f(0), &halves[1]],
            &["shard 1/3", "shard 2/2", "one split"],
        ),
        (
            &[f(0), f(1), f(2), path_str(&plain)],
            &[
                "not a gradcheck shard file",
                "--shard K/N --save-grads FILE",
            ],
        ),
        (&["no-such.safetensors"], &["no such file"]),
        (
            &[f(0), f(1), f(2), "--hidden", "7"],
            &["--hidden", "drop it"],
        ),
    ];
    for (files, expected) in cases {
        let mut args = vec!["gradcheck", "--save-grads", path_str(&out), "--merge"];
        args.extend_from_slice(files);
        let run = wgrad_fails(&args, expected);
        assert_eq!(run.stdout, "", "{files:?}: a refused merge prints nothing");
        assert!(!out.exists(), "{files:?}: a refused merge writes nothing");
    }
}

#[test]
fn bad_shard_values_and_shards_without_a_file_are_refused_with_the_fix() {
    for (shard, expected) in [
        ("0/3", &["no shard 0/3", "1/3 to 3/3"][..]),
        ("4/3", &["no shard 4/3", "1/3 to 3/3"]),
        ("x", &["'x' is not K/N", "e.g. 2/3"]),
        ("3/0", &["at least 1 shard"]),
        ("2", &["not K/N"]),
    ] {
        wgrad_fails(
            &[CHECK, &["--shard", shard, "--save-grads", "s.safetensors"]].concat(),
            expected,
        );
    }
    let run = wgrad_fails(
        &[CHECK, &["--shard", "1/3"]].concat(),
        &[
            "--shard 1/3",
            "no report of its own",
            "--save-grads FILE",
            "--merge",
        ],
    );
    assert!(
        !run.stderr.contains("adapter"),
        "refused before the GPU is opened"
    );
    wgrad_fails(
        &[
            CHECK,
            &[
                "--shard",
                "1/3",
                "--save-grads",
                "s.safetensors",
                "--plot",
                "p.svg",
            ],
        ]
        .concat(),
        &["--plot", "--merge"],
    );
    wgrad_fails(
        &[CHECK, &["--shard", "1/3", "--merge", "s.safetensors"]].concat(),
        &["--shard", "cannot be used with", "--merge"],
    );
}
