//! The flags that describe a net and the adapter it runs on, shared by train, gradcheck, bench,
//! eval and predict.

use std::path::PathBuf;

use clap::Args;

use wgrad::checkpoint::{self, StoredNet};
use wgrad::gpu::{AdapterOptions, GpuContext, Precision};
use wgrad::nn::{Activation, Init, NamedTensor, NetSpec};
use wgrad::optim::Optimizer;
use wgrad::{data, train, Result};

use super::Given;

/// The flags that shape a net: train, gradcheck and bench build it, eval and predict read a
/// plain weights file (numpy's, PyTorch's) as it.
#[derive(Args, Clone)]
pub struct ShapeArgs {
    /// Hidden layer sizes, comma-separated (50 is the book's TwoLayerNet) [default: train and
    /// bench train 256,128 with BatchNorm; gradcheck and bench 50]. Given sizes make a plain MLP
    /// unless --batchnorm is added.
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Model: mlp (shaped by --hidden, --activation, --batchnorm, --dropout) or simple-conv
    /// (the book's SimpleConvNet: conv 30×5×5, ReLU, max-pool 2, affine 100, ReLU, affine K for
    /// the data's K classes).
    #[arg(long, default_value = "mlp")]
    pub model: String,
    /// An explicit layer list instead of --model, e.g.
    /// "conv16x3p1,bn,relu,maxpool2,affine100,relu,dropout0.3,affine10" (see README); it ends in
    /// affineK for the data's K classes.
    #[arg(long)]
    pub layers: Option<String>,
    /// BatchNorm after every hidden affine layer (mlp).
    #[arg(long)]
    pub batchnorm: bool,
    /// Dropout probability after every hidden activation (mlp).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub dropout: f64,
    /// Hidden nonlinearity: any activation layer's word (relu, sigmoid, …; see --layers).
    #[arg(long, default_value = "relu")]
    pub activation: String,
}

/// The flags that describe a net.
#[derive(Args, Clone)]
pub struct NetArgs {
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Weight init: he, xavier, or a standard deviation such as 0.01 [default: train and bench
    /// train he; gradcheck and bench 0.01, as the book's TwoLayerNet].
    #[arg(long)]
    pub init: Option<String>,
    /// L2 weight decay λ (the loss gains λ/2·Σ‖W‖², as in the book).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub weight_decay: f64,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Data folder: MNIST's four IDX files (or Fashion-MNIST's, KMNIST's, any IDX set's under
    /// those names), an EMNIST split (or FOLDER/emnist-<split> to pick one), or CIFAR-10's
    /// binary batches [default: the bundled MNIST subset].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Use the adapter whose name contains this (see `wgrad devices`); gradcheck also takes
    /// `all`, a thread per adapter.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Start from the parameters in this safetensors or numpy .npz file (tensors W1, b1, …). A
    /// wgrad checkpoint brings its net: no net flags are needed.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
}

/// `--adapter all`: gradcheck spreads over every adapter.
pub const ALL_ADAPTERS: &str = "all";

/// The flags that shape the net (beside --init and --weight-decay).
pub const NET_SHAPE_FLAGS: &[&str] = &[
    "hidden",
    "model",
    "layers",
    "batchnorm",
    "dropout",
    "activation",
];

/// How `eval` and `predict` run a stored net.
#[derive(Args)]
pub struct StoredNetArgs {
    /// f32 or f64 [default: the run's precision, else f32].
    #[arg(long)]
    pub precision: Option<String>,
    #[arg(long)]
    pub adapter: Option<String>,
}

impl StoredNetArgs {
    pub fn precision(&self, net: &StoredNet) -> Result<Precision> {
        Ok(match (&self.precision, &net.run) {
            (Some(p), _) => p.parse()?,
            (None, Some(run)) => run.config.precision,
            (None, None) => Precision::F32,
        })
    }

    /// The adapter named (or the best one), said on stderr.
    pub fn context(&self) -> Result<GpuContext> {
        NetArgs::open_adapter(self.adapter.clone())
    }
}

/// Per-command defaults of the net flags.
pub struct NetDefaults {
    pub hidden: &'static [usize],
    /// BatchNorm when --hidden is not given (the default net is a recipe; a net the user sizes
    /// is plain unless --batchnorm is asked for, so the book's nets stay the book's).
    pub batchnorm: bool,
    pub init: &'static str,
}

/// The bare `wgrad train`: 784-256-128-10 with BatchNorm, which reached 0.954–0.961 test
/// accuracy over three seeds on the bundled set (784-100-100-10 without it: 0.949–0.953).
pub const TRAIN_NET: NetDefaults = NetDefaults {
    hidden: &[256, 128],
    batchnorm: true,
    init: "he",
};
pub const CHECK_NET: NetDefaults = NetDefaults {
    hidden: &[50],
    batchnorm: false,
    init: "0.01",
};

impl ShapeArgs {
    /// The net these flags describe for `data` (its image shape and class count).
    pub fn spec(&self, data: &data::Dataset, defaults: &NetDefaults) -> Result<NetSpec> {
        let activation: Activation = self.activation.parse()?;
        let layers = match (&self.layers, self.model.as_str()) {
            (Some(text), "mlp") => Some(text.clone()),
            (Some(_), _) => {
                return Err(wgrad::Error::InvalidArgument(
                    "give either --model or --layers, not both".into(),
                ))
            }
            (None, "mlp") => None,
            (None, name) => Some(wgrad::nn::layers::named_model(name, data.classes)?),
        };
        let (image, classes) = (data.shape(), data.classes);
        if classes < 2 {
            return Err(wgrad::Error::InvalidArgument(format!(
                "the data's labels give {classes} class(es): a classifier needs at least 2 \
                 (labels 0 to K−1)"
            )));
        }
        let spec = match layers {
            Some(text) => {
                if self.batchnorm || self.dropout != 0.0 || self.hidden.is_some() {
                    return Err(wgrad::Error::InvalidArgument(
                        "--hidden, --batchnorm and --dropout shape the mlp model; with --model or --layers write them into the layer list".into(),
                    ));
                }
                let spec = NetSpec::sequential(image, wgrad::nn::layers::parse_layers(&text)?)?;
                if spec.output != classes {
                    return Err(wgrad::Error::InvalidArgument(format!(
                        "the last layer gives {} class scores but the data has {classes} classes \
                         (labels 0 to {}): end the spec with affine{classes}",
                        spec.output,
                        classes - 1
                    )));
                }
                spec
            }
            None => {
                let hidden = self.hidden.as_deref().unwrap_or(defaults.hidden);
                let mut spec = NetSpec::mlp(data.image_size(), hidden, classes, activation);
                spec.image = image;
                if self.batchnorm || (self.hidden.is_none() && defaults.batchnorm) {
                    spec = spec.with_batchnorm();
                }
                spec.with_dropout(self.dropout)
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The net these flags describe for `data`, with its parameters (and any BatchNorm
    /// statistics) from the weights file at `path`: a plain safetensors or .npz file as numpy or
    /// PyTorch write it, or a wgrad checkpoint read as that net.
    pub fn load(&self, path: &std::path::Path, data: &data::Dataset) -> Result<StoredNet> {
        let spec = self.spec(data, &TRAIN_NET)?;
        let (params, state) = checkpoint::load_with_state(path, &spec)?;
        Ok(StoredNet {
            spec,
            params,
            state,
            run: None,
        })
    }

    /// Whether any flag that shapes a net is given.
    pub fn given(given: &Given) -> bool {
        given.any(NET_SHAPE_FLAGS)
    }
}

impl NetArgs {
    pub fn init(&self, defaults: &NetDefaults) -> Result<Init> {
        self.init.as_deref().unwrap_or(defaults.init).parse()
    }

    pub fn spec(
        &self,
        data: &data::Dataset,
        defaults: &NetDefaults,
        given: &Given,
    ) -> Result<NetSpec> {
        if let Some(mut spec) = self.stored_spec(given)? {
            spec.weight_decay = self.weight_decay;
            spec.validate()?;
            return Ok(spec);
        }
        let mut spec = self.shape.spec(data, defaults)?;
        spec.weight_decay = self.weight_decay;
        spec.validate()?;
        Ok(spec)
    }
    /// The net that a wgrad checkpoint given to --init-from describes, unless net flags describe
    /// one (a plain numpy/PyTorch file has no description: the flags' net is used).
    pub fn stored_spec(&self, given: &Given) -> Result<Option<NetSpec>> {
        let Some(path) = &self.init_from else {
            return Ok(None);
        };
        if given.any(NET_SHAPE_FLAGS) {
            return Ok(None);
        }
        checkpoint::stored_spec(path, &checkpoint::read_metadata(path)?)
    }

    pub fn load_data(&self) -> Result<data::Mnist> {
        Ok(data::load(self.data.as_deref())?)
    }

    pub fn context(&self) -> Result<GpuContext> {
        Self::open_adapter(self.adapter.clone())
    }

    /// The adapters a gradient check runs on: every one with `--adapter all`
    /// ([`GpuContext::open_all`]), else the one named (or the best), each said on stderr.
    pub fn check_contexts(&self) -> Result<Vec<GpuContext>> {
        if self.adapter.as_deref() != Some(ALL_ADAPTERS) {
            return Ok(vec![self.context()?]);
        }
        let all = GpuContext::open_all()?;
        for ctx in &all {
            eprintln!("wgrad: adapter {}", ctx.describe());
        }
        Ok(all)
    }

    /// The adapter named (or the best one), said on stderr.
    pub fn open_adapter(name: Option<String>) -> Result<GpuContext> {
        if name.as_deref() == Some(ALL_ADAPTERS) {
            return Err(wgrad::Error::InvalidArgument(format!(
                "--adapter {ALL_ADAPTERS} spreads a check over every adapter, which only \
                 `wgrad gradcheck` does; this command runs on one: name it (see `wgrad devices`), \
                 or leave --adapter out for the best"
            )));
        }
        let ctx = GpuContext::new(&AdapterOptions { name })?;
        eprintln!("wgrad: adapter {}", ctx.describe());
        Ok(ctx)
    }

    /// The parameters in `--init-from`, and the BatchNorm running statistics stored beside
    /// them, if any.
    pub fn initial(&self, spec: &NetSpec) -> Result<Option<(Vec<f64>, Vec<NamedTensor>)>> {
        (self.init_from.as_ref())
            .map(|path| checkpoint::load_with_state(path, spec))
            .transpose()
    }
}

/// A net's layers as --layers writes them.
pub fn layer_list(spec: &NetSpec) -> String {
    let words: Vec<String> = spec.layers.iter().map(|l| l.to_string()).collect();
    words.join(",")
}

/// The data folder as an absolute path (None: the bundled set), so that a checkpoint's record
/// finds it from any working directory.
pub fn data_folder(dir: Option<&std::path::Path>) -> Result<Option<PathBuf>> {
    dir.map(|d| {
        data::canonical_path(d)
            .map_err(|e| wgrad::Error::io(format!("resolving the data folder {}", d.display()), e))
    })
    .transpose()
}

/// The data with every image cut to its central `size`×`size` window (when asked).
pub fn cropped(mnist: data::Mnist, size: Option<usize>) -> Result<data::Mnist> {
    let Some(size) = size else { return Ok(mnist) };
    let crop = |d: &data::Dataset| {
        d.center_crop(size).ok_or_else(|| {
            wgrad::Error::InvalidArgument(format!(
                "--crop {size} does not fit {}×{} images: use 1 to {}",
                d.rows,
                d.cols,
                d.rows.min(d.cols)
            ))
        })
    };
    Ok(data::Mnist {
        train: crop(&mnist.train)?,
        test: crop(&mnist.test)?,
    })
}

/// Parameters for a check: a checkpoint, or the init; then `after_steps` of training.
pub fn check_params(
    net: &NetArgs,
    ctx: &GpuContext,
    spec: &NetSpec,
    mnist: &data::Mnist,
    after_steps: usize,
) -> Result<Vec<f64>> {
    wgrad::nn::model::check_fits(ctx, spec, 1, Precision::F32)?;
    let params = match net.initial(spec)? {
        Some((p, _)) => p,
        None => wgrad::nn::init_params(spec, net.init(&CHECK_NET)?, net.seed),
    };
    if after_steps == 0 {
        return Ok(params);
    }
    let config = train::TrainConfig {
        spec: spec.clone(),
        optimizer: Optimizer::from_name("momentum", Some(0.1))?,
        epochs: after_steps.div_ceil((mnist.train.len() / 100).max(1)),
        max_steps: Some(after_steps),
        seed: net.seed,
        initial_params: Some(params),
        ..Default::default()
    };
    Ok(train::train(ctx, mnist, &config, None)?.run.params)
}
