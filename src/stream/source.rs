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
//! A dataset in an object store (see [`crate::store`]) is read the same way
//! from fetched bytes instead of a mapping: each shard's footer once, from a
//! suffix of the object, and each row group's projected column chunks as byte
//! ranges (coalesced into one request), decoded by the same code, so the rows
//! are the same bytes and the checks below run unchanged. `read_ahead` row groups
//! are in flight at once, and memory stays bounded as for local shards: each
//! fetched group is a buffer held until its last row is dropped.
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
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::{get_column_reader, get_typed_column_reader};
use parquet::data_type::{
    ByteArray, ByteArrayType, DataType, FixedLenByteArrayType, Int32Type, Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::file::statistics::Statistics;

use super::plan::RowGroupRef;
use super::{LabelError, StreamError};
use crate::dataset::Encoding;
use crate::dataset::reader::check_schema_of;
use crate::dataset::schema::{Column, PixelLayout, narrow_labels};
use crate::dataset::shard_bytes::{FooterError, read_footer};
use crate::dataset::{Manifest, Split, checksum, shard_file_name};
use crate::store::{Location, StoreError};

/// Shard columns by position, as the one schema orders them (and [`ShardIndex::open`]
/// checks each file against).
const KEY: usize = Column::Key.index();
const LABEL: usize = Column::Label.index();
const PIXELS: usize = Column::Pixels.index();

/// One shard: its file (kept open, local datasets) and its footer, parsed once.
pub struct Shard {
    /// The path or URL, for messages.
    pub path: String,
    /// The name inside the dataset, e.g. `train/part-00000.parquet`.
    name: String,
    /// Open for mapping, when the dataset is local.
    file: Option<File>,
    size: u64,
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
    location: Location,
    /// The runtime the index was opened on, for a key fetched from synchronous
    /// code (an error message's key, remote datasets only).
    runtime: tokio::runtime::Handle,
    pub image_size: usize,
    /// How the rows' images are stored (dataset.json's, checked against every shard).
    pub encoding: Encoding,
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
    /// Each row's stored image: raw pixels or JPEG bytes.
    pixels: Vec<ByteArray>,
    keys: Option<Vec<String>>,
    /// The rows' recorded pixel CRCs (none for a shard without checksums).
    crcs: Option<Vec<u32>>,
    /// The mapped (or fetched) byte ranges the values point into.
    pieces: Vec<Bytes>,
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
            pieces,
        } = self;
        let mut keys = keys.map(Vec::into_iter);
        labels
            .into_iter()
            .zip(pixels)
            .enumerate()
            .map(|(i, (label, value))| {
                let data = value.data();
                let inside = pieces.iter().find(|piece| {
                    let range = piece.as_ptr_range();
                    range.contains(&data.as_ptr()) && data.as_ptr_range().end <= range.end
                });
                // Always inside for the plain, uncompressed pages ingest writes;
                // a shard written otherwise still works, at the cost of a copy.
                let pixels = match inside {
                    Some(piece) => piece.slice_ref(data),
                    None => Bytes::copy_from_slice(data),
                };
                let origin = RowOrigin {
                    shard: group.shard,
                    row_group: group.row_group,
                    row: first_row + i,
                };
                Row {
                    label,
                    key: keys.as_mut().and_then(Iterator::next),
                    pixels,
                    origin,
                    check: crcs.as_ref().map(|crcs| PixelCheck {
                        crc: crcs[i],
                        origin,
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
    /// The stored image: S·S·3 bytes of HWC RGB (raw), or a JPEG of them, which
    /// augmentation decodes through [`Encoding::pixels`].
    pub pixels: Bytes,
    /// Where the row lives, to name it in an error.
    pub origin: RowOrigin,
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
    /// The S·S·3 HWC pixels of the row: its stored bytes (raw) or their decode into
    /// `buffer` (jpeg). A row that does not decode is an error naming it.
    pub fn decoded<'a>(
        &'a self,
        index: &ShardIndex,
        buffer: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], StreamError> {
        index
            .encoding
            .pixels(&self.pixels, index.image_size, buffer)
            .map_err(|source| StreamError::Pixels {
                path: index.shards[self.origin.shard].path.clone(),
                row: self.origin.row,
                row_group: self.origin.row_group,
                key: self
                    .key
                    .clone()
                    .unwrap_or_else(|| index.key_of(self.origin)),
                source,
            })
    }

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
            path: index.shards[check.origin.shard].path.clone(),
            row: check.origin.row,
            row_group: check.origin.row_group,
            key,
            found,
            recorded: check.crc,
        })))
    }
}

/// Pieces of a file (each `base..base + bytes.len()`, in file order), addressed
/// by file offset: one mapped span for a local shard, one fetched range per
/// column chunk for a remote one.
struct FileRange {
    pieces: Vec<(u64, Bytes)>,
}

impl FileRange {
    /// The piece holding `start`, and `start`'s offset in it (the later piece
    /// where two touch).
    fn local(&self, start: u64) -> parquet::errors::Result<(&Bytes, usize)> {
        self.pieces
            .iter()
            .rev()
            .find_map(|(base, bytes)| {
                start
                    .checked_sub(*base)
                    .map(|at| at as usize)
                    .filter(|&at| at <= bytes.len())
                    .map(|at| (bytes, at))
            })
            .ok_or_else(|| ParquetError::EOF(format!("offset {start} is outside the bytes read")))
    }
}

impl Length for FileRange {
    fn len(&self) -> u64 {
        self.pieces
            .last()
            .map_or(0, |(base, bytes)| base + bytes.len() as u64)
    }
}

impl ChunkReader for FileRange {
    type T = <Bytes as ChunkReader>::T;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let (bytes, at) = self.local(start)?;
        bytes.get_read(at as u64)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let (bytes, at) = self.local(start)?;
        bytes.get_bytes(at as u64, length)
    }
}

fn shard_error(path: &str, message: impl std::fmt::Display) -> StreamError {
    StreamError::Shard {
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// A store error about shard `path`, worded as the other shard errors (the
/// store's message already starts with the URL).
fn store_error(path: &str, context: &str, e: &StoreError) -> StreamError {
    let text = e.to_string();
    let reason = text.strip_prefix(&format!("{path}: ")).unwrap_or(&text);
    shard_error(path, format!("{context}{reason}"))
}

impl ShardIndex {
    /// Opens every shard's footer and checks its schema; errors name the file.
    pub async fn open(
        location: Location,
        split: Split,
        manifest: &Manifest,
    ) -> Result<Self, StreamError> {
        let info = manifest.split(split).ok_or_else(|| StreamError::NoSplit {
            dataset: location.root(),
            split: split.name(),
        })?;
        let mut shards = Vec::with_capacity(info.shards);
        for i in 0..info.shards {
            let name = format!("{}/{}", split.name(), shard_file_name(i));
            let path = location.display(&name);
            let (file, size, metadata) = match location.local_path(&name) {
                Some(local) => {
                    let mut file = tokio::fs::File::open(&local)
                        .await
                        .map_err(|e| shard_error(&path, format!("cannot open: {e}")))?;
                    let metadata =
                        ArrowReaderMetadata::load_async(&mut file, ArrowReaderOptions::new())
                            .await
                            .map_err(|e| {
                                shard_error(
                                    &path,
                                    format!("not a readable Parquet file (truncated?): {e}"),
                                )
                            })?;
                    let file = file.into_std().await;
                    let size = file
                        .metadata()
                        .map_err(|e| shard_error(&path, format!("cannot open: {e}")))?
                        .len();
                    (Some(file), size, metadata)
                }
                None => {
                    let size = location
                        .size(&name)
                        .await
                        .map_err(|e| store_error(&path, "", &e))?;
                    let metadata =
                        read_footer(&location, &name, size)
                            .await
                            .map_err(|e| match e {
                                FooterError::Store(e) => store_error(&path, "", &e),
                                e => shard_error(&path, e.to_string()),
                            })?;
                    (None, size, metadata)
                }
            };
            check_schema_of(
                std::path::Path::new(&path),
                metadata.schema(),
                manifest.image_size,
                manifest.encoding,
            )
            .map_err(|e| {
                shard_error(
                    &path,
                    e.to_string().trim_start_matches(&format!("{path}: ")),
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
            shards.push(Shard {
                path,
                name,
                file,
                size,
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
                dataset: location.root(),
                split: split.name(),
                expected: info.rows,
                found: rows,
            });
        }
        let index = Self {
            shards,
            location,
            runtime: tokio::runtime::Handle::current(),
            image_size: manifest.image_size,
            encoding: manifest.encoding,
            classes: manifest.num_classes(),
        };
        index.check_label_ranges().await?;
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
    async fn check_label_ranges(&self) -> Result<(), StreamError> {
        for (shard, s) in self.shards.iter().enumerate() {
            for (row_group, rg) in s.metadata.metadata().row_groups().iter().enumerate() {
                // Int64 since the label became int64, Int32 in older shards.
                let range = match rg.column(LABEL).statistics() {
                    Some(Statistics::Int64(stats)) => {
                        stats.min_opt().zip(stats.max_opt()).map(|(&a, &b)| (a, b))
                    }
                    Some(Statistics::Int32(stats)) => stats
                        .min_opt()
                        .zip(stats.max_opt())
                        .map(|(&a, &b)| (i64::from(a), i64::from(b))),
                    _ => None,
                };
                if let Some((min, max)) = range
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
                let fetched = match self.location {
                    Location::Local(_) => self.map_columns(group, &[LABEL])?,
                    Location::Remote(_) => self.fetch_columns(group, &[LABEL]).await?,
                };
                let labels = self.labels(&fetched)?;
                self.check_labels(group, &labels)?;
            }
        }
        Ok(())
    }

    fn label_fits(&self, label: i64) -> bool {
        usize::try_from(label).is_ok_and(|l| l < self.classes)
    }

    /// The first label of `labels` (row group `group`) outside the classes, as
    /// an error naming its row and key.
    fn check_labels(&self, group: RowGroupRef, labels: &[i32]) -> Result<(), StreamError> {
        let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| !self.label_fits(i64::from(l)))
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
            path: shard.path.clone(),
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
        let fetched = match self.location {
            Location::Local(_) => self.map_columns(group, &[KEY]),
            // Called from synchronous code (augmentation, a blocking read), which
            // may itself run on the runtime: block on it from a thread of its own.
            Location::Remote(_) => std::thread::scope(|scope| {
                scope
                    .spawn(|| self.runtime.block_on(self.fetch_columns(group, &[KEY])))
                    .join()
                    .unwrap_or(Err(StreamError::Stopped))
            }),
        };
        fetched
            .and_then(|fetched| self.column::<ByteArrayType>(&fetched, KEY))
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
        let columns: &'static [usize] = if with_keys {
            &[KEY, LABEL, PIXELS]
        } else {
            &[LABEL, PIXELS]
        };
        let index = self.clone();
        let decoded = match self.location {
            // Mapping faults pages in: on the blocking pool, with the decode.
            Location::Local(_) => {
                tokio::task::spawn_blocking(move || {
                    index.decode(index.map_columns(group, columns)?, with_keys)
                })
                .await
            }
            Location::Remote(_) => {
                let fetched = self.fetch_columns(group, columns).await?;
                tokio::task::spawn_blocking(move || index.decode(fetched, with_keys)).await
            }
        };
        match decoded {
            Ok(result) => result,
            Err(e) => Err(shard_error(
                &self.shards[group.shard].path,
                format!("row group {}: read task failed: {e}", group.row_group),
            )),
        }
    }

    /// The rows of one fetched row group, checked.
    fn decode(&self, fetched: Fetched, with_keys: bool) -> Result<RowGroupData, StreamError> {
        let group = fetched.group;
        let shard = &self.shards[group.shard];
        let labels = self.labels(&fetched)?;
        // Leaf 2 is `pixels` (fixed-size) or `image.bytes` (variable) by encoding.
        let pixels: Vec<ByteArray> = match self.encoding {
            Encoding::Raw => self
                .column::<FixedLenByteArrayType>(&fetched, PIXELS)?
                .into_iter()
                .map(ByteArray::from)
                .collect(),
            Encoding::Jpeg => self.column::<ByteArrayType>(&fetched, PIXELS)?,
        };
        let keys = if with_keys {
            let keys = self.column::<ByteArrayType>(&fetched, KEY)?;
            let keys: Result<Vec<String>, _> = keys
                .iter()
                .map(|k| k.as_utf8().map(str::to_owned))
                .collect();
            Some(keys.map_err(|e| self.group_error(group, &e))?)
        } else {
            None
        };
        let rows = group.rows;
        let pixel_bytes = PixelLayout::new(self.image_size).bytes();
        let raw = self.encoding == Encoding::Raw;
        if labels.len() != rows
            || pixels.len() != rows
            || (raw && pixels.iter().any(|p| p.len() != pixel_bytes))
        {
            return Err(self.group_error(group, &"is missing rows or columns"));
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
            pieces: fetched
                .range
                .pieces
                .iter()
                .map(|(_, b)| b.clone())
                .collect(),
        })
    }

    fn group_error(&self, group: RowGroupRef, e: &dyn std::fmt::Display) -> StreamError {
        shard_error(
            &self.shards[group.shard].path,
            format!("row group {}: {e}", group.row_group),
        )
    }

    /// The footer entry of a row group and the byte ranges of its `columns`,
    /// checked to lie within the file.
    fn column_ranges(
        &self,
        group: RowGroupRef,
        columns: &[usize],
    ) -> Result<Vec<Range<u64>>, StreamError> {
        let shard = &self.shards[group.shard];
        let row_group = shard
            .metadata
            .metadata()
            .row_groups()
            .get(group.row_group)
            .ok_or_else(|| self.group_error(group, &"not in the footer"))?;
        let mut ranges: Vec<Range<u64>> = columns
            .iter()
            .map(|&c| {
                let (start, len) = row_group.column(c).byte_range();
                start..start.saturating_add(len)
            })
            .collect();
        ranges.sort_by_key(|r| r.start);
        let start = ranges.first().map_or(0, |r| r.start);
        let end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        if end > shard.size {
            return Err(self.group_error(
                group,
                &format!(
                    "the footer places it at bytes {start}..{end}, past the end of the {}-byte file",
                    shard.size
                ),
            ));
        }
        Ok(ranges)
    }

    /// Maps the byte range of `columns` of one row group (page tables filled).
    fn map_columns(&self, group: RowGroupRef, columns: &[usize]) -> Result<Fetched, StreamError> {
        let shard = &self.shards[group.shard];
        let ranges = self.column_ranges(group, columns)?;
        let start = ranges.first().map_or(0, |r| r.start);
        let end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let len = usize::try_from(end - start).map_err(|e| self.group_error(group, &e))?;
        let Some(file) = &shard.file else {
            return Err(self.group_error(group, &"not a local file"));
        };
        // SAFETY: shards are never modified in place (see the module notes), and
        // the range lies within the file, checked by `column_ranges`.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len)
                .populate()
                .map(file)
        }
        .map_err(|e| self.group_error(group, &format!("cannot map: {e}")))?;
        Ok(Fetched {
            group,
            range: Arc::new(FileRange {
                pieces: vec![(start, Bytes::from_owner(map))],
            }),
        })
    }

    /// Fetches the column chunks of `columns` of one row group from the object
    /// store, one range each (the store coalesces adjacent ones).
    async fn fetch_columns(
        &self,
        group: RowGroupRef,
        columns: &[usize],
    ) -> Result<Fetched, StreamError> {
        let shard = &self.shards[group.shard];
        let ranges = self.column_ranges(group, columns)?;
        let pieces = self
            .location
            .read_ranges(&shard.name, &ranges)
            .await
            .map_err(|e| {
                store_error(&shard.path, &format!("row group {}: ", group.row_group), &e)
            })?;
        if pieces
            .iter()
            .zip(&ranges)
            .any(|(piece, range)| piece.len() as u64 != range.end - range.start)
        {
            return Err(self.group_error(group, &"the object store returned a short range"));
        }
        Ok(Fetched {
            group,
            range: Arc::new(FileRange {
                pieces: ranges.iter().map(|r| r.start).zip(pieces).collect(),
            }),
        })
    }

    /// Every value of one (fetched) column.
    /// The labels of a fetched row group as the in-memory i32: stored int64, or int32
    /// in shards written before the label became int64.
    fn labels(&self, fetched: &Fetched) -> Result<Vec<i32>, StreamError> {
        let group = fetched.group;
        let chunk = self.shards[group.shard]
            .metadata
            .metadata()
            .row_group(group.row_group)
            .column(LABEL);
        match chunk.column_type() {
            PhysicalType::INT64 => {
                let wide = self.column::<Int64Type>(fetched, LABEL)?;
                narrow_labels(&wide).map_err(|e| self.group_error(group, &e))
            }
            PhysicalType::INT32 => self.column::<Int32Type>(fetched, LABEL),
            other => Err(self.group_error(
                group,
                &format!("the label column is stored as {other}, expected INT64 (or INT32)"),
            )),
        }
    }

    fn column<T: DataType>(
        &self,
        fetched: &Fetched,
        column: usize,
    ) -> Result<Vec<T::T>, StreamError> {
        let group = fetched.group;
        let row_group = self.shards[group.shard]
            .metadata
            .metadata()
            .row_group(group.row_group);
        read_column::<T>(&fetched.range, row_group, column, group.rows)
            .map_err(|e| self.group_error(group, &e))
    }
}

/// The mapped or fetched columns of one row group, ready to decode.
struct Fetched {
    group: RowGroupRef,
    range: Arc<FileRange>,
}

/// Every value of one flat column chunk without nulls (`rows` of them).
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
    // `label` and a jpeg shard's `image.bytes` are nullable (as Hugging Face's
    // `ClassLabel` and image are): their definition levels are read, and a null is
    // refused below.
    let max_level = chunk.column_descr().max_def_level();
    let mut levels = (max_level > 0).then(|| Vec::with_capacity(rows));
    let mut records = 0;
    while records < rows {
        let (read, _, _) =
            reader.read_records(rows - records, levels.as_mut(), None, &mut values)?;
        if read == 0 {
            break;
        }
        records += read;
    }
    if let Some(levels) = levels
        && let Some(row) = levels.iter().position(|&l| l != max_level)
    {
        return Err(ParquetError::General(format!(
            "row {row} of the row group has a null {}",
            chunk.column_path()
        )));
    }
    Ok(values)
}
