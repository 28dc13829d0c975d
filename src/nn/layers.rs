//! Layer lists: what `--model` and `--layers` describe, parsed, and resolved into shapes and
//! named parameter tensors.
//!
//! Spec strings are comma-separated layers:
//! `conv30x5` (30 filters of 5×5; `conv30x5s2p1`: stride 2, padding 1), `maxpool2` / `avgpool2`
//! (window 2, stride = window; `maxpool3s2`: stride 2), `affine100`, `relu`, `sigmoid`, `bn`
//! (BatchNorm over the channels or features of the layer before), `dropout0.5`.
//! The book's SimpleConvNet is `conv30x5,relu,maxpool2,affine100,relu,affine10`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::nn::{Activation, NetSpec, ParamLayout, TensorInfo};

/// One layer as a user describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LayerSpec {
    Conv {
        filters: usize,
        size: usize,
        stride: usize,
        pad: usize,
    },
    MaxPool {
        size: usize,
        stride: usize,
    },
    AvgPool {
        size: usize,
        stride: usize,
    },
    Affine {
        units: usize,
    },
    Relu,
    Sigmoid,
    BatchNorm,
    Dropout {
        p: f64,
    },
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerSpec::Conv {
                filters,
                size,
                stride,
                pad,
            } => {
                write!(f, "conv{filters}x{size}")?;
                if *stride != 1 {
                    write!(f, "s{stride}")?;
                }
                if *pad != 0 {
                    write!(f, "p{pad}")?;
                }
                Ok(())
            }
            LayerSpec::MaxPool { size, stride } | LayerSpec::AvgPool { size, stride } => {
                let name = if matches!(self, LayerSpec::MaxPool { .. }) {
                    "maxpool"
                } else {
                    "avgpool"
                };
                write!(f, "{name}{size}")?;
                if stride != size {
                    write!(f, "s{stride}")?;
                }
                Ok(())
            }
            LayerSpec::Affine { units } => write!(f, "affine{units}"),
            LayerSpec::Relu => f.write_str("relu"),
            LayerSpec::Sigmoid => f.write_str("sigmoid"),
            LayerSpec::BatchNorm => f.write_str("bn"),
            LayerSpec::Dropout { p } => write!(f, "dropout{p}"),
        }
    }
}

/// Whether `p` is a dropout probability wgrad takes: [0, 1), as PyTorch (p = 1 would zero every
/// activation, and its 1/(1 − p) scale is infinite). NaN is outside.
pub fn valid_dropout(p: f64) -> bool {
    (0.0..1.0).contains(&p)
}

/// The book's SimpleConvNet: conv 30×5×5, ReLU, max-pool 2×2, affine 100, ReLU, affine 10.
pub const SIMPLE_CONV: &str = "conv30x5,relu,maxpool2,affine100,relu,affine10";

/// Named models for `--model`.
pub fn named_model(name: &str) -> Result<&'static str, Error> {
    match name {
        "simple-conv" | "simpleconvnet" => Ok(SIMPLE_CONV),
        other => Err(Error::InvalidArgument(format!(
            "unknown model '{other}': use 'mlp' (the default, shaped by --hidden) or 'simple-conv', or give --layers"
        ))),
    }
}

/// Parses a spec string such as `conv30x5,relu,maxpool2,affine100,relu,affine10`.
pub fn parse_layers(spec: &str) -> Result<Vec<LayerSpec>, Error> {
    spec.split(',')
        .map(|item| parse_layer(item.trim()))
        .collect()
}

fn parse_layer(item: &str) -> Result<LayerSpec, Error> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "bad layer '{item}' in the layer spec: {why} (layers: conv<F>x<K>[s<S>][p<P>], maxpool<K>[s<S>], avgpool<K>[s<S>], affine<N>, relu, sigmoid, bn, dropout<P>)"
        ))
    };
    let number = |text: &str| -> Result<usize, Error> {
        match text.parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(bad(&format!("'{text}' is not a positive whole number"))),
        }
    };
    // "5s2p1" → (5, stride 2, pad 1), stride defaulting to `default_stride`.
    let with_options =
        |text: &str, default_stride: Option<usize>| -> Result<(usize, usize, usize), Error> {
            let (main, pad) = match text.split_once('p') {
                Some((m, p)) => (
                    m,
                    p.parse::<usize>()
                        .map_err(|_| bad("padding must be a whole number"))?,
                ),
                None => (text, 0),
            };
            let (size, stride) = match main.split_once('s') {
                Some((k, s)) => (number(k)?, number(s)?),
                None => {
                    let k = number(main)?;
                    (k, default_stride.unwrap_or(k))
                }
            };
            Ok((size, stride, pad))
        };
    let lower = item.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("conv") {
        let (filters, kernel) = rest
            .split_once('x')
            .ok_or_else(|| bad("write conv<filters>x<size>, e.g. conv30x5"))?;
        let (size, stride, pad) = with_options(kernel, Some(1))?;
        return Ok(LayerSpec::Conv {
            filters: number(filters)?,
            size,
            stride,
            pad,
        });
    }
    for (prefix, max) in [("maxpool", true), ("avgpool", false)] {
        if let Some(rest) = lower.strip_prefix(prefix) {
            let (size, stride, pad) = with_options(rest, None)?;
            if pad != 0 {
                return Err(bad("pooling takes no padding"));
            }
            return Ok(if max {
                LayerSpec::MaxPool { size, stride }
            } else {
                LayerSpec::AvgPool { size, stride }
            });
        }
    }
    if let Some(rest) = lower.strip_prefix("affine") {
        return Ok(LayerSpec::Affine {
            units: number(rest)?,
        });
    }
    if let Some(rest) = lower.strip_prefix("dropout") {
        return match rest.parse::<f64>() {
            Ok(p) if valid_dropout(p) => Ok(LayerSpec::Dropout { p }),
            _ => Err(bad(
                "dropout takes a probability in [0, 1), e.g. dropout0.5",
            )),
        };
    }
    match lower.as_str() {
        "relu" => Ok(LayerSpec::Relu),
        "sigmoid" => Ok(LayerSpec::Sigmoid),
        "bn" | "batchnorm" => Ok(LayerSpec::BatchNorm),
        "" => Err(bad("empty layer")),
        _ => Err(bad("unknown layer")),
    }
}

/// A layer with its shapes resolved. `input` is the per-sample shape (C, H, W) it reads
/// (an affine layer's input is flattened); parameter tensors are indices into the layout.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// x: [N, d_in] · W [d_in, d_out] + b
    Affine {
        d_in: usize,
        d_out: usize,
        w: usize,
        b: usize,
    },
    /// x: [N, C, H, W] ⊛ W [F, C, K, K] + b [F] -> [N, F, OH, OW]
    Conv {
        c: usize,
        h: usize,
        w: usize,
        f: usize,
        k: usize,
        stride: usize,
        pad: usize,
        oh: usize,
        ow: usize,
        wt: usize,
        b: usize,
    },
    Act(Activation),
    Pool {
        max: bool,
        c: usize,
        h: usize,
        w: usize,
        size: usize,
        stride: usize,
        oh: usize,
        ow: usize,
    },
    /// Per channel c over (N, S): S = H·W after a convolution, 1 after an affine layer.
    BatchNorm {
        c: usize,
        s: usize,
        gamma: usize,
        beta: usize,
        index: usize,
    },
    Dropout {
        p: f64,
        index: usize,
    },
}

/// Resolves a spec into layers (with each layer's output size per sample) and the parameter
/// layout, or says which layer does not fit and why.
pub fn resolve(spec: &NetSpec) -> Result<(Vec<Layer>, ParamLayout), Error> {
    let specs = spec.layer_specs();
    let mut shape = spec.image.unwrap_or([1, 1, spec.input]);
    if shape.iter().product::<usize>() != spec.input {
        return Err(Error::InvalidArgument(format!(
            "the image shape {shape:?} does not hold the net's {} inputs",
            spec.input
        )));
    }
    let mut tensors: Vec<TensorInfo> = Vec::new();
    let mut offset = 0;
    let mut add = |name: String, shape: Vec<usize>, fan_in: usize| {
        let numel: usize = shape.iter().product();
        tensors.push(TensorInfo {
            name,
            shape,
            offset,
            numel,
            fan_in,
        });
        offset += numel;
        tensors.len() - 1
    };
    let mut layers = Vec::new();
    let mut param_layers = 0;
    let (mut norms, mut dropouts) = (0, 0);
    for (i, layer) in specs.iter().enumerate() {
        let at = |why: String| Error::InvalidArgument(format!("layer {} ({layer}): {why}", i + 1));
        let [c, h, w] = shape;
        let resolved = match *layer {
            LayerSpec::Affine { units } => {
                param_layers += 1;
                let d_in = c * h * w;
                let wt = add(format!("W{param_layers}"), vec![d_in, units], d_in);
                let b = add(format!("b{param_layers}"), vec![units], d_in);
                shape = [units, 1, 1];
                Layer::Affine {
                    d_in,
                    d_out: units,
                    w: wt,
                    b,
                }
            }
            LayerSpec::Conv {
                filters,
                size,
                stride,
                pad,
            } => {
                if size > h + 2 * pad || size > w + 2 * pad {
                    return Err(at(format!(
                        "a {size}×{size} kernel is larger than its {h}×{w} input (padding {pad})"
                    )));
                }
                param_layers += 1;
                let (oh, ow) = (
                    (h + 2 * pad - size) / stride + 1,
                    (w + 2 * pad - size) / stride + 1,
                );
                let wt = add(
                    format!("W{param_layers}"),
                    vec![filters, c, size, size],
                    c * size * size,
                );
                let b = add(format!("b{param_layers}"), vec![filters], c * size * size);
                shape = [filters, oh, ow];
                Layer::Conv {
                    c,
                    h,
                    w,
                    f: filters,
                    k: size,
                    stride,
                    pad,
                    oh,
                    ow,
                    wt,
                    b,
                }
            }
            LayerSpec::MaxPool { size, stride } | LayerSpec::AvgPool { size, stride } => {
                if size > h || size > w {
                    return Err(at(format!(
                        "a {size}×{size} window is larger than its {h}×{w} input"
                    )));
                }
                let (oh, ow) = ((h - size) / stride + 1, (w - size) / stride + 1);
                shape = [c, oh, ow];
                Layer::Pool {
                    max: matches!(layer, LayerSpec::MaxPool { .. }),
                    c,
                    h,
                    w,
                    size,
                    stride,
                    oh,
                    ow,
                }
            }
            LayerSpec::Relu => Layer::Act(Activation::Relu),
            LayerSpec::Sigmoid => Layer::Act(Activation::Sigmoid),
            LayerSpec::BatchNorm => {
                // After an affine layer the channels are its units (S = 1).
                let k = param_layers;
                let gamma = add(format!("gamma{k}"), vec![c], 0);
                let beta = add(format!("beta{k}"), vec![c], 0);
                norms += 1;
                Layer::BatchNorm {
                    c,
                    s: h * w,
                    gamma,
                    beta,
                    index: norms - 1,
                }
            }
            LayerSpec::Dropout { p } => {
                if !valid_dropout(p) {
                    return Err(at(format!("dropout must lie in [0, 1), got {p}")));
                }
                dropouts += 1;
                Layer::Dropout {
                    p,
                    index: dropouts - 1,
                }
            }
        };
        layers.push(resolved);
    }
    match layers.last() {
        Some(Layer::Affine { d_out, .. }) if *d_out == spec.output => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "the net must end with an affine layer of {} units (the class scores)",
                spec.output
            )))
        }
    }
    Ok((
        layers,
        ParamLayout {
            tensors,
            total: offset,
        },
    ))
}

/// Output elements per sample of each layer, in order.
pub fn output_sizes(layers: &[Layer]) -> Vec<usize> {
    let mut size = 0;
    layers
        .iter()
        .map(|l| {
            size = match *l {
                Layer::Affine { d_out, .. } => d_out,
                Layer::Conv { f, oh, ow, .. } => f * oh * ow,
                Layer::Pool { c, oh, ow, .. } => c * oh * ow,
                Layer::BatchNorm { c, s, .. } => c * s,
                Layer::Act(_) | Layer::Dropout { .. } => size,
            };
            size
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_conv_resolves_to_the_book_shapes() {
        let spec = NetSpec::sequential([1, 28, 28], parse_layers(SIMPLE_CONV).unwrap()).unwrap();
        let (layers, layout) = spec.resolve().unwrap();
        assert_eq!(
            output_sizes(&layers),
            vec![30 * 24 * 24, 30 * 24 * 24, 30 * 12 * 12, 100, 100, 10]
        );
        let names: Vec<_> = layout
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("W1", vec![30, 1, 5, 5]),
                ("b1", vec![30]),
                ("W2", vec![4320, 100]),
                ("b2", vec![100]),
                ("W3", vec![100, 10]),
                ("b3", vec![10])
            ]
        );
    }

    #[test]
    fn spec_strings_round_trip() {
        let text =
            "conv8x3s2p1,bn,relu,maxpool3s2,avgpool2,affine20,bn,sigmoid,dropout0.25,affine10";
        let layers = parse_layers(text).unwrap();
        let back: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        assert_eq!(back.join(","), text);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| parse_layers(s).unwrap_err().to_string();
        assert!(err("conv30x5,frobnicate").contains("unknown layer"));
        assert!(err("dropout1.5").contains("[0, 1)"));
        assert!(err("convx5").contains("positive whole number"));
        let fit = |s: &str, image| {
            NetSpec::sequential(image, parse_layers(s).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(fit("conv4x7,affine10", [1, 5, 5]).contains("larger than its 5×5 input"));
        assert!(fit("maxpool6,affine10", [1, 5, 5]).contains("window is larger"));
        assert!(fit("conv4x3,relu", [1, 5, 5]).contains("end with an affine layer"));
    }
}
