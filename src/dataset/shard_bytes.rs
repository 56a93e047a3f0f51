//! A shard read by byte ranges through a [`Location`] (a local folder or an object
//! store): its footer, and parquet's async reader over it, so code that looks into
//! shards has one path whichever side of the network the dataset is on.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::store::{Location, StoreError};

/// The first guess at a footer's size: one request for most shards.
const FOOTER_GUESS: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not a Parquet file, or cut short (the reason, without the file's name).
    #[error("not a readable Parquet file (truncated?): {0}")]
    Unreadable(String),
}

/// Reads the footer of `name` (`size` bytes long): a guessed suffix, then exactly
/// the rest if the footer is larger.
pub async fn read_footer(
    location: &Location,
    name: &str,
    size: u64,
) -> Result<ArrowReaderMetadata, FooterError> {
    let unreadable = |e: &dyn std::fmt::Display| FooterError::Unreadable(e.to_string());
    let mut want = FOOTER_GUESS.min(size);
    loop {
        let tail = location.read_tail(name, size, want).await?;
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&tail, size) {
            Ok(()) => {
                let metadata = reader.finish().map_err(|e| unreadable(&e))?;
                return ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
                    .map_err(|e| unreadable(&e));
            }
            Err(ParquetError::NeedMoreData(needed)) if needed as u64 > want => {
                want = (needed as u64).min(size);
            }
            Err(e) => return Err(unreadable(&e)),
        }
    }
}

/// One shard as parquet's async reader sees it.
#[derive(Clone, Debug)]
pub struct ShardBytes {
    pub location: Location,
    pub name: String,
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ShardBytes {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let mut pieces = self
                .location
                .read_ranges(&self.name, std::slice::from_ref(&range))
                .await
                .map_err(external)?;
            Ok(pieces.pop().unwrap_or_default())
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.location
                .read_ranges(&self.name, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.location.size(&self.name).await.map_err(external)?;
            let metadata = read_footer(&self.location, &self.name, size)
                .await
                .map_err(external)?;
            Ok(metadata.metadata().clone())
        }
        .boxed()
    }
}
