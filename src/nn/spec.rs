//! What a net is, independent of where it runs: layer sizes, activation, initialisation, and the
//! flat parameter layout shared by the GPU arena, the CPU reference and checkpoints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::nn::layers::custom::Start;
use crate::nn::layers::{Activation, Layer, LayerSpec};

/// Weight initialisation, as the book's MultiLayerNet names it. Biases always start at zero.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// std = sqrt(2 / fan_in): suits ReLU.
    He,
    /// std = sqrt(1 / fan_in): suits Sigmoid.
    Xavier,
    /// A fixed standard deviation (the book's TwoLayerNet uses 0.01).
    Std(f64),
}

impl Init {
    pub fn std_for(&self, fan_in: usize) -> f64 {
        match *self {
            Init::He => (2.0 / fan_in as f64).sqrt(),
            Init::Xavier => (1.0 / fan_in as f64).sqrt(),
            Init::Std(s) => s,
        }
    }
}

impl FromStr for Init {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "he" | "relu" => Ok(Init::He),
            "xavier" | "sigmoid" => Ok(Init::Xavier),
            other => match other.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Init::Std(v)),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown init '{other}': use 'he', 'xavier' or a positive standard deviation such as 0.01"
                ))),
            },
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::He => f.write_str("he"),
            Init::Xavier => f.write_str("xavier"),
            Init::Std(s) => write!(f, "{s}"),
        }
    }
}

/// A net: a layer list over inputs of one shape, ending in an affine layer of class scores and,
/// always, SoftmaxWithLoss. [`NetSpec::mlp`] builds the book's MultiLayerNet (TwoLayerNet is one
/// hidden layer), [`NetSpec::with_batchnorm`] and [`NetSpec::with_dropout`] its Extend
/// variant (Affine → BatchNorm → act → Dropout → … → Affine), [`NetSpec::sequential`] any list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    /// Shape (C, H, W) of one input; `input` = C·H·W.
    pub image: [usize; 3],
    pub input: usize,
    /// Class scores: the last affine layer's units.
    pub output: usize,
    pub layers: Vec<LayerSpec>,
    /// L2 penalty λ: the loss gains 0.5·λ·Σ‖W‖² over weight matrices (not biases), as in the book.
    pub weight_decay: f64,
    /// Whose definitions of the loss, BatchNorm and dropout the net follows.
    #[serde(default)]
    pub conventions: Conventions,
}

/// Where PyTorch and "Deep Learning from Scratch" define a layer differently, which of the two a
/// net follows. The book's nets from Python (`wgrad.book`) follow the book, so that a reader's
/// numbers come out as the book's; everything else follows PyTorch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conventions {
    /// Log-softmax cross-entropy; BatchNorm eps 1e-5 with the unbiased batch variance in its
    /// running variance; inverted dropout (kept units scaled by 1/(1 − p) in training).
    #[default]
    PyTorch,
    /// The book's `cross_entropy_error`, −log(y_t + 1e-7) (its backward pass still drops the
    /// 1e-7, as the book's does); BatchNorm eps 1e-6 (the book's `10e-7`) with the biased batch
    /// variance in its running variance; dropout that keeps units unscaled in training and
    /// scales every unit by 1 − p in evaluation.
    Book,
}

/// Which cross-entropy the loss kernels report. Both share one backward pass, (softmax −
/// onehot)/N, the exact gradient of log-softmax's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrossEntropy {
    /// −log softmax(z)_t
    LogSoftmax,
    /// The book's `cross_entropy_error`, −log(softmax(z)_t + 1e-7).
    Book,
}

impl CrossEntropy {
    /// ε inside the loss's log: −log(y_t + ε).
    pub fn eps(self) -> f64 {
        match self {
            CrossEntropy::LogSoftmax => 0.0,
            CrossEntropy::Book => 1e-7,
        }
    }
}

impl Conventions {
    pub fn cross_entropy(self) -> CrossEntropy {
        match self {
            Conventions::PyTorch => CrossEntropy::LogSoftmax,
            Conventions::Book => CrossEntropy::Book,
        }
    }

    pub fn batchnorm_eps(self) -> f64 {
        match self {
            Conventions::PyTorch => crate::nn::layers::batchnorm::BATCHNORM_EPS,
            Conventions::Book => 1e-6,
        }
    }

    /// Whether BatchNorm's running variance takes the unbiased batch variance, M/(M − 1) times
    /// the biased one the batch is normalised with.
    pub fn unbiased_running_var(self) -> bool {
        self == Conventions::PyTorch
    }

    /// Whether dropout scales kept units by 1/(1 − p) in training (and is the identity in
    /// evaluation), rather than scaling every unit by 1 − p in evaluation.
    pub fn inverted_dropout(self) -> bool {
        self == Conventions::PyTorch
    }
}

impl NetSpec {
    /// The book's MultiLayerNet: Affine → act for each hidden size, then Affine to `output`.
    pub fn mlp(input: usize, hidden: &[usize], output: usize, activation: Activation) -> Self {
        let mut layers = Vec::new();
        for &units in hidden {
            layers.extend([LayerSpec::Affine { units }, activation.spec()]);
        }
        layers.push(LayerSpec::Affine { units: output });
        NetSpec {
            image: [1, 1, input],
            input,
            output,
            layers,
            weight_decay: 0.0,
            conventions: Conventions::PyTorch,
        }
    }

    /// BatchNorm after every affine layer but the last, before its activation (the book's
    /// MultiLayerNetExtend).
    pub fn with_batchnorm(mut self) -> Self {
        let last = self.layers.len() - 1;
        let mut layers = Vec::new();
        for (i, layer) in self.layers.into_iter().enumerate() {
            let affine = matches!(layer, LayerSpec::Affine { .. });
            layers.push(layer);
            if affine && i < last {
                layers.push(LayerSpec::BatchNorm);
            }
        }
        self.layers = layers;
        self
    }

    /// Dropout with probability `p` after every activation layer (none when `p` is 0).
    pub fn with_dropout(mut self, p: f64) -> Self {
        if p == 0.0 {
            return self;
        }
        let mut layers = Vec::new();
        for layer in self.layers {
            let act = Activation::of(&layer).is_some();
            layers.push(layer);
            if act {
                layers.push(LayerSpec::Dropout { p });
            }
        }
        self.layers = layers;
        self
    }

    /// A net given as an explicit layer list over images of shape (C, H, W).
    pub fn sequential(image: [usize; 3], layers: Vec<LayerSpec>) -> Result<Self, Error> {
        let output = match layers.last() {
            Some(LayerSpec::Affine { units }) => *units,
            _ => {
                return Err(Error::InvalidArgument(
                    "a layer spec must end with an affine layer giving the class scores (e.g. affine10)".into(),
                ))
            }
        };
        let spec = NetSpec {
            image,
            input: image.iter().product(),
            output,
            layers,
            weight_decay: 0.0,
            conventions: Conventions::PyTorch,
        };
        spec.resolve()?;
        Ok(spec)
    }

    /// Units of every affine layer but the last (an MLP's hidden widths, as `--hidden` gives
    /// them).
    pub fn hidden_units(&self) -> Vec<usize> {
        let mut units: Vec<usize> = (self.layers.iter())
            .filter_map(|l| match l {
                LayerSpec::Affine { units } => Some(*units),
                _ => None,
            })
            .collect();
        units.pop();
        units
    }

    /// Shapes, parameter tensors and layers, checked against each other.
    pub fn resolve(&self) -> Result<(Vec<Layer>, ParamLayout), Error> {
        crate::nn::layers::resolve(self)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.input == 0 || self.output == 0 {
            return Err(Error::InvalidArgument(
                "input and output sizes must be positive".into(),
            ));
        }
        let units = self.layers.iter().filter_map(|l| match l {
            LayerSpec::Affine { units } => Some(*units),
            _ => None,
        });
        if let Some(pos) = units.collect::<Vec<_>>().iter().position(|&u| u == 0) {
            return Err(Error::InvalidArgument(format!(
                "hidden layer {} has size 0: every hidden size must be at least 1 (e.g. --hidden 100,100)",
                pos + 1
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "weight decay must be a finite number ≥ 0, got {}",
                self.weight_decay
            )));
        }
        let (layers, _) = self.resolve()?;
        let classes = crate::gpu::limits::MAX_CLASSES;
        if self.output > classes {
            return Err(Error::InvalidArgument(format!(
                "a net of {} classes is above the {classes} that wgrad supports: use fewer classes",
                self.output
            )));
        }
        let max = crate::gpu::limits::MAX_WIDTH;
        for layer in &layers {
            if let Layer::Affine(a) = layer {
                if let Some(w) = [a.d_in, a.d_out].into_iter().find(|&w| w > max) {
                    return Err(Error::InvalidArgument(format!(
                        "a layer of {w} units is wider than the {max} that wgrad supports: use narrower layers"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether the net can take `data`: images of its input size (and of its image shape,
    /// unless the net was made for flat inputs, as [`NetSpec::mlp`] makes it), and a class
    /// score for each of the data's classes.
    pub fn check_data(&self, data: &crate::data::Dataset) -> Result<(), Error> {
        let [c, h, w] = data.shape();
        let shape = |[c, h, w]: [usize; 3]| match c {
            1 => format!("{h}×{w}"),
            _ => format!("{c}×{h}×{w}"),
        };
        if data.image_size() != self.input {
            return Err(Error::InvalidArgument(format!(
                "the images have {} = {} pixels but the net's input size is {}: use data of the \
                 net's size, or a net whose first layer takes {} inputs",
                shape([c, h, w]),
                data.image_size(),
                self.input,
                data.image_size()
            )));
        }
        if self.image != [1, 1, self.input] && self.image != [c, h, w] {
            return Err(Error::InvalidArgument(format!(
                "the images are {} but the net takes images of {}: use the data the net was \
                 made for",
                shape([c, h, w]),
                shape(self.image)
            )));
        }
        if self.output < data.classes {
            return Err(Error::InvalidArgument(format!(
                "the net has {} outputs but the data has {} classes (labels 0 to {}): use a net \
                 with {} outputs",
                self.output,
                data.classes,
                data.classes - 1,
                data.classes
            )));
        }
        Ok(())
    }

    /// The flat parameter layout. Panics on a spec that does not resolve; call
    /// [`NetSpec::validate`] first on user input.
    pub fn layout(&self) -> ParamLayout {
        self.resolve().expect("a validated net spec").1
    }
}

/// What a parameter tensor is to its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamRole {
    /// A weight matrix or filter bank: initialised from N(0, std²), decayed by weight decay.
    Weight,
    /// A bias: starts at 0, not decayed.
    Bias,
    /// A normalisation's scale γ: starts at 1, not decayed.
    Gamma,
    /// A normalisation's shift β: starts at 0, not decayed.
    Beta,
    /// A custom layer's tensor: starts as its file declares, not decayed.
    Declared,
}

impl ParamRole {
    /// The name prefix in checkpoints: W1, b1, gamma1, beta1.
    pub fn prefix(self) -> &'static str {
        match self {
            ParamRole::Weight => "W",
            ParamRole::Bias => "b",
            ParamRole::Gamma => "gamma",
            ParamRole::Beta => "beta",
            ParamRole::Declared => "",
        }
    }
}

/// A tensor by name, outside the parameter arena (BatchNorm's running statistics):
/// (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f64>);

/// One named tensor inside the flat parameter arena (row-major).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub role: ParamRole,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub numel: usize,
    /// Inputs feeding one output unit (the He/Xavier fan-in); 0 for BatchNorm's γ and β.
    pub fan_in: usize,
}

impl TensorInfo {
    /// Weight matrices get weight decay; biases, γ and β do not.
    pub fn is_weight(&self) -> bool {
        self.role == ParamRole::Weight
    }
}

/// The flat parameter arena: tensors in order W1, b1, W2, b2, …, W has shape [in, out].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParamLayout {
    pub tensors: Vec<TensorInfo>,
    pub total: usize,
}

impl ParamLayout {
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor holding flat index `i`, and `i`'s position inside it.
    pub fn locate(&self, i: usize) -> Option<(&TensorInfo, usize)> {
        self.tensors
            .iter()
            .find(|t| (t.offset..t.offset + t.numel).contains(&i))
            .map(|t| (t, i - t.offset))
    }
}

/// Row-major flat index → multi-index, so reports point at W1[i, j] rather than a flat offset.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// Draws initial parameters (f64, so both precisions start from the same values) from a seeded,
/// platform-independent ChaCha stream: W ~ N(0, std²), b = 0, and a custom layer's tensors as
/// its file declares (drawn after every W, so a net's stream does not depend on them).
pub fn init_params(spec: &NetSpec, init: Init, seed: u64) -> Vec<f64> {
    use rand::SeedableRng;
    let (layers, layout) = spec.resolve().expect("a validated net spec");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut params = vec![0.0; layout.total];
    for t in layout.tensors.iter().filter(|t| t.role == ParamRole::Gamma) {
        params[t.offset..t.offset + t.numel].fill(1.0);
    }
    for t in layout.tensors.iter().filter(|t| t.is_weight()) {
        let std = init.std_for(t.fan_in);
        for v in &mut params[t.offset..t.offset + t.numel] {
            *v = std * standard_normal(&mut rng);
        }
    }
    let custom = layers.iter().filter_map(|l| match l {
        Layer::Custom(c) => Some(c),
        _ => None,
    });
    for (t, start) in custom.flat_map(|c| c.starts(&layout)) {
        let t = &layout.tensors[t];
        for v in &mut params[t.offset..t.offset + t.numel] {
            *v = match start {
                Start::Constant(c) => c,
                Start::Normal(std) => std * standard_normal(&mut rng),
            };
        }
    }
    params
}

/// Box–Muller: written here so the stream is fixed by this code, not by a distribution crate's
/// version.
pub fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    use rand::RngExt;
    loop {
        let u1: f64 = rng.random();
        let u2: f64 = rng.random();
        if u1 > f64::MIN_POSITIVE {
            return (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        }
    }
}
