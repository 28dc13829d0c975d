//! A trained net judged on a data set: loss and accuracy as training reports them (the same
//! GPU evaluation), and from each image's predicted class the confusion matrix and each class's
//! precision and recall.

use serde::Serialize;

use crate::data::Dataset;
use crate::error::Result;
use crate::gpu::{GpuContext, Precision};
use crate::nn::{NamedTensor, NetSpec};
use crate::train::with_evaluator;

/// One class's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassFigures {
    pub class: usize,
    /// Of the images predicted as this class, the share that are (None: none was predicted).
    pub precision: Option<f64>,
    /// Of the images of this class, the share predicted as it (None: the set has none).
    pub recall: Option<f64>,
    /// Images of this class in the set.
    pub support: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub classes: Vec<ClassFigures>,
    /// `confusion[true class][predicted class]`: image counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `net` (its spec, parameters and BatchNorm statistics) on `data`.
pub fn evaluate(
    ctx: &GpuContext,
    net: (&NetSpec, &[f64], &[NamedTensor]),
    data: &Dataset,
    precision: Precision,
) -> Result<EvalReport> {
    net.0.check_data(data)?;
    let classes = net.0.output;
    let (figures, scores) = with_evaluator(ctx, net, data, precision, |e, d, set| {
        Ok((e.run(ctx, d, set)?, e.scores(ctx, d, set, classes)?))
    })?;
    let predicted = scores.chunks(classes).map(argmax);
    let mut confusion = vec![vec![0u64; classes]; classes];
    for (&label, guess) in data.labels.iter().zip(predicted) {
        confusion[usize::from(label)][guess] += 1;
    }
    Ok(EvalReport {
        images: data.len(),
        loss: figures.loss,
        accuracy: figures.accuracy,
        classes: class_figures(&confusion),
        confusion,
    })
}

/// The first index of the largest score, as the GPU's accuracy count picks it.
fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

fn class_figures(confusion: &[Vec<u64>]) -> Vec<ClassFigures> {
    let share = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
    (0..confusion.len())
        .map(|c| {
            let right = confusion[c][c];
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            ClassFigures {
                class: c,
                precision: share(right, predicted),
                recall: share(right, support),
                support,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_reads_columns_and_recall_rows() {
        // True 0: 3 right, 1 taken for 1. True 1: 2 taken for 0, 4 right. Nothing is class 2.
        let confusion = vec![vec![3, 1, 0], vec![2, 4, 0], vec![0, 0, 0]];
        let figures = class_figures(&confusion);
        assert_eq!(figures[0].precision, Some(3.0 / 5.0));
        assert_eq!(figures[0].recall, Some(3.0 / 4.0));
        assert_eq!(figures[1].precision, Some(4.0 / 5.0));
        assert_eq!(figures[1].recall, Some(4.0 / 6.0));
        assert_eq!((figures[2].precision, figures[2].recall), (None, None));
        assert_eq!(figures[1].support, 6);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_scores() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }
}
