//! The metrics file a run writes as it goes (`--metrics`): a record per epoch and, with
//! `--log-every`, one per that many steps, as JSON Lines or CSV by the file's extension. Each
//! record is flushed as it is written, so that `tail -f`, or a plot of a run still training,
//! sees every record so far.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EpochReport;
use crate::error::{Error, Result};

/// What a record sums up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    #[default]
    Epoch,
    Step,
}

/// One line of a metrics file. Figures a record does not have (a step record's test figures)
/// are left out of JSON and empty in CSV.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    pub kind: RecordKind,
    pub epoch: usize,
    /// Steps the run had taken.
    pub step: u64,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Mean step loss over the epoch (epoch records) or the steps since the last record.
    pub train_loss: f64,
    /// Over the training set in inference mode (epoch records), or the training batches of the
    /// steps since the last record, as they were trained on (step records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// Seconds the epoch took (evaluation included), or since the last step record.
    pub seconds: f64,
    pub samples_per_second: f64,
}

impl From<&EpochReport> for MetricsRecord {
    fn from(e: &EpochReport) -> Self {
        MetricsRecord {
            kind: RecordKind::Epoch,
            epoch: e.epoch,
            step: e.step,
            lr: e.lr,
            train_loss: e.train_loss,
            train_accuracy: Some(e.train_accuracy),
            val_loss: e.val_loss,
            val_accuracy: e.val_accuracy,
            test_loss: e.test_loss,
            test_accuracy: e.test_accuracy,
            seconds: e.seconds,
            samples_per_second: e.samples_per_second,
        }
    }
}

/// The CSV columns, in order (the JSON keys are the same).
pub const CSV_COLUMNS: [&str; 12] = [
    "kind",
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "seconds",
    "samples_per_second",
];

impl MetricsRecord {
    fn csv_row(&self) -> String {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        let kind = match self.kind {
            RecordKind::Epoch => "epoch",
            RecordKind::Step => "step",
        };
        [
            kind.to_string(),
            self.epoch.to_string(),
            self.step.to_string(),
            self.lr.to_string(),
            self.train_loss.to_string(),
            opt(self.train_accuracy),
            opt(self.val_loss),
            opt(self.val_accuracy),
            opt(self.test_loss),
            opt(self.test_accuracy),
            self.seconds.to_string(),
            self.samples_per_second.to_string(),
        ]
        .join(",")
    }
}

/// A metrics file being written.
pub struct MetricsFile {
    path: PathBuf,
    out: BufWriter<File>,
    csv: bool,
}

impl MetricsFile {
    /// Creates `path` (`.jsonl` or `.csv`), or appends to it when `append` is set (a resumed
    /// run continues its own file; a CSV header is written only into an empty file).
    pub fn open(path: &Path, append: bool) -> Result<MetricsFile> {
        let csv = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => true,
            Some("jsonl") => false,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "--metrics {}: name the file .jsonl (JSON Lines) or .csv",
                    path.display()
                )))
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| Error::io(format!("opening the metrics file {}", path.display()), e))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut metrics = MetricsFile {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            csv,
        };
        if csv && empty {
            metrics.line(&CSV_COLUMNS.join(","))?;
        }
        Ok(metrics)
    }

    /// Writes a record and flushes it to the file.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let line = if self.csv {
            record.csv_row()
        } else {
            serde_json::to_string(record).expect("a record serialises")
        };
        self.line(&line)
    }

    fn line(&mut self, line: &str) -> Result<()> {
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| {
                Error::io(
                    format!("writing the metrics file {}", self.path.display()),
                    e,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MetricsRecord {
        MetricsRecord {
            kind: RecordKind::Step,
            epoch: 2,
            step: 150,
            lr: 0.05,
            train_loss: 0.25,
            train_accuracy: Some(0.875),
            seconds: 1.5,
            samples_per_second: 4000.0,
            ..Default::default()
        }
    }

    #[test]
    fn json_lines_leave_out_what_a_record_lacks_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut file = MetricsFile::open(&path, false).unwrap();
        file.write(&record()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("test_loss"), "{text}");
        let back: MetricsRecord = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(back, record());
    }

    #[test]
    fn csv_has_one_header_even_when_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        MetricsFile::open(&path, false)
            .unwrap()
            .write(&record())
            .unwrap();
        MetricsFile::open(&path, true)
            .unwrap()
            .write(&record())
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], CSV_COLUMNS.join(","));
        assert_eq!(lines[1], "step,2,150,0.05,0.25,0.875,,,,,1.5,4000");
        assert_eq!(lines[1], lines[2]);
    }

    #[test]
    fn other_extensions_are_refused() {
        let err = MetricsFile::open(Path::new("metrics.txt"), false)
            .err()
            .unwrap();
        assert!(err.to_string().contains(".jsonl"), "{err}");
    }
}
