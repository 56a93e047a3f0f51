//! Dataset images by key: the pictures behind feature rows, for the raw-pixel baseline
//! and the contact sheet.
//!
//! Reading a whole split to find a few images would cost its full size (≈ 240 GB for
//! ImageNet's training set), so each shard is first read for its `key` column only, and
//! pixels are then read from just the row groups that hold a wanted key. A dataset in
//! an object store is read the same way, by byte ranges.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, StringArray};
use futures::StreamExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::FeaturesError;
use crate::augment::{Geometry, centre_view};
use crate::dataset::manifest::ManifestError;
use crate::dataset::reader::{ReadError, check_schema_of, image_values};
use crate::dataset::schema::{Column, PixelLayout, labels_i32};
use crate::dataset::shard_bytes::{FooterError, ShardBytes, read_footer};
use crate::dataset::writer::ShardRow;
use crate::dataset::{Encoding, Manifest, Split, shard_file_name};
use crate::store::Location;

/// The stored rows (S×S×3 pixels, label) of `keys`, in the order asked (a key asked
/// twice comes back twice). Fails naming the dataset and the first key not found.
pub fn rows_by_key(dataset: &Path, keys: &[String]) -> Result<Vec<ShardRow>, FeaturesError> {
    let mut found: Vec<Option<ShardRow>> = vec![None; keys.len()];
    for_each_row_by_key(dataset, keys, |position, row| {
        found[position] = Some(row.clone())
    })?;
    Ok(found
        .into_iter()
        .map(|r| r.expect("every key was found"))
        .collect())
}

/// Calls `visit(position, row)` for every position of `keys` with the stored row of that
/// key, in shard order (not the order asked), holding one row group at a time — so a
/// caller can keep just what it needs of each image. Looks in the split the first key
/// names first (`train/…`, `val/…`), then in the other. Fails naming the dataset and
/// the first key not found (after visiting the others).
pub fn for_each_row_by_key(
    dataset: &Path,
    keys: &[String],
    mut visit: impl FnMut(usize, &ShardRow),
) -> Result<(), FeaturesError> {
    let manifest = Manifest::load(dataset)?;
    let mut wanted: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        wanted.entry(key.as_str()).or_default().push(i);
    }
    let val_first = keys.first().is_some_and(|k| k.starts_with("val/"));
    let splits = if val_first {
        [Split::Val, Split::Train]
    } else {
        [Split::Train, Split::Val]
    };
    let location = Location::parse(dataset).map_err(ManifestError::from)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FeaturesError::io(dataset, e))?;
    runtime.block_on(async {
        for split in splits {
            let Some(info) = manifest.split(split) else {
                continue;
            };
            for i in 0..info.shards {
                if wanted.is_empty() {
                    break;
                }
                let name = format!("{}/{}", split.name(), shard_file_name(i));
                read_matching(
                    &location,
                    &name,
                    manifest.image_size,
                    manifest.encoding,
                    &mut wanted,
                    &mut visit,
                )
                .await?;
            }
        }
        Ok::<_, FeaturesError>(())
    })?;
    if let Some(position) = wanted.values().flatten().min() {
        return Err(FeaturesError::KeyNotFound {
            dataset: dataset.display().to_string(),
            key: keys[*position].clone(),
            splits: manifest
                .splits
                .keys()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(" and "),
        });
    }
    Ok(())
}

/// Finds the wanted keys of one shard (`name` in `location`, local or in an object
/// store); removes them from `wanted` as they are found.
async fn read_matching(
    location: &Location,
    name: &str,
    image_size: usize,
    encoding: Encoding,
    wanted: &mut HashMap<&str, Vec<usize>>,
    visit: &mut impl FnMut(usize, &ShardRow),
) -> Result<(), FeaturesError> {
    let shown = location.display(name);
    let path = Path::new(&shown);
    let size = location
        .size(name)
        .await
        .map_err(|e| FeaturesError::Manifest(e.into()))?;
    let metadata = read_footer(location, name, size)
        .await
        .map_err(|e| match e {
            FooterError::Store(e) => FeaturesError::Manifest(e.into()),
            FooterError::Unreadable(message) => FeaturesError::from(ReadError::Footer {
                path: shown.clone(),
                message,
            }),
        })?;
    check_schema_of(path, metadata.schema(), image_size, encoding)?;
    let bytes = ShardBytes {
        location: location.clone(),
        name: name.to_string(),
    };
    let builder =
        || ParquetRecordBatchStreamBuilder::new_with_metadata(bytes.clone(), metadata.clone());
    // Pass 1: keys only.
    let group_rows: Vec<usize> = metadata
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows() as usize)
        .collect();
    let mask = ProjectionMask::roots(metadata.parquet_schema(), [Column::Key.index()]);
    let mut batches = builder()
        .with_projection(mask)
        .build()
        .map_err(|e| FeaturesError::parquet(path, e))?;
    let mut hits: Vec<usize> = Vec::new();
    let mut row = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| FeaturesError::parquet(path, e))?;
        let keys = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("schema checked: key is utf8");
        for i in 0..keys.len() {
            if wanted.contains_key(keys.value(i)) {
                hits.push(row + i);
            }
        }
        row += keys.len();
    }
    if hits.is_empty() {
        return Ok(());
    }
    // Pass 2: only the row groups holding hits, every column.
    let mut starts = Vec::with_capacity(group_rows.len());
    let mut start = 0;
    for rows in &group_rows {
        starts.push(start);
        start += rows;
    }
    let group_of = |r: usize| starts.partition_point(|&s| s <= r) - 1;
    let mut groups: Vec<usize> = hits.iter().map(|&r| group_of(r)).collect();
    groups.dedup();
    // The shard row of each row read, in order, to name a row that does not decode.
    let shard_rows: Vec<usize> = groups
        .iter()
        .flat_map(|&g| starts[g]..starts[g] + group_rows[g])
        .collect();
    let mut seen = 0;
    let mut batches = builder()
        .with_row_groups(groups)
        .build()
        .map_err(|e| FeaturesError::parquet(path, e))?;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| FeaturesError::parquet(path, e))?;
        let column = |c: Column| batch.column(c.index()).as_any();
        let keys = column(Column::Key)
            .downcast_ref::<StringArray>()
            .expect("schema checked");
        let labels =
            labels_i32(batch.column(Column::Label.index()).as_ref()).map_err(|source| {
                let row = shard_rows[seen + source.row().unwrap_or(0)];
                let row_group = group_of(row);
                ReadError::Label {
                    path: shown.clone(),
                    row_group,
                    source: source.at(|_| row - starts[row_group]),
                }
            })?;
        let images =
            image_values(batch.column(Column::Pixels.index()).as_ref()).expect("schema checked");
        let mut decoded = Vec::new();
        for (i, image) in images.into_iter().enumerate() {
            if let Some(positions) = wanted.remove(keys.value(i)) {
                let key = keys.value(i).to_string();
                let pixels =
                    encoding
                        .pixels(image, image_size, &mut decoded)
                        .map_err(|source| ReadError::Pixels {
                            path: shown.clone(),
                            row: shard_rows.get(seen + i).copied().unwrap_or(seen + i),
                            key: key.clone(),
                            source,
                        })?;
                let stored = ShardRow {
                    key,
                    label: labels[i],
                    pixels: pixels.to_vec(),
                };
                for p in positions {
                    visit(p, &stored);
                }
            }
        }
        seen += keys.len();
    }
    Ok(())
}

/// The centred `crop × crop` window of an S×S×3 HWC image — the same window the
/// stream's centre view takes (offset `(S − crop) / 2`, rounded down), as HWC bytes.
pub fn centre_crop(pixels: &[u8], side: usize, crop: usize) -> Result<Vec<u8>, FeaturesError> {
    let geometry = Geometry::new(side, crop).map_err(|e| FeaturesError::InvalidOption {
        key: "crop",
        reason: e.to_string(),
    })?;
    let view = centre_view(geometry);
    let (source, cropped) = (PixelLayout::new(side), PixelLayout::new(crop));
    let mut out = Vec::with_capacity(cropped.bytes());
    for y in view.y..view.y + crop {
        let row = source.offset(view.x, y);
        out.extend_from_slice(&pixels[row..row + cropped.row_bytes()]);
    }
    Ok(out)
}
