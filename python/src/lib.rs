//! `wgrad._native`: the Python package's thin layer over the wgrad crate. Arrays cross as flat
//! NumPy arrays (float64 parameters laid out as the net's `layout`, uint8 pixels for training);
//! shapes, names, defaults and the book's interface are the Python side's (`wgrad/book.py`).
//! The GIL is released while the GPU works; every wgrad error becomes a Python exception.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use wgrad::data::{Dataset, Mnist};
use wgrad::gpu::{GpuContext, Precision};
use wgrad::gradcheck::{self, GradcheckConfig};
use wgrad::nn::layers::parse_layers;
use wgrad::nn::{Conventions, CrossEntropy, Kernels, Mode, Model, NamedTensor, NetSpec};
use wgrad::numgrad::{PerturbedLossEngine, Strategy};
use wgrad::optim::Optimizer;
use wgrad::train::{self, CheckpointEvery, Hooks, TrainConfig};
use wgrad::{check_layer, LayerCheckOptions, WgslLayer};

/// wgrad's errors as Python's: a bad argument is a `ValueError`, the rest (no adapter, no f64,
/// a GPU failure, a file) a `RuntimeError`; each message names the problem and the fix.
fn py_err(e: wgrad::Error) -> PyErr {
    match e {
        wgrad::Error::InvalidArgument(m) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// One GPU context per process, created on first use: the best adapter wgpu sees (a GPU, else
/// lavapipe), or the one `WGRAD_ADAPTER` names.
fn context() -> PyResult<Arc<GpuContext>> {
    static CONTEXT: Mutex<Option<Arc<GpuContext>>> = Mutex::new(None);
    let mut slot = CONTEXT.lock().expect("context lock poisoned");
    if let Some(ctx) = slot.as_ref() {
        return Ok(ctx.clone());
    }
    let options = wgrad::gpu::AdapterOptions {
        name: std::env::var("WGRAD_ADAPTER").ok(),
    };
    let ctx = Arc::new(GpuContext::new(&options).map_err(py_err)?);
    *slot = Some(ctx.clone());
    Ok(ctx)
}

/// Pipelines are built once per process for each precision and loss, and shared by every net.
fn kernels(ctx: &GpuContext, precision: Precision, loss: CrossEntropy) -> PyResult<Arc<Kernels>> {
    type Cache = Mutex<Option<HashMap<(Precision, CrossEntropy), Arc<Kernels>>>>;
    static KERNELS: Cache = Mutex::new(None);
    let mut cache = KERNELS.lock().expect("kernel cache poisoned");
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(k) = map.get(&(precision, loss)) {
        return Ok(k.clone());
    }
    let k = Arc::new(Kernels::with_loss(ctx, precision, loss).map_err(py_err)?);
    map.insert((precision, loss), k.clone());
    Ok(k)
}

fn precision_of(name: &str) -> PyResult<Precision> {
    name.parse::<Precision>().map_err(py_err)
}

fn conventions_of(name: &str) -> PyResult<Conventions> {
    match name {
        "book" => Ok(Conventions::Book),
        "pytorch" => Ok(Conventions::PyTorch),
        other => Err(PyValueError::new_err(format!(
            "unknown conventions '{other}': use 'book' or 'pytorch'"
        ))),
    }
}

fn spec_of(
    layers: &str,
    image: (usize, usize, usize),
    weight_decay: f64,
    conventions: &str,
) -> PyResult<NetSpec> {
    let layers = parse_layers(layers).map_err(py_err)?;
    let mut spec = NetSpec::sequential([image.0, image.1, image.2], layers).map_err(py_err)?;
    spec.weight_decay = weight_decay;
    spec.conventions = conventions_of(conventions)?;
    spec.validate().map_err(py_err)?;
    Ok(spec)
}

fn state_of(state: &Bound<'_, PyDict>) -> PyResult<Vec<NamedTensor>> {
    state
        .iter()
        .map(|(name, values)| {
            let values: PyReadonlyArray1<f64> = values.extract()?;
            let values = values.as_slice()?.to_vec();
            Ok((name.extract()?, vec![values.len()], values))
        })
        .collect()
}

fn state_dict<'py>(py: Python<'py>, state: Vec<NamedTensor>) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, _, values) in state {
        dict.set_item(name, PyArray1::from_vec(py, values))?;
    }
    Ok(dict)
}

/// A net on the GPU: its spec, its model (parameter, gradient and state buffers) and the
/// shared pipelines. Every call takes the parameters and state the caller holds now.
#[pyclass(module = "wgrad._native", frozen)]
struct Net {
    spec: NetSpec,
    precision: Precision,
    ctx: Arc<GpuContext>,
    kernels: Arc<Kernels>,
    model: Mutex<Model>,
}

impl Net {
    /// Writes the caller's parameters, state and dropout seed into the model, then runs `f`
    /// on it with the GIL released.
    fn with_model<T: Send>(
        &self,
        py: Python<'_>,
        (params, state, seed): (&[f64], Vec<NamedTensor>, u32),
        f: impl FnOnce(&GpuContext, &Kernels, &Model) -> wgrad::Result<T> + Send,
    ) -> PyResult<T> {
        if params.len() != self.spec.layout().total {
            return Err(PyValueError::new_err(format!(
                "{} parameters given, the net has {}",
                params.len(),
                self.spec.layout().total
            )));
        }
        py.detach(|| {
            let mut model = self.model.lock().expect("model lock poisoned");
            model.write_params(&self.ctx, params);
            model.write_state(&self.ctx, &state);
            model.dropout_seed = seed;
            f(&self.ctx, &self.kernels, &model)
        })
        .map_err(py_err)
    }

    fn rows(&self, x: &[f64], labels: &[u32]) -> PyResult<()> {
        if labels.is_empty() || x.len() != labels.len() * self.spec.input {
            return Err(PyValueError::new_err(format!(
                "x holds {} values for {} samples of {} inputs: give x as [N, {}] with N > 0",
                x.len(),
                labels.len(),
                self.spec.input,
                self.spec.input
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl Net {
    /// Net(layers, image, weight_decay, conventions, precision): a layer list such as
    /// "affine50,relu,affine10" over inputs of shape image = (C, H, W).
    #[new]
    fn new(
        layers: &str,
        image: (usize, usize, usize),
        weight_decay: f64,
        conventions: &str,
        precision: &str,
    ) -> PyResult<Self> {
        let spec = spec_of(layers, image, weight_decay, conventions)?;
        let precision = precision_of(precision)?;
        let ctx = context()?;
        ctx.require(precision).map_err(py_err)?;
        let kernels = kernels(&ctx, precision, spec.conventions.cross_entropy())?;
        let zeros = vec![0.0; spec.layout().total];
        let model = Model::new(&ctx, &spec, &zeros, precision).map_err(py_err)?;
        Ok(Net {
            spec,
            precision,
            ctx,
            kernels,
            model: Mutex::new(model),
        })
    }

    /// The parameter tensors in layout order: [(name, shape)].
    #[getter]
    fn layout(&self) -> Vec<(String, Vec<usize>)> {
        (self.spec.layout().tensors.iter())
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    }

    /// BatchNorm's running statistics: [(name, length)], running_meanK and running_varK.
    #[getter]
    fn state_layout(&self) -> PyResult<Vec<(String, usize)>> {
        let model = self.model.lock().expect("model lock poisoned");
        let state = model.read_state(&self.ctx).map_err(py_err)?;
        Ok(state.into_iter().map(|(n, _, v)| (n, v.len())).collect())
    }

    #[getter]
    fn precision(&self) -> String {
        self.precision.to_string()
    }

    #[getter]
    fn layers(&self) -> String {
        let words: Vec<String> = self.spec.layers.iter().map(|l| l.to_string()).collect();
        words.join(",")
    }

    #[getter]
    fn classes(&self) -> usize {
        self.spec.output
    }

    /// run(params, state, x, labels, train, backward, seed) -> (logits [N·C], loss, grads or
    /// None, state): one pass in training mode (batch statistics, dropout, running statistics
    /// updated) or evaluation, and with `backward` the gradient.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::type_complexity)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        params: PyReadonlyArray1<'py, f64>,
        state: &Bound<'py, PyDict>,
        x: PyReadonlyArray1<'py, f64>,
        labels: PyReadonlyArray1<'py, u32>,
        train: bool,
        backward: bool,
        seed: u32,
    ) -> PyResult<(
        Bound<'py, PyArray1<f64>>,
        f64,
        Option<Bound<'py, PyArray1<f64>>>,
        Bound<'py, PyDict>,
    )> {
        let (x, labels) = (x.as_slice()?, labels.as_slice()?);
        self.rows(x, labels)?;
        let mode = if train { Mode::Train } else { Mode::Eval };
        let given = (params.as_slice()?, state_of(state)?, seed);
        let (out, state) = self.with_model(py, given, |ctx, kernels, model| {
            let out = wgrad::pass::run(ctx, kernels, model, x, labels, mode, backward)?;
            Ok((out, model.read_state(ctx)?))
        })?;
        Ok((
            PyArray1::from_vec(py, out.logits),
            out.loss,
            out.grads.map(|g| PyArray1::from_vec(py, g)),
            state_dict(py, state)?,
        ))
    }

    /// numerical_gradient(params, x, labels, h, seed) -> grads: central differences of the
    /// training-mode loss (batch statistics, the dropout mask of `seed`, running statistics
    /// untouched) for every parameter, each perturbed loss on the GPU against its own copy.
    #[allow(clippy::too_many_arguments)]
    fn numerical_gradient<'py>(
        &self,
        py: Python<'py>,
        params: PyReadonlyArray1<'py, f64>,
        state: &Bound<'py, PyDict>,
        x: PyReadonlyArray1<'py, f64>,
        labels: PyReadonlyArray1<'py, u32>,
        h: f64,
        seed: u32,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (x, labels) = (x.as_slice()?, labels.as_slice()?);
        self.rows(x, labels)?;
        if !(h.is_finite() && h > 0.0) {
            return Err(PyValueError::new_err(format!(
                "h must be a positive step, got {h}"
            )));
        }
        let given = (params.as_slice()?, state_of(state)?, seed);
        let total = self.spec.layout().total;
        let grad = self.with_model(py, given, |ctx, kernels, model| {
            let engine = PerturbedLossEngine::new(
                ctx,
                kernels,
                model,
                x,
                labels,
                Strategy::Incremental,
                h,
                None,
            )?;
            let indices: Vec<usize> = (0..total).collect();
            Ok(engine.gradient(&indices)?.grad)
        })?;
        Ok(PyArray1::from_vec(py, grad))
    }

    /// gradcheck(params, state, x, labels, precision, h, strategy, tensors, directions, seed)
    /// -> the report as JSON (the CLI's `gradcheck --json` figures).
    #[allow(clippy::too_many_arguments)]
    fn gradcheck(
        &self,
        py: Python<'_>,
        params: PyReadonlyArray1<'_, f64>,
        x: PyReadonlyArray1<'_, f64>,
        labels: PyReadonlyArray1<'_, u32>,
        precision: &str,
        h: Option<f64>,
        strategy: &str,
        tensors: Vec<String>,
        directions: usize,
        seed: u64,
    ) -> PyResult<String> {
        let (params, x, labels) = (params.as_slice()?, x.as_slice()?, labels.as_slice()?);
        self.rows(x, labels)?;
        let precision = precision_of(precision)?;
        let config = GradcheckConfig {
            precision,
            h: h.unwrap_or_else(|| wgrad::numgrad::default_h(precision)),
            strategy: strategy.parse().map_err(py_err)?,
            tensors,
            directions,
            seed,
            chunk: None,
            analytic_fault: None,
        };
        let report = py
            .detach(|| gradcheck::check(&self.ctx, &self.spec, params, x, labels, &config))
            .map_err(py_err)?;
        serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// train(params, state, train, test, optimizer, (epochs, batch, seed), eval_first, verbose)
    /// -> dict: the whole run on the GPU (data uploaded once), with the step losses, the
    /// accuracies after every epoch, and the final parameters and state.
    #[allow(clippy::too_many_arguments)]
    fn train<'py>(
        &self,
        py: Python<'py>,
        params: PyReadonlyArray1<'py, f64>,
        state: &Bound<'py, PyDict>,
        train_set: (PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, u8>),
        test_set: (PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, u8>),
        optimizer: (String, HashMap<String, f64>),
        schedule: (usize, usize, u64),
        eval_first: Option<usize>,
        verbose: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (epochs, batch_size, seed) = schedule;
        let data = Mnist {
            train: self.dataset(train_set)?,
            test: self.dataset(test_set)?,
        };
        let subsets = eval_first.map(|k| (data.train.take(k), data.test.take(k)));
        let config = TrainConfig {
            spec: self.spec.clone(),
            optimizer: book_optimizer(&optimizer.0, &optimizer.1)?,
            epochs,
            batch_size,
            seed,
            precision: self.precision,
            initial_params: Some(params.as_slice()?.to_vec()),
            initial_state: state_of(state)?,
            // Each epoch's weights, for the accuracies on the first samples of each set.
            checkpoint_every: subsets.as_ref().map(|_| CheckpointEvery::Epochs(1)),
            verbose,
            ..Default::default()
        };
        let ctx = self.ctx.clone();
        let run = py.detach(|| -> wgrad::Result<_> {
            let mut losses = Vec::new();
            let mut accuracies = Vec::new();
            let mut on_step_losses = |l: &[f64]| losses.extend_from_slice(l);
            let mut on_epoch = |e: &train::EpochReport| {
                accuracies.push((e.train_accuracy, e.test_accuracy.unwrap_or(f64::NAN)))
            };
            let mut subset_accuracies = Vec::new();
            let mut on_checkpoint = |run: &train::RunState| -> wgrad::Result<()> {
                if let Some((train_part, test_part)) = &subsets {
                    let on = |part| {
                        train::evaluate_with_state(
                            &ctx,
                            &config.spec,
                            &run.params,
                            &run.state,
                            part,
                            config.precision,
                        )
                        .map(|e| e.accuracy)
                    };
                    subset_accuracies.push((on(train_part)?, on(test_part)?));
                }
                Ok(())
            };
            let hooks = Hooks {
                on_epoch: Some(&mut on_epoch),
                on_checkpoint: match subsets {
                    Some(_) => Some(&mut on_checkpoint),
                    None => None,
                },
                on_steps: None,
                on_best: None,
                on_step_losses: Some(&mut on_step_losses),
                after_run: None,
            };
            let report = train::train_with(&ctx, &data, &config, hooks)?;
            if subsets.is_some() {
                accuracies = subset_accuracies;
            }
            Ok((report, losses, accuracies))
        });
        let (report, losses, accuracies) = run.map_err(py_err)?;
        let out = PyDict::new(py);
        out.set_item("params", PyArray1::from_vec(py, report.run.params))?;
        out.set_item("state", state_dict(py, report.run.state)?)?;
        out.set_item("train_loss_list", losses)?;
        let (train_acc, test_acc): (Vec<f64>, Vec<f64>) = accuracies.into_iter().unzip();
        out.set_item("train_acc_list", train_acc)?;
        out.set_item("test_acc_list", test_acc)?;
        out.set_item("test_accuracy", report.test_accuracy)?;
        out.set_item("samples_per_second", report.samples_per_second)?;
        out.set_item("train_seconds", report.train_seconds)?;
        Ok(out)
    }
}

impl Net {
    /// Pixels (uint8, image after image) and labels as a data set of this net's input shape.
    fn dataset(
        &self,
        (images, labels): (PyReadonlyArray1<'_, u8>, PyReadonlyArray1<'_, u8>),
    ) -> PyResult<Dataset> {
        let [channels, rows, cols] = self.spec.image;
        let data = Dataset {
            images: images.as_slice()?.to_vec(),
            labels: labels.as_slice()?.to_vec(),
            channels,
            rows,
            cols,
            classes: self.spec.output,
        };
        if data.images.len() != data.len() * self.spec.input {
            return Err(PyValueError::new_err(format!(
                "{} pixels for {} labels: each sample needs {}",
                data.images.len(),
                data.len(),
                self.spec.input
            )));
        }
        Ok(data)
    }
}

/// The book's optimizers (ch06 `common/optimizer.py`) by its names, with its defaults; `param`
/// holds the keyword arguments the book's constructors take. A net with the book's
/// conventions updates with the book's forms ([`Conventions::Book`]).
fn book_optimizer(name: &str, param: &HashMap<String, f64>) -> PyResult<Optimizer> {
    let get = |key: &str, default: f64| param.get(key).copied().unwrap_or(default);
    let lr_default = if name == "adam" { 0.001 } else { 0.01 };
    let lr = get("lr", lr_default);
    let opt = match name {
        "sgd" | "momentum" | "nesterov" => Optimizer::Sgd {
            lr,
            momentum: if name == "sgd" {
                0.0
            } else {
                get("momentum", 0.9)
            },
            dampening: 0.0,
            nesterov: name == "nesterov",
            weight_decay: 0.0,
        },
        "adagrad" => Optimizer::Adagrad {
            lr,
            lr_decay: 0.0,
            eps: 1e-7,
            initial_accumulator: 0.0,
            weight_decay: 0.0,
        },
        "rmsprop" => Optimizer::Rmsprop {
            lr,
            alpha: get("decay_rate", 0.99),
            eps: 1e-7,
            momentum: 0.0,
            centered: false,
            weight_decay: 0.0,
        },
        "adam" => Optimizer::Adam {
            lr,
            beta1: get("beta1", 0.9),
            beta2: get("beta2", 0.999),
            eps: 1e-7,
            amsgrad: false,
            weight_decay: 0.0,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown optimizer '{other}': use SGD, Momentum, Nesterov, AdaGrad, RMSprop or Adam"
            )))
        }
    };
    Ok(opt)
}

/// load_checkpoint(path) -> (layers, image, weight_decay, conventions, params, state): a net
/// that `wgrad train` (or `wgrad.book`'s `save`) wrote.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn load_checkpoint<'py>(
    py: Python<'py>,
    path: &str,
) -> PyResult<(
    String,
    (usize, usize, usize),
    f64,
    String,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyDict>,
)> {
    let stored = wgrad::checkpoint::load_net(Path::new(path)).map_err(py_err)?;
    let spec = stored.spec;
    let words: Vec<String> = spec.layers.iter().map(|l| l.to_string()).collect();
    let [c, h, w] = spec.image;
    let conventions = match spec.conventions {
        Conventions::Book => "book",
        Conventions::PyTorch => "pytorch",
    };
    Ok((
        words.join(","),
        (c, h, w),
        spec.weight_decay,
        conventions.to_string(),
        PyArray1::from_vec(py, stored.params),
        state_dict(py, stored.state)?,
    ))
}

/// devices() -> JSON: every adapter wgpu sees, as `wgrad devices --json` lists them.
#[pyfunction]
fn devices(py: Python<'_>) -> PyResult<String> {
    let adapters = py.detach(wgrad::gpu::list_adapters);
    serde_json::to_string(&adapters).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// adapter() -> JSON: the adapter this process computes on (created on first use), and
/// whether it has f64.
#[pyfunction]
fn adapter() -> PyResult<String> {
    let ctx = context()?;
    let mut info = ctx.adapter_json();
    info["f64"] = ctx.supports(Precision::F64).into();
    Ok(info.to_string())
}

/// check_layer(source, file, input_shape, precision, batch, classes, seed, h) -> JSON: a
/// custom WGSL layer's gradients, parameters and input, numerical against analytic.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn check_layer_source(
    py: Python<'_>,
    source: &str,
    file: &str,
    input_shape: Vec<usize>,
    precision: &str,
    batch: usize,
    classes: usize,
    seed: u64,
    h: Option<f64>,
) -> PyResult<String> {
    let layer = WgslLayer::from_wgsl(file, source).map_err(py_err)?;
    let options = LayerCheckOptions {
        precision: precision_of(precision)?,
        batch,
        classes,
        seed,
        h,
    };
    let ctx = context()?;
    let report = py
        .detach(|| check_layer(&ctx, &layer, &input_shape, &options))
        .map_err(py_err)?;
    serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// bundled_mnist() -> (train images, train labels, test images, test labels): the MNIST
/// subset compiled into wgrad (8,004 and 1,996 images), uint8, flat.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn bundled_mnist(
    py: Python<'_>,
) -> PyResult<(
    Bound<'_, PyArray1<u8>>,
    Bound<'_, PyArray1<u8>>,
    Bound<'_, PyArray1<u8>>,
    Bound<'_, PyArray1<u8>>,
)> {
    let data = wgrad::data::bundled().map_err(|e| py_err(e.into()))?;
    Ok((
        PyArray1::from_vec(py, data.train.images),
        PyArray1::from_vec(py, data.train.labels),
        PyArray1::from_vec(py, data.test.images),
        PyArray1::from_vec(py, data.test.labels),
    ))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Net>()?;
    m.add_function(wrap_pyfunction!(load_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_function(wrap_pyfunction!(adapter, m)?)?;
    m.add_function(wrap_pyfunction!(check_layer_source, m)?)?;
    m.add_function(wrap_pyfunction!(bundled_mnist, m)?)?;
    Ok(())
}
