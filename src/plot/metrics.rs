//! The trainer's metrics files, JSON Lines or CSV, read into typed records.
//!
//! Both formats name the same fields, so a run can be kept in whichever a spreadsheet or `jq`
//! prefers. Fields nobody knows are refused rather than skipped: a renamed column
//! (`valid_loss` for `val_loss`) would otherwise drop a curve without a word.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::train::{RecordKind, CSV_COLUMNS as COLUMNS};

/// One line of a metrics file as read for plotting. The trainer writes
/// [`crate::train::MetricsRecord`]; here every figure is optional, so that a file cut short, or
/// one a user wrote by hand with fewer columns, still plots what it has.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsRecord {
    pub kind: RecordKind,
    pub epoch: u64,
    pub step: u64,
    pub lr: Option<f64>,
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub seconds: Option<f64>,
    pub samples_per_second: Option<f64>,
}

/// The columns a record cannot do without: which record, and where it sits on either x axis.
const REQUIRED: [&str; 3] = ["kind", "epoch", "step"];

const EXAMPLE: &str =
    r#"{"kind":"epoch","epoch":1,"step":80,"train_loss":0.41,"train_accuracy":0.88}"#;

fn known_columns() -> String {
    COLUMNS.join(", ")
}

/// Reads a metrics file: `.csv` as CSV with a header row, `.jsonl`, `.ndjson` or `.json` as JSON
/// Lines. Errors name the file, the line and the fix.
///
/// An unterminated last JSON line that does not parse is skipped, not refused: it is the record
/// a running trainer is writing, and plotting a run in progress is the common case.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let csv = match ext.as_deref() {
        Some("csv") => true,
        Some("jsonl" | "ndjson" | "json") => false,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{}: unknown metrics format: name the file .jsonl (JSON Lines, as the trainer \
                 writes) or .csv (a header row of {})",
                path.display(),
                known_columns()
            )))
        }
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!(
                "reading metrics file {} (check the path; `wgrad plot` takes the files the \
                 trainer wrote)",
                path.display()
            ),
            e,
        )
    })?;
    let records = if csv {
        parse_csv(path, &text)?
    } else {
        parse_jsonl(path, &text)?
    };
    if records.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} holds no records: it should have one line per epoch or step, such as {EXAMPLE}; \
             was the run started, or is this the wrong file?",
            path.display()
        )));
    }
    Ok(records)
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<MetricsRecord>> {
    let mut records = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<MetricsRecord>(line) {
            Ok(r) => records.push(r),
            // The last line with no newline after it: a record still being written.
            Err(_) if i + 1 == lines.len() && !records.is_empty() => {}
            Err(e) => {
                let problem = describe_json_error(&e);
                // serde lists the fields itself when one is unknown.
                let fields = if problem.contains("expected one of") {
                    String::new()
                } else {
                    format!(" (fields: {})", known_columns())
                };
                return Err(Error::InvalidArgument(format!(
                    "{} line {}: {problem}: each line must be one JSON object with at least \
                     kind, epoch and step, such as {EXAMPLE}{fields}; fix or delete the line",
                    path.display(),
                    i + 1,
                )));
            }
        }
    }
    Ok(records)
}

/// serde_json's message with its own position ("at line 1 column 7") replaced by the column
/// alone: the line it counts is always 1, since each line is parsed on its own.
fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => &message,
    };
    let what = if e.is_syntax() || e.is_eof() {
        "bad JSON"
    } else {
        "not a metrics record"
    };
    format!("{what} at column {} ({message})", e.column())
}

fn parse_csv(path: &Path, text: &str) -> Result<Vec<MetricsRecord>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<String> = split_csv(header).map(|c| c.to_string()).collect();
    let unknown: Vec<&str> = (columns.iter())
        .map(String::as_str)
        .filter(|c| c.is_empty() || !COLUMNS.contains(c))
        .collect();
    let missing: Vec<&str> = (REQUIRED.iter().copied())
        .filter(|r| !columns.iter().any(|c| c == r))
        .collect();
    if !unknown.is_empty() || !missing.is_empty() {
        let mut problems = Vec::new();
        if !unknown.is_empty() {
            problems.push(format!("unknown columns {}", quoted(&unknown)));
        }
        if !missing.is_empty() {
            problems.push(format!("missing columns {}", quoted(&missing)));
        }
        return Err(Error::InvalidArgument(format!(
            "{} line 1: the header has {}: a metrics CSV's header names its columns from {} \
             (kind, epoch and step required); rename or drop the others",
            path.display(),
            problems.join(" and "),
            known_columns()
        )));
    }
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(Error::InvalidArgument(format!(
                "{} line 1: column '{c}' appears twice in the header; keep one",
                path.display()
            )));
        }
    }
    let mut records = Vec::new();
    for (i, line) in lines {
        let cells: Vec<&str> = split_csv(line).collect();
        let at = |message: String| {
            Error::InvalidArgument(format!("{} line {}: {message}", path.display(), i + 1))
        };
        if cells.len() != columns.len() {
            return Err(at(format!(
                "{} cells for the header's {} columns; each row needs one cell per column \
                 (leave a cell empty for a missing value)",
                cells.len(),
                columns.len()
            )));
        }
        let mut record = MetricsRecord::default();
        for (column, cell) in columns.iter().zip(cells) {
            set_field(&mut record, column, cell).map_err(|why| {
                at(format!(
                    "column {column}: {why}; fix the cell (empty means missing)"
                ))
            })?;
        }
        records.push(record);
    }
    Ok(records)
}

fn quoted(names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    names.join(", ")
}

/// Cells of one CSV line. Values here are numbers and the words `epoch`/`step`, so quoting
/// only ever wraps a whole cell; commas inside quotes are not supported.
fn split_csv(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|c| {
        let c = c.trim();
        c.strip_prefix('"')
            .and_then(|c| c.strip_suffix('"'))
            .unwrap_or(c)
    })
}

fn set_field(
    record: &mut MetricsRecord,
    column: &str,
    cell: &str,
) -> std::result::Result<(), String> {
    let required = REQUIRED.contains(&column);
    if cell.is_empty() {
        return if required {
            Err("empty, but every row needs kind, epoch and step".into())
        } else {
            Ok(())
        };
    }
    let count = || {
        cell.parse::<u64>()
            .map_err(|_| format!("'{cell}' is not a whole number ≥ 0"))
    };
    let number = || {
        cell.parse::<f64>()
            .map(Some)
            .map_err(|_| format!("'{cell}' is not a number"))
    };
    match column {
        "kind" => {
            record.kind = match cell {
                "epoch" => RecordKind::Epoch,
                "step" => RecordKind::Step,
                _ => return Err(format!("'{cell}' is neither epoch nor step")),
            }
        }
        "epoch" => record.epoch = count()?,
        "step" => record.step = count()?,
        "lr" => record.lr = number()?,
        "train_loss" => record.train_loss = number()?,
        "train_accuracy" => record.train_accuracy = number()?,
        "val_loss" => record.val_loss = number()?,
        "val_accuracy" => record.val_accuracy = number()?,
        "test_loss" => record.test_loss = number()?,
        "test_accuracy" => record.test_accuracy = number()?,
        "seconds" => record.seconds = number()?,
        "samples_per_second" => record.samples_per_second = number()?,
        _ => unreachable!("the header was checked against COLUMNS"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn jsonl_and_csv_read_the_same_records() {
        let (_d, jsonl) = write(
            "a.jsonl",
            "{\"kind\":\"step\",\"epoch\":1,\"step\":40,\"train_loss\":0.9}\n\
             {\"kind\":\"epoch\",\"epoch\":1,\"step\":80,\"lr\":0.1,\"train_loss\":0.5,\
             \"train_accuracy\":0.8,\"val_loss\":null,\"test_accuracy\":0.75}\n",
        );
        let (_e, csv) = write(
            "a.csv",
            "kind,epoch,step,lr,train_loss,train_accuracy,val_loss,test_accuracy\n\
             step,1,40,,0.9,,,\r\n\
             \"epoch\",1,80,0.1,0.5,0.8,,0.75\n",
        );
        let a = read_metrics(&jsonl).unwrap();
        assert_eq!(a, read_metrics(&csv).unwrap());
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].kind, RecordKind::Step);
        assert_eq!(a[1].val_loss, None);
        assert_eq!(a[1].test_accuracy, Some(0.75));
    }

    #[test]
    fn a_record_still_being_written_is_skipped_but_a_bad_line_is_not() {
        let good = "{\"kind\":\"epoch\",\"epoch\":1,\"step\":80,\"train_loss\":0.5}\n";
        let (_d, partial) = write("p.jsonl", &format!("{good}{{\"kind\":\"ep"));
        assert_eq!(read_metrics(&partial).unwrap().len(), 1);
        let (_e, bad) = write("b.jsonl", &format!("{good}{{\"kind\":\"ep\n"));
        let e = read_metrics(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bad JSON"), "{e}");
    }

    #[test]
    fn unknown_and_missing_columns_are_named() {
        let (_d, csv) = write("c.csv", "kind,step,valid_loss\nepoch,80,0.5\n");
        let e = read_metrics(&csv).unwrap_err().to_string();
        assert!(e.contains("'valid_loss'") && e.contains("'epoch'"), "{e}");
        let (_e, json) = write(
            "c.jsonl",
            "{\"kind\":\"epoch\",\"epoch\":1,\"step\":2,\"x\":1}\n",
        );
        let e = read_metrics(&json).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("unknown field `x`"),
            "{e}"
        );
    }
}
