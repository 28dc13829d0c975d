//! Reports as a front shows them: the tables the CLI prints and the JSON objects it writes, built
//! here so that every front (the CLI, Python) prints the same figures under the same names.

use std::fmt::Write;

use crate::bench::{BenchReport, TrainBench};
use crate::evaluate::EvalReport;
use crate::gpu::{AdapterSummary, GpuContext, Precision};
use crate::gradcheck::{GradcheckReport, TensorCheck};
use crate::train::{TrainConfig, TrainReport};

/// `writeln!` into a String, which cannot fail.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// `train --json`: the report, with the adapter, optimizer, net and precision it ran with.
pub fn train_json(
    report: &TrainReport,
    config: &TrainConfig,
    ctx: &GpuContext,
) -> serde_json::Value {
    let spec = &config.spec;
    let mut value = serde_json::to_value(report).expect("serialisable");
    value["adapter"] = ctx.adapter_json();
    value["optimizer"] = serde_json::to_value(&config.optimizer).expect("serialisable");
    value["lr_schedule"] = serde_json::to_value(config.schedule).expect("serialisable");
    value["spec"] = serde_json::to_value(spec).expect("serialisable");
    // The widths --hidden gives, readable without walking the layer list.
    value["spec"]["hidden"] = serde_json::json!(spec.hidden_units());
    value["precision"] = serde_json::json!(config.precision);
    value
}

/// A report as JSON with the adapter that produced it (`gradcheck`, `bench` and `eval --json`).
pub fn with_adapter(report: &impl serde::Serialize, ctx: &GpuContext) -> serde_json::Value {
    let mut value = serde_json::to_value(report).expect("serialisable");
    value["adapter"] = ctx.adapter_json();
    value
}

/// `wgrad eval`'s table: loss and accuracy, each class's precision, recall and support, and the
/// confusion matrix (rows: true class).
pub fn eval_text(r: &EvalReport, split: &str) -> String {
    let mut out = String::new();
    outln!(
        out,
        "eval: {} set, {} images: loss {:.4}, accuracy {:.4}",
        split,
        r.images,
        r.loss,
        r.accuracy
    );
    let share = |v: Option<f64>| v.map_or("    –".to_string(), |v| format!("{v:.3}"));
    outln!(out, "class  precision  recall  support");
    for c in &r.classes {
        let (p, rc) = (share(c.precision), share(c.recall));
        outln!(out, "{:>5}  {p:>9}  {rc:>6}  {:>7}", c.class, c.support);
    }
    outln!(
        out,
        "confusion matrix (rows: true class, columns: predicted):"
    );
    let header: Vec<String> = (0..r.confusion.len()).map(|c| format!("{c:>5}")).collect();
    outln!(out, "     {}", header.join(""));
    for (t, row) in r.confusion.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>5}")).collect();
        outln!(out, "{t:>5}{}", cells.join(""));
    }
    out
}

/// An array of {file, index (IDX only), top: [{class, probability}], blank (only when true)}.
pub fn predictions_json(
    inputs: &[crate::predict::Input],
    probabilities: &[Vec<f64>],
    k: usize,
) -> serde_json::Value {
    let values = inputs.iter().zip(probabilities).map(|(input, p)| {
        let mut value = serde_json::json!({"file": input.file});
        if let Some(index) = input.index {
            value["index"] = index.into();
        }
        let top = crate::predict::top(p, k);
        value["top"] = serde_json::to_value(top).expect("serialisable");
        if input.blank {
            value["blank"] = true.into();
        }
        value
    });
    serde_json::Value::Array(values.collect())
}

/// One line a picture: `digit.png: 7 (0.981), 9 (0.012), 2 (0.004)`, `set.idx[3]: …` for IDX.
pub fn predictions_text(
    inputs: &[crate::predict::Input],
    probabilities: &[Vec<f64>],
    k: usize,
) -> String {
    let mut text = String::new();
    for (input, p) in inputs.iter().zip(probabilities) {
        let name = match input.index {
            Some(i) => format!("{}[{i}]", input.file),
            None => input.file.clone(),
        };
        let guesses: Vec<String> = (crate::predict::top(p, k).iter())
            .map(|g| format!("{} ({:.3})", g.class, g.probability))
            .collect();
        let blank = if input.blank {
            " (no ink found: the picture is all background)"
        } else {
            ""
        };
        text += &format!("{name}: {}{blank}\n", guesses.join(", "));
    }
    text
}

/// The header and a row per tensor of `wgrad gradcheck`'s table (* marks a verdict on the
/// extrapolation from h and h/2).
fn tensor_table(tensors: &[TensorCheck]) -> String {
    let mut out = String::new();
    outln!(
        out,
        "{:<6} {:>8} {:>13} {:>13} {:<14} {:>13} {:>6} {:<7}",
        "tensor",
        "numel",
        "mean |a-n|",
        "max rel err",
        "at",
        "norm rel err",
        "kinks",
        "verdict"
    );
    for t in tensors {
        outln!(
            out,
            "{:<6} {:>8} {:>13.3e} {:>13.3e} {:<14} {:>13.3e} {:>6} {}",
            t.name,
            t.numel,
            t.mean_abs_diff,
            t.max_rel_err,
            format!("{:?}", t.max_rel_err_at),
            t.norm_rel_err,
            t.kink_crossings,
            match (t.passed, t.failed_at_h.is_some()) {
                (true, false) => "pass",
                (true, true) => "pass*",
                (false, false) => "FAIL",
                (false, true) => "FAIL*",
            }
        );
    }
    out
}

/// `wgrad gradcheck`'s table: a row per tensor, the directions, timings, tolerance and verdict.
pub fn gradcheck_text(r: &GradcheckReport) -> String {
    let mut out = String::new();
    outln!(
        out,
        "gradcheck: {} batch {}, {} strategy, h = {:e}, loss {:.6}",
        r.precision,
        r.batch,
        r.strategy,
        r.h,
        r.loss
    );
    out += &tensor_table(&r.tensors);
    for input in &r.inputs {
        outln!(
            out,
            "{}: the input of layer {} (a custom layer), [batch, features]",
            input.name,
            input.layer + 1
        );
    }
    for (i, d) in r.directions.iter().enumerate() {
        outln!(
            out,
            "direction {i}: analytic {:.10e} numeric {:.10e} rel err {:.2e} {}",
            d.analytic,
            d.numeric,
            d.rel_err,
            if d.passed { "pass" } else { "FAIL" }
        );
    }
    let kinks: usize = r.tensors.iter().map(|t| t.kink_crossings).sum();
    outln!(out,
        "{} perturbed losses{} in {:.3} s (setup {:.3} s), analytic gradient {:.4} s; {} kink crossings excluded; tolerance: ‖a-n‖ ≤ {:e}·‖a‖ + {}·√numel{}",
        r.perturbed_losses,
        match r.idle_losses {
            0 => String::new(),
            idle => format!(" ({idle} of them exact without a pass: first-layer inputs 0 in every sample)"),
        },
        r.seconds_numeric,
        r.seconds_numeric_setup,
        r.seconds_analytic,
        kinks,
        r.tolerance.norm_tol,
        if r.tolerance.noise_factor > 0.0 {
            format!(
                "({:e} + {}·noise measured at 2h)",
                r.tolerance.norm_atol, r.tolerance.noise_factor
            )
        } else {
            format!("{:e}", r.tolerance.norm_atol)
        },
        if r.tolerance.per_element {
            format!(", |a-n| ≤ {:e} + {:e}·max(|a|,|n|)", r.tolerance.atol, r.tolerance.rtol)
        } else {
            String::new()
        }
    );
    for t in &r.tensors {
        if let Some(at_h) = &t.failed_at_h {
            outln!(out,
                "* {}: failed against the central differences at h (norm rel err {:.3e}, max rel err {:.3e}, {} elements failing); its row compares the extrapolation from h and h/2, (4·n(h/2) − n(h))/3, which cancels their h² truncation error but not a wrong gradient",
                t.name, at_h.norm_rel_err, at_h.max_rel_err, at_h.elements_failed
            );
        }
    }
    if let Some(why) = &r.degenerate {
        outln!(out, "DEGENERATE: {why}");
    }
    outln!(out, "{}", if r.passed { "PASSED" } else { "FAILED" });
    out
}

/// `wgrad bench`'s table: each variant's time and rate against the analytic gradient's.
pub fn bench_text(report: &BenchReport, adapter: &str, precisions: &[Precision]) -> String {
    let mut out = String::new();
    outln!(
        out,
        "bench: {} parameters, batch {}, adapter {}",
        report.parameters,
        report.batch,
        adapter
    );
    for (p, s) in &report.analytic {
        outln!(out, "analytic gradient ({p}): {:.3} ms", s * 1e3);
    }
    outln!(
        out,
        "{:<12} {:<5} {:>10} {:>10} {:>14} {:>12} {:>8}",
        "variant",
        "prec",
        "seconds",
        "losses",
        "losses/s",
        "vs analytic",
        "note"
    );
    for n in &report.numeric {
        let analytic = report
            .analytic
            .iter()
            .find(|a| a.0 == n.precision)
            .map(|a| a.1)
            .unwrap_or(f64::NAN);
        outln!(
            out,
            "{:<12} {:<5} {:>10.3} {:>10} {:>14.0} {:>11.0}x {:>8}",
            n.strategy,
            n.precision.to_string(),
            n.seconds,
            n.perturbed_losses,
            n.perturbed_losses_per_second,
            n.seconds / analytic,
            if n.extrapolated {
                format!("extrapolated from {}", n.measured_losses)
            } else {
                String::new()
            }
        );
    }
    let seconds_of = |variant: &str, p: Precision| {
        report
            .numeric
            .iter()
            .find(|n| n.strategy == variant && n.precision == p)
            .map(|n| n.seconds)
    };
    for p in precisions {
        if let (Some(inc), Some(seq)) =
            (seconds_of("incremental", *p), seconds_of("sequential", *p))
        {
            outln!(
                out,
                "{p}: incremental is {:.0}x faster than the book's loop on the same GPU",
                seq / inc
            );
        }
        if let (Some(inc), Some(full)) = (seconds_of("incremental", *p), seconds_of("full", *p)) {
            outln!(
                out,
                "{p}: incremental is {:.1}x faster than full",
                full / inc
            );
        }
    }
    out
}

/// `wgrad bench train`'s figures, one a line: `adapter` as the CLI says it, `commit` the
/// build's.
pub fn train_bench_text(r: &TrainBench, adapter: &str, commit: &str) -> String {
    let mut out = String::new();
    outln!(out, "net: {}", r.net);
    outln!(out, "parameters: {}", r.parameters);
    outln!(out, "batch: {}", r.batch);
    outln!(out, "precision: {}", r.precision);
    outln!(out, "optimizer: {}, lr {}", r.optimizer, r.lr);
    outln!(out, "adapter: {adapter}");
    outln!(out, "warm-up steps (untimed): {}", r.warmup_steps);
    outln!(out, "steps: {}", r.steps);
    outln!(out, "seconds: {:.3}", r.seconds);
    outln!(out, "steps/s: {:.2}", r.steps_per_second);
    outln!(out, "samples/s: {:.0}", r.samples_per_second);
    outln!(out, "dispatches per step: {}", r.dispatches_per_step);
    outln!(
        out,
        "submits per step: {:.4} ({} steps per submit)",
        r.submits_per_step,
        r.steps_per_submit
    );
    if let Some(profile) = &r.profile {
        outln!(out, "each dispatch alone (µs, GFLOP/s for matmuls):");
        for d in &profile.dispatches {
            let rate = d
                .gflops
                .map_or(String::new(), |g| format!("  {g:.2} GFLOP/s"));
            let [x, y, z] = d.workgroups;
            outln!(
                out,
                "  {:>10.1}  {:<40} [{x}, {y}, {z}]{rate}",
                d.seconds * 1e6,
                d.kernel
            );
        }
        outln!(
            out,
            "dispatch cost, at most: {:.1} µs",
            profile.dispatch_seconds * 1e6
        );
    }
    outln!(out, "commit: {commit}");
    out
}

/// `wgrad devices`' table: a row per adapter.
pub fn devices_text(adapters: &[AdapterSummary]) -> String {
    let mut out = String::new();
    if adapters.is_empty() {
        outln!(out, "no adapters found: install a Vulkan driver, or lavapipe with `apt-get install -y mesa-vulkan-drivers libvulkan1`");
    } else {
        outln!(
            out,
            "{:<3} {:<36} {:<8} {:<12} {:<4} {:<9} {:<10} driver",
            "#",
            "name",
            "backend",
            "type",
            "f64",
            "subgroups",
            "timestamps"
        );
        for a in adapters {
            let yes = |b: bool| if b { "yes" } else { "no" };
            outln!(
                out,
                "{:<3} {:<36} {:<8} {:<12} {:<4} {:<9} {:<10} {} {}",
                a.index,
                a.name,
                a.backend,
                a.device_type,
                yes(a.f64),
                yes(a.subgroups),
                yes(a.timestamps),
                a.driver,
                a.driver_info
            );
        }
    }
    out
}
