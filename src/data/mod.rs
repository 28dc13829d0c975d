//! MNIST in IDX format (being written).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("placeholder")]
    Placeholder,
}
