//! One error type for the library; each variant says what went wrong and how to fix it.

use std::path::PathBuf;

use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Data(#[from] DataError),

    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),

    #[error("adapter '{adapter}' lacks {feature}: {hint}")]
    MissingFeature {
        adapter: String,
        feature: &'static str,
        hint: String,
    },

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error(
        "training diverged: the loss became {value} at step {step}; lower the learning rate (--lr) or use another optimizer"
    )]
    Diverged { step: u64, value: String },

    /// A picture that could not be drawn (`wgrad plot`, `gradcheck --plot`).
    #[error("{0}")]
    Plot(String),

    /// A file `wgrad predict` cannot take as a picture.
    #[error("{file}: {message}")]
    Picture { file: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
