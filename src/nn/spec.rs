//! What a net is, independent of where it runs: layer sizes, activation, initialisation, and the
//! flat parameter layout shared by the GPU arena, the CPU reference and checkpoints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Sigmoid,
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "sigmoid" => Ok(Activation::Sigmoid),
            other => Err(Error::InvalidArgument(format!(
                "unknown activation '{other}': use 'relu' or 'sigmoid'"
            ))),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
        })
    }
}

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

/// A multi-layer perceptron: Affine → act → … → Affine → SoftmaxWithLoss.
/// TwoLayerNet is `hidden = [h]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub output: usize,
    pub activation: Activation,
    /// L2 penalty λ: the loss gains 0.5·λ·Σ‖W‖² over weight matrices (not biases), as in the book.
    pub weight_decay: f64,
}

impl NetSpec {
    pub fn mlp(input: usize, hidden: &[usize], output: usize, activation: Activation) -> Self {
        NetSpec {
            input,
            hidden: hidden.to_vec(),
            output,
            activation,
            weight_decay: 0.0,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.input == 0 || self.output == 0 {
            return Err(Error::InvalidArgument(
                "input and output sizes must be positive".into(),
            ));
        }
        if let Some(pos) = self.hidden.iter().position(|&h| h == 0) {
            return Err(Error::InvalidArgument(format!(
                "hidden layer {} has size 0: every hidden size must be at least 1 (e.g. --hidden 100,100)",
                pos + 1
            )));
        }
        let max = crate::nn::model::MAX_WIDTH;
        if let Some(w) = self.widths().into_iter().find(|&w| w > max) {
            return Err(Error::InvalidArgument(format!(
                "a layer of {w} units is wider than the {max} that wgrad supports: use narrower layers"
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "weight decay must be a finite number ≥ 0, got {}",
                self.weight_decay
            )));
        }
        Ok(())
    }

    /// Layer widths from input to output: [input, hidden…, output].
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.input];
        w.extend(&self.hidden);
        w.push(self.output);
        w
    }

    /// Number of affine layers.
    pub fn depth(&self) -> usize {
        self.hidden.len() + 1
    }

    pub fn layout(&self) -> ParamLayout {
        let widths = self.widths();
        let mut tensors = Vec::new();
        let mut offset = 0;
        for l in 0..self.depth() {
            let (fan_in, fan_out) = (widths[l], widths[l + 1]);
            for (name, shape) in [
                (format!("W{}", l + 1), vec![fan_in, fan_out]),
                (format!("b{}", l + 1), vec![fan_out]),
            ] {
                let numel: usize = shape.iter().product();
                tensors.push(TensorInfo {
                    name,
                    shape,
                    offset,
                    numel,
                });
                offset += numel;
            }
        }
        ParamLayout {
            tensors,
            total: offset,
        }
    }
}

/// One named tensor inside the flat parameter arena (row-major).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub numel: usize,
}

impl TensorInfo {
    /// Weight matrices get weight decay; biases do not.
    pub fn is_weight(&self) -> bool {
        self.name.starts_with('W')
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

/// Draws initial parameters (f64, so both precisions start from the same values) from a seeded,
/// platform-independent ChaCha stream: W ~ N(0, std²), b = 0.
pub fn init_params(spec: &NetSpec, init: Init, seed: u64) -> Vec<f64> {
    use rand::SeedableRng;
    let layout = spec.layout();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut params = vec![0.0; layout.total];
    for t in layout.tensors.iter().filter(|t| t.is_weight()) {
        let std = init.std_for(t.shape[0]);
        for v in &mut params[t.offset..t.offset + t.numel] {
            *v = std * standard_normal(&mut rng);
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
