//! Source stage: the split's shards, checked up front, and reads of one row
//! group at a time with column projection.
//!
//! A read maps the projected columns' byte range of the shard (on tokio's
//! blocking pool, page tables filled in the same call) and decodes it in place:
//! the shards are uncompressed and PLAIN-encoded, so each row's pixels are a
//! slice of the page cache itself, and stays one until augmentation reads it (a
//! positioned read into a buffer cost a copy of every row in the kernel, and
//! the shuffle buffer another: together ~35 % of the stream's CPU). The mapping
//! is dropped with the row group's last row, so memory stays bounded by the row
//! groups the shuffle holds and the batches in flight.
//!
//! Shards are immutable once written (ingest renames finished files into
//! place); a shard truncated *while* it is being streamed would fault.
//!
//! What a shard holds is checked, so bad data stops the stream with the shard,
//! row group and row named instead of reaching the network:
//! - labels: every row group's label range (footer statistics, else the labels
//!   themselves) when the split is opened, so training refuses the dataset before
//!   it creates a run, and again on every read;
//! - pixels: each row carries its CRC-32 from the footer (see
//!   [`crate::dataset::checksum`]) to augmentation, which feeds the CRC from its
//!   own read of the row, the first time this process uses the row (+4–5 % of a
//!   one-epoch stream); shards are immutable, so checking once keeps it off every
//!   later epoch.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::column::reader::{get_column_reader, get_typed_column_reader};
use parquet::data_type::{
    ByteArrayType, DataType, FixedLenByteArray, FixedLenByteArrayType, Int32Type,
};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::file::statistics::Statistics;

use super::plan::RowGroupRef;
use super::{LabelError, StreamError};
use crate::dataset::reader::{check_schema, shard_paths};
use crate::dataset::{Manifest, Split, checksum};

/// Shard columns, in file order (checked by [`ShardIndex::open`]).
const KEY: usize = 0;
const LABEL: usize = 1;
const PIXELS: usize = 2;

/// One shard: its file (kept open) and its footer, parsed once.
pub struct Shard {
    pub path: PathBuf,
    file: File,
    metadata: ArrowReaderMetadata,
    /// CRC-32 of each row's pixels; `None` for shards written before checksums
    /// existed.
    pixel_crcs: Option<Vec<u32>>,
    /// Index of each row group's first row within the shard.
    group_starts: Vec<usize>,
    /// Rows whose pixels matched their CRC in this process: the shard is
    /// immutable, so later epochs skip the CRC.
    verified: Vec<AtomicBool>,
}

/// Every shard of a split, validated (present, readable footer, right schema,
/// labels within the manifest's classes).
pub struct ShardIndex {
    pub shards: Vec<Shard>,
    pub image_size: usize,
    /// Labels must lie in `0..classes` (dataset.json's class list).
    pub classes: usize,
}

/// The columns of one row group that the stream needs; each row's pixels are a
/// slice of the mapped file itself.
pub struct RowGroupData {
    group: RowGroupRef,
    /// The group's first row within its shard.
    first_row: usize,
    labels: Vec<i32>,
    pixels: Vec<FixedLenByteArray>,
    keys: Option<Vec<String>>,
    /// The rows' recorded pixel CRCs (none for a shard without checksums).
    crcs: Option<Vec<u32>>,
    /// The mapped byte range the values point into.
    mapped: Bytes,
}

impl RowGroupData {
    /// The rows, each holding its pixels as a slice of the mapping (no copy;
    /// the mapping goes when the last row holding it is dropped).
    pub fn into_rows(self) -> Vec<Row> {
        let RowGroupData {
            group,
            first_row,
            labels,
            pixels,
            keys,
            crcs,
            mapped,
        } = self;
        let mut keys = keys.map(Vec::into_iter);
        let range = mapped.as_ptr_range();
        labels
            .into_iter()
            .zip(pixels)
            .enumerate()
            .map(|(i, (label, value))| {
                let data = value.data();
                let inside = range.contains(&data.as_ptr()) && data.as_ptr_range().end <= range.end;
                // Always inside for the plain, uncompressed pages ingest writes;
                // a shard written otherwise still works, at the cost of a copy.
                let pixels = if inside {
                    mapped.slice_ref(data)
                } else {
                    Bytes::copy_from_slice(data)
                };
                Row {
                    label,
                    key: keys.as_mut().and_then(Iterator::next),
                    pixels,
                    check: crcs.as_ref().map(|crcs| PixelCheck {
                        crc: crcs[i],
                        origin: RowOrigin {
                            shard: group.shard,
                            row_group: group.row_group,
                            row: first_row + i,
                        },
                    }),
                }
            })
            .collect()
    }
}

/// One row as the shuffle and augmentation see it.
pub struct Row {
    pub label: i32,
    pub key: Option<String>,
    /// S·S·3 bytes, HWC RGB.
    pub pixels: Bytes,
    /// What `pixels` must hash to (none for a shard without checksums).
    pub check: Option<PixelCheck>,
}

/// A row's recorded CRC and where the row lives, to name it if they disagree.
#[derive(Clone, Copy, Debug)]
pub struct PixelCheck {
    pub crc: u32,
    pub origin: RowOrigin,
}

#[derive(Clone, Copy, Debug)]
pub struct RowOrigin {
    pub shard: usize,
    pub row_group: usize,
    /// Row within the shard, from 0.
    pub row: usize,
}

impl Row {
    /// The CRC the pixels must match, or `None` when there is nothing to check: the shard
    /// has no checksums, or this process has already checked the row.
    pub fn pending_check(&self, index: &ShardIndex) -> Option<PixelCheck> {
        let check = self.check?;
        let verified = &index.shards[check.origin.shard].verified[check.origin.row];
        (!verified.load(Ordering::Relaxed)).then_some(check)
    }

    /// Records the CRC-32 `found` for the pixels against `check` (from `pending_check`):
    /// the row is then not checked again in this process, or it is named as corrupt.
    pub fn confirm(
        &self,
        index: &ShardIndex,
        check: PixelCheck,
        found: u32,
    ) -> Result<(), StreamError> {
        if found == check.crc {
            index.shards[check.origin.shard].verified[check.origin.row]
                .store(true, Ordering::Relaxed);
            return Ok(());
        }
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| index.key_of(check.origin));
        Err(StreamError::Corrupt(Box::new(checksum::CorruptRow {
            path: index.shards[check.origin.shard].path.display().to_string(),
            row: check.origin.row,
            row_group: check.origin.row_group,
            key,
            found,
            recorded: check.crc,
        })))
    }
}

/// Bytes `base..base + bytes.len()` of a file, addressed by file offset.
struct FileRange {
    base: u64,
    bytes: Bytes,
}

impl FileRange {
    fn local(&self, start: u64) -> parquet::errors::Result<usize> {
        start
            .checked_sub(self.base)
            .map(|at| at as usize)
            .filter(|&at| at <= self.bytes.len())
            .ok_or_else(|| {
                parquet::errors::ParquetError::EOF(format!(
                    "offset {start} is outside the bytes read"
                ))
            })
    }
}

impl Length for FileRange {
    fn len(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }
}

impl ChunkReader for FileRange {
    type T = <Bytes as ChunkReader>::T;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.bytes.get_read(self.local(start)? as u64)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.bytes.get_bytes(self.local(start)? as u64, length)
    }
}

fn shard_error(path: &Path, message: impl std::fmt::Display) -> StreamError {
    StreamError::Shard {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl ShardIndex {
    /// Opens every shard's footer and checks its schema; errors name the file.
    pub async fn open(
        dataset: &Path,
        split: Split,
        manifest: &Manifest,
    ) -> Result<Self, StreamError> {
        let info = manifest.split(split).ok_or_else(|| StreamError::NoSplit {
            dataset: dataset.display().to_string(),
            split: split.name(),
        })?;
        let mut shards = Vec::with_capacity(info.shards);
        for path in shard_paths(dataset, split, info.shards) {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| shard_error(&path, format!("cannot open: {e}")))?;
            let metadata = ArrowReaderMetadata::load_async(&mut file, ArrowReaderOptions::new())
                .await
                .map_err(|e| {
                    shard_error(
                        &path,
                        format!("not a readable Parquet file (truncated?): {e}"),
                    )
                })?;
            check_schema(&path, metadata.schema(), manifest.image_size).map_err(|e| {
                shard_error(
                    &path,
                    e.to_string()
                        .trim_start_matches(&format!("{}: ", path.display())),
                )
            })?;
            let rows = metadata.metadata().file_metadata().num_rows() as usize;
            let pixel_crcs = checksum::recorded(
                metadata.metadata().file_metadata().key_value_metadata(),
                rows,
            )
            .map_err(|e| shard_error(&path, e))?;
            let group_starts = metadata
                .metadata()
                .row_groups()
                .iter()
                .scan(0, |start, rg| {
                    let first = *start;
                    *start += rg.num_rows() as usize;
                    Some(first)
                })
                .collect();
            let file = file.into_std().await;
            shards.push(Shard {
                path,
                file,
                metadata,
                pixel_crcs,
                group_starts,
                verified: (0..rows).map(|_| AtomicBool::new(false)).collect(),
            });
        }
        let rows: usize = shards
            .iter()
            .map(|s| s.metadata.metadata().file_metadata().num_rows() as usize)
            .sum();
        if rows != info.rows {
            return Err(StreamError::RowCount {
                dataset: dataset.display().to_string(),
                split: split.name(),
                expected: info.rows,
                found: rows,
            });
        }
        let index = Self {
            shards,
            image_size: manifest.image_size,
            classes: manifest.num_classes(),
        };
        index.check_label_ranges()?;
        Ok(index)
    }

    /// Shards without pixel checksums (written before they existed): their
    /// corruption goes unnoticed.
    pub fn shards_without_checksums(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| s.pixel_crcs.is_none())
            .count()
    }

    /// Refuses any row group holding a label outside `0..classes`, from the
    /// label column's footer statistics (which ingest always writes), else by
    /// reading its labels (4 bytes a row).
    fn check_label_ranges(&self) -> Result<(), StreamError> {
        for (shard, s) in self.shards.iter().enumerate() {
            for (row_group, rg) in s.metadata.metadata().row_groups().iter().enumerate() {
                if let Some(Statistics::Int32(stats)) = rg.column(LABEL).statistics()
                    && let (Some(&min), Some(&max)) = (stats.min_opt(), stats.max_opt())
                    && self.label_fits(min)
                    && self.label_fits(max)
                {
                    continue;
                }
                let group = RowGroupRef {
                    shard,
                    row_group,
                    rows: rg.num_rows() as usize,
                };
                let mapped = self.map_columns(group, &[LABEL])?;
                let labels = mapped.column::<Int32Type>(LABEL)?;
                self.check_labels(group, &labels)?;
            }
        }
        Ok(())
    }

    fn label_fits(&self, label: i32) -> bool {
        usize::try_from(label).is_ok_and(|l| l < self.classes)
    }

    /// The first label of `labels` (row group `group`) outside the classes, as
    /// an error naming its row and key.
    fn check_labels(&self, group: RowGroupRef, labels: &[i32]) -> Result<(), StreamError> {
        let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| !self.label_fits(l))
        else {
            return Ok(());
        };
        let shard = &self.shards[group.shard];
        let row = shard.group_starts[group.row_group] + index;
        let key = self.key_of(RowOrigin {
            shard: group.shard,
            row_group: group.row_group,
            row,
        });
        Err(StreamError::Label(Box::new(LabelError {
            path: shard.path.display().to_string(),
            row,
            row_group: group.row_group,
            key,
            label,
            classes: self.classes,
        })))
    }

    /// The key of one row, read for an error message (the stream reads keys
    /// only on request).
    fn key_of(&self, origin: RowOrigin) -> String {
        let shard = &self.shards[origin.shard];
        let Some(rows) = shard.metadata.metadata().row_groups().get(origin.row_group) else {
            return "unreadable".to_string();
        };
        let group = RowGroupRef {
            shard: origin.shard,
            row_group: origin.row_group,
            rows: rows.num_rows() as usize,
        };
        let index = origin.row - shard.group_starts[origin.row_group];
        self.map_columns(group, &[KEY])
            .and_then(|mapped| mapped.column::<ByteArrayType>(KEY))
            .ok()
            .and_then(|keys| {
                keys.get(index)
                    .and_then(|k| k.as_utf8().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unreadable".to_string())
    }

    /// Every row group of the split, in file order.
    pub fn row_groups(&self) -> Vec<RowGroupRef> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(shard, s)| {
                s.metadata
                    .metadata()
                    .row_groups()
                    .iter()
                    .enumerate()
                    .map(move |(row_group, rg)| RowGroupRef {
                        shard,
                        row_group,
                        rows: rg.num_rows() as usize,
                    })
            })
            .collect()
    }

    /// Reads one row group: `label` and `pixels`, plus `key` when asked.
    pub async fn read(
        self: &Arc<Self>,
        group: RowGroupRef,
        with_keys: bool,
    ) -> Result<RowGroupData, StreamError> {
        let index = self.clone();
        match tokio::task::spawn_blocking(move || index.read_blocking(group, with_keys)).await {
            Ok(result) => result,
            Err(e) => Err(shard_error(
                &self.shards[group.shard].path,
                format!("row group {}: read task failed: {e}", group.row_group),
            )),
        }
    }

    fn read_blocking(
        &self,
        group: RowGroupRef,
        with_keys: bool,
    ) -> Result<RowGroupData, StreamError> {
        let shard = &self.shards[group.shard];
        let columns: &[usize] = if with_keys {
            &[KEY, LABEL, PIXELS]
        } else {
            &[LABEL, PIXELS]
        };
        let mapped = self.map_columns(group, columns)?;
        let labels = mapped.column::<Int32Type>(LABEL)?;
        let pixels = mapped.column::<FixedLenByteArrayType>(PIXELS)?;
        let keys = if with_keys {
            let keys = mapped.column::<ByteArrayType>(KEY)?;
            let keys: Result<Vec<String>, _> = keys
                .iter()
                .map(|k| k.as_utf8().map(str::to_owned))
                .collect();
            Some(keys.map_err(|e| mapped.failed(&e))?)
        } else {
            None
        };
        let rows = group.rows;
        let pixel_bytes = self.image_size * self.image_size * 3;
        if labels.len() != rows
            || pixels.len() != rows
            || pixels.iter().any(|p| p.len() != pixel_bytes)
        {
            return Err(mapped.failed(&"is missing rows or columns"));
        }
        self.check_labels(group, &labels)?;
        let first_row = shard.group_starts[group.row_group];
        let crcs = shard
            .pixel_crcs
            .as_ref()
            .map(|crcs| crcs[first_row..first_row + rows].to_vec());
        Ok(RowGroupData {
            group,
            first_row,
            labels,
            pixels,
            keys,
            crcs,
            mapped: mapped.bytes,
        })
    }

    /// Maps the byte range of `columns` of one row group (page tables filled).
    fn map_columns(
        &self,
        group: RowGroupRef,
        columns: &[usize],
    ) -> Result<MappedGroup<'_>, StreamError> {
        let shard = &self.shards[group.shard];
        let path = &shard.path;
        let failed = |e: &dyn std::fmt::Display| {
            shard_error(path, format!("row group {}: {e}", group.row_group))
        };
        let metadata = shard.metadata.metadata();
        let row_group = metadata
            .row_groups()
            .get(group.row_group)
            .ok_or_else(|| failed(&"not in the footer"))?;
        let ranges: Vec<(u64, u64)> = columns
            .iter()
            .map(|&c| row_group.column(c).byte_range())
            .collect();
        let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let end = ranges.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
        let len = usize::try_from(end - start).map_err(|e| failed(&e))?;

        let file_len = shard.file.metadata().map_err(|e| failed(&e))?.len();
        if end > file_len {
            return Err(failed(&format!(
                "the footer places it at bytes {start}..{end}, past the end of the {file_len}-byte file"
            )));
        }
        // SAFETY: shards are never modified in place (see the module notes), and
        // the range lies within the file, checked just above.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len)
                .populate()
                .map(&shard.file)
        }
        .map_err(|e| failed(&format!("cannot map: {e}")))?;
        let bytes = Bytes::from_owner(map);
        let range = Arc::new(FileRange {
            base: start,
            bytes: bytes.clone(),
        });
        Ok(MappedGroup {
            path,
            group,
            row_group,
            range,
            bytes,
        })
    }
}

/// The mapped columns of one row group, ready to decode.
struct MappedGroup<'a> {
    path: &'a Path,
    group: RowGroupRef,
    row_group: &'a RowGroupMetaData,
    range: Arc<FileRange>,
    bytes: Bytes,
}

impl MappedGroup<'_> {
    fn failed(&self, e: &dyn std::fmt::Display) -> StreamError {
        shard_error(
            self.path,
            format!("row group {}: {e}", self.group.row_group),
        )
    }

    /// Every value of one (mapped) column.
    fn column<T: DataType>(&self, column: usize) -> Result<Vec<T::T>, StreamError> {
        read_column::<T>(&self.range, self.row_group, column, self.group.rows)
            .map_err(|e| self.failed(&e))
    }
}

/// Every value of one required, flat column chunk (`rows` of them).
fn read_column<T: DataType>(
    range: &Arc<FileRange>,
    row_group: &RowGroupMetaData,
    column: usize,
    rows: usize,
) -> parquet::errors::Result<Vec<T::T>> {
    let chunk = row_group.column(column);
    let pages = SerializedPageReader::new(range.clone(), chunk, rows, None)?;
    let mut reader =
        get_typed_column_reader::<T>(get_column_reader(chunk.column_descr_ptr(), Box::new(pages)));
    let mut values = Vec::with_capacity(rows);
    while values.len() < rows {
        let before = values.len();
        reader.read_records(rows - before, None, None, &mut values)?;
        if values.len() == before {
            break;
        }
    }
    Ok(values)
}
