#!/usr/bin/env python3
"""Writes docs/benchmarks.md from the measurements in benches/results/ (benches/run.sh, and
benches/peers.sh for the table against NumPy and PyTorch).

Every table names the commit, date, CPU, adapter, driver and Mesa version it was measured on,
from benches/results/machine.json and the adapter each wgrad --json report names. The page is
generated: edit this script or rerun the measurements, never the page. Standard library only.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


def load(name):
    path = RESULTS / name
    if not path.exists():
        sys.exit(f"report.py: {path} is missing: run `bash benches/run.sh` first")
    return json.loads(path.read_text())


def driver_info(machine, adapter):
    """The driver and its version (Mesa's, for lavapipe) of the adapter a report names."""
    for d in machine["devices"]:
        if d["name"] == adapter["name"] and d["backend"] == adapter["backend"]:
            return f'{d["driver"]}, {d["driver_info"]}'
    return adapter.get("driver", "unknown")


def provenance(machine, adapter):
    note = f' {machine["note"]}.' if machine.get("note") else ""
    return (
        f'*Measured at commit `{machine["commit"]}` on {machine["date"]}: {machine["cpu"]} '
        f'({machine["cores"]} cores), adapter {adapter["name"]} ({adapter["backend"]}, '
        f'{adapter["device_type"]}), driver {driver_info(machine, adapter)}; '
        f'{machine["wgrad"]}, {machine["rustc"]}.{note}*'
    )


def bench_table(machine, report, title, command):
    lines = [f"### {title}", "", f"`{command}`", "", provenance(machine, report["adapter"]), ""]
    analytic = {p: s for p, s in report["analytic"]}
    lines.append(
        f'{report["parameters"]:,} parameters, batch {report["batch"]}. Analytic gradient: '
        + ", ".join(f"{p} {s * 1e3:.2f} ms" for p, s in report["analytic"])
        + "."
    )
    lines += [
        "",
        "| variant | precision | seconds | perturbed losses | losses/s | × analytic | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for n in report["numeric"]:
        ratio = n["seconds"] / analytic[n["precision"]]
        note = f'extrapolated from {n["measured_losses"]:,}' if n["extrapolated"] else ""
        lines.append(
            f'| {n["strategy"]} | {n["precision"]} | {n["seconds"]:.3f} | '
            f'{n["perturbed_losses"]:,} | {n["perturbed_losses_per_second"]:,.0f} | '
            f"{ratio:,.0f} | {note} |"
        )
    return "\n".join(lines) + "\n"


def train_table(machine, runs):
    adapter = runs[0][1]["adapter"]
    lines = [
        provenance(machine, adapter),
        "",
        "| command | net | epochs | steps | train seconds | samples/s | test accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for command, r in runs:
        net = "-".join(str(h) for h in r["spec"]["hidden"]) or "convnet"
        lines.append(
            f'| `{command}` | {net} | {r["epochs"]} | {r["steps"]} | '
            f'{r["train_seconds"]:.1f} | {r["samples_per_second"]:,.0f} | '
            f'{r["test_accuracy"]:.4f} |'
        )
    return "\n".join(lines) + "\n"


def python_table(machine, r):
    """wgrad.book against the book's NumPy loop and `wgrad train` (benches/python_book.py)."""
    lines = [
        provenance(machine, r["adapter"]),
        "",
        "| work | wgrad.book | the other | ratio |",
        "|---|---:|---:|---:|",
    ]
    for batch in (3, 100):
        g = r[f"numerical_gradient_b{batch}"]
        lines.append(
            f"| TwoLayerNet `numerical_gradient`, batch {batch} (s) vs the book's NumPy loop | "
            f'{g["wgrad_s"]:.3f} | {g["numpy_s"]:.2f} | {g["speedup"]:.0f}× |'
        )
    lines.append(
        f'| `Trainer` TwoLayerNet, SGD, batch 100, f64 (samples/s) vs `wgrad train` | '
        f'{r["trainer_samples_per_second"]:,.0f} | {r["wgrad_train_samples_per_second"]:,.0f} | '
        f'{r["trainer_samples_per_second"] / r["wgrad_train_samples_per_second"]:.2f} |'
    )
    return "\n".join(lines) + "\n"


def peers_table(r):
    """wgrad's training samples/s beside the book's NumPy and PyTorch CPU (benches/peers.sh)."""
    m, adapter = r["machine"], r["machine"].get("adapter", {})
    note = f' {m["note"]}.' if m.get("note") else ""
    threads = f', {m["torch_threads"]} threads' if m.get("torch_threads") else ""
    lines = [
        f'*Measured at commit `{m["commit"]}` on {m["date"]}: {m["cpu"]} ({m["cores"]} cores), '
        f'adapter {adapter.get("name", "unknown")} ({adapter.get("backend", "?")}, '
        f'{adapter.get("device_type", "?")}), driver {adapter.get("driver", "?")}, '
        f'{adapter.get("driver_info", "?")}; {m["wgrad"]}; Python {m["python"]}, '
        f'NumPy {m["numpy"] or "not installed"}, PyTorch {m["torch"] or "not installed"}'
        f"{threads}.{note}*",
    ]
    mesa25 = m.get("adapter_mesa25")
    if mesa25:
        lines += [
            "",
            f'*The Mesa 25 column: the same binary on {mesa25.get("name", "unknown")}, '
            f'{mesa25.get("driver_info", "?")} (benches/mesa25.sh), in the same run.*',
        ]
    lines += [
        "",
        f'Samples/s, batch {r["batch"]}, {r["steps"]} timed steps after a warm-up of as many '
        f'steps as wgrad\'s warm-up epoch, the best of {r.get("repeats", 1)} run(s) of each.',
        "NumPy computes in float64 as the book does; wgrad and PyTorch in float32. The last "
        "column is the share of the CPUs other processes took during each run (0: the machine "
        "was otherwise idle; for wgrad over its whole run, warm-up and evaluation included).",
        "",
        "| net | wgrad (f32) | NumPy, the book's way (f64) | PyTorch CPU (f32) | wgrad/NumPy "
        "| wgrad/PyTorch | wgrad dispatches per step | others' CPU share (wgrad / NumPy / "
        "PyTorch) |" + (" wgrad on Mesa 25 | wgrad on Mesa 25/NumPy |" if mesa25 else ""),
        "|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if mesa25 else ""),
    ]

    def rate(run):
        return f'{run["samples_per_second"]:,.0f}' if run else "–"

    def times(x):
        return f"{x:.3f}" if x else "–"

    def busy(run):
        return f'{run["others_cpu_frac"]:.2f}' if run else "–"

    for n in r["nets"]:
        lines.append(
            f'| {n["label"]} | {rate(n["wgrad"])} | {rate(n.get("numpy"))} | '
            f'{rate(n.get("torch"))} | {times(n["wgrad_over_numpy"])} | '
            f'{times(n["wgrad_over_torch"])} | {n["wgrad"]["dispatches_per_step"]} | '
            f'{busy(n["wgrad"])} / {busy(n.get("numpy"))} / {busy(n.get("torch"))} |'
            + (f' {rate(n.get("wgrad_mesa25"))} | {times(n.get("wgrad_mesa25_over_numpy"))} |'
               if mesa25 else "")
        )
    return "\n".join(lines) + "\n"


def versus_table(r):
    """This build's training samples/s against an earlier one's (benches/versus.sh)."""
    drivers = list(r["drivers"])
    lines = [
        f'*Measured on {r["date"]}: {r["cpu"]} ({r["cores"]} cores); {r["wgrad"]} against '
        f'commit `{r["base_commit"]}`; lavapipe: '
        + "; ".join(f"{d} {info}" for d, info in r["drivers"].items())
        + f'. The best of {r["repeats"]} runs of each.'
        + (f' {r["note"]}.' if r.get("note") else "") + "*",
        "",
        "| net | " + " | ".join(
            f"{d}: this | {d}: `{r['base_commit']}` | {d}: ratio" for d in drivers) + " |",
        "|---|" + "---:|---:|---:|" * len(drivers),
    ]
    for n in r["nets"]:
        cells = []
        for d in drivers:
            f = n[d]
            cells.append(f'{f["this"]:,.0f} | {f["base"]:,.0f} | {f["ratio"]:.2f}×')
        lines.append(f'| {n["label"]} | ' + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    machine = load("machine.json")
    sections = [
        "# Benchmarks",
        "",
        "Generated by `benches/report.py` from the JSON reports that `benches/run.sh` has "
        "`wgrad bench --json` and `wgrad train --json` write into `benches/results/` (and "
        "`benches/peers.sh` its comparison with NumPy and PyTorch); rerun "
        "`bash benches/run.sh` to measure again, and do not edit this page by hand. Each table "
        "says where and at which commit it was measured. On lavapipe the GPU is the CPU, so "
        "these figures measure Mesa's software Vulkan, not a graphics card; on a GPU expect "
        "other ratios.",
        "",
        "## Numerical against analytic gradients",
        "",
        "`incremental` reuses the unperturbed activations, `full` runs a whole forward pass per "
        "perturbed loss (batched on the GPU), `sequential` is the book's loop (one perturbed "
        "pair per submit). See [the gradient check](gradcheck.md).",
        "",
        bench_table(
            machine,
            load("bench-twolayernet.json"),
            "TwoLayerNet 784-50-10, batch 100",
            "wgrad bench --hidden 50 --batch 100 --budget 10 --repeats 2 --json",
        ),
        bench_table(
            machine,
            load("bench-simpleconv.json"),
            "SimpleConvNet, batch 3, f64",
            "wgrad bench --model simple-conv --batch 3 --precision f64 --variants incremental "
            "--budget 30 --repeats 1 --json",
        ),
        "## Training",
        "",
        train_table(
            machine,
            [
                ("wgrad train --epochs 2 --json", load("train-default-mlp.json")),
                (
                    "wgrad train --hidden 50 --init 0.01 --optimizer sgd --lr 0.1 --epochs 2 "
                    "--json",
                    load("train-twolayernet.json"),
                ),
            ],
        ),
    ]
    if (RESULTS / "peers.json").exists():
        sections += [
            "## Against the peers",
            "",
            "`bash benches/peers.sh`: `wgrad bench train --json` (the trainer's own clock, "
            "evaluation excluded) beside the book's NumPy classes (`python/tests/book_numpy.py`, "
            "a batch drawn with `np.random.choice` each step) and PyTorch on the CPU, on the same "
            "nets, batch and bundled data. The figures come from their own run, at the commit "
            "its line names.",
            "",
            peers_table(load("peers.json")),
        ]
    if (RESULTS / "versus.json").exists():
        sections += [
            "## Against an earlier commit",
            "",
            "`bash benches/versus.sh COMMIT`: `wgrad train ... --epochs 2 --json` of this build "
            "and of COMMIT's, run by turns on the same machine, under the distro's lavapipe "
            "and Mesa 25.0.7's (benches/mesa25.sh).",
            "",
            versus_table(load("versus.json")),
        ]
    if (RESULTS / "python-book.json").exists():
        sections += [
            "## From Python",
            "",
            "`python benches/python_book.py`: `numerical_gradient` from its second call in the "
            "process (pipelines built), the NumPy loop of `python/tests/book_numpy.py` (every "
            "element perturbed in place and restored), both on float64 pixels; `Trainer` and "
            "`wgrad train` over 3 epochs of the bundled data.",
            "",
            python_table(machine, load("python-book.json")),
        ]
    PAGE.write_text("\n".join(sections))
    print(f"report.py: wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
