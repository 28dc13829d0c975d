"""wgrad.book against the book's NumPy loop, same machine, same run: prints one JSON object.

  numerical_gradient of TwoLayerNet(784, 50, 10) on the first 3 and 100 bundled training
  images: wgrad's (from its second call in the process: pipelines built) against the NumPy
  implementation of the book's loop in python/tests/book_numpy.py (every element perturbed in
  place and restored);
  Trainer samples/s on the bundled data against `wgrad train` on the same net, optimizer,
  batch and precision (f64), both the best epoch after the first.

Run from the repository root with the package installed:  python benches/python_book.py
"""

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python", "tests"))
import book_numpy  # noqa: E402

import wgrad  # noqa: E402
from wgrad import book  # noqa: E402


def best(f, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


(x, t), (xt, tt) = book.load_mnist(one_hot_label=True)
# float64 pixels for both sides: the loop would otherwise convert the book's float32 images to
# float64 in every one of its 2·39,760 forward passes.
x64 = x.astype(np.float64)
out = {
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": cpu_model(),
    "adapter": json.loads(wgrad._native.adapter()),
    "numpy": np.__version__,
}
for batch in (3, 100):
    np.random.seed(0)
    net = book.TwoLayerNet(784, 50, 10)
    net.numerical_gradient(x64[:batch], t[:batch])  # first call: pipelines
    gpu = best(lambda: net.numerical_gradient(x64[:batch], t[:batch]), 3)
    np.random.seed(0)
    ref = book_numpy.TwoLayerNet(784, 50, 10)
    loop = best(lambda: ref.numerical_gradient(x64[:batch], t[:batch]), 1)
    out[f"numerical_gradient_b{batch}"] = {"wgrad_s": gpu, "numpy_s": loop, "speedup": loop / gpu}

epochs = 3
np.random.seed(0)
net = book.TwoLayerNet(784, 50, 10)
trainer = book.Trainer(net, x, t, xt, tt, epochs=epochs, mini_batch_size=100, optimizer="SGD",
                       optimizer_param={"lr": 0.1}, verbose=False)
trainer.train()
cli = subprocess.run(
    ["target/release/wgrad", "train", "--hidden", "50", "--init", "0.01", "--optimizer", "sgd", "--lr", "0.1",
     "--batch-size", "100", "--epochs", str(epochs), "--precision", "f64", "--json"],
    capture_output=True, text=True, check=True,
)
cli_report = json.loads(cli.stdout)
out["trainer_samples_per_second"] = trainer.samples_per_second
out["wgrad_train_samples_per_second"] = cli_report["samples_per_second"]
out["trainer_test_accuracy"] = trainer.test_acc_list[-1]
print(json.dumps(out, indent=1))
