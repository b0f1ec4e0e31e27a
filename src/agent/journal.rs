//! Placeholder journal (the real one lands from the journal branch): same API, no durability.

use std::marker::PhantomData;
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct JournalLimits;

#[derive(Debug, Default)]
pub struct RecoveryReport;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Journal<T> {
    _t: PhantomData<T>,
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Journal<T> {
    pub fn open(_dir: &Path, _limits: JournalLimits) -> Result<(Self, Vec<T>, RecoveryReport), JournalError> {
        Ok((Self { _t: PhantomData }, Vec::new(), RecoveryReport))
    }
    pub fn append(&mut self, _rec: &T) -> Result<(), JournalError> {
        Ok(())
    }
    pub fn compact(&mut self, _live: &[T]) -> Result<(), JournalError> {
        Ok(())
    }
    pub fn size_bytes(&self) -> u64 {
        0
    }
}
