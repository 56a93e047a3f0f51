//! The contact sheet of paper Figure 4: each query image in the first column, its
//! nearest neighbours to its right, nearest first.
//!
//! The `image` crate draws no text, so the labels show as colour: the query's frame is
//! grey, a neighbour's frame green when it has the query's label, red when not, and blue
//! when the query's label is unknown (an outside image). A bar under each neighbour
//! shows its distance, as a share of the largest on the sheet.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{ImageFormat, Rgb, RgbImage};

use super::FeaturesError;
use super::images::rows_by_key;
use super::reader::FeatureTable;
use crate::dataset::atomic;

/// One picture on the sheet: `side × side × 3` HWC RGB bytes and its label (`None`
/// for a query from outside the dataset).
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    pub rgb: Vec<u8>,
    pub side: usize,
    pub label: Option<i32>,
}

/// A query and its neighbours with their distances, nearest first.
#[derive(Clone, Debug, PartialEq)]
pub struct SheetRow {
    pub query: Tile,
    pub neighbours: Vec<(Tile, f32)>,
}

/// Geometry of the sheet, in output pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SheetStyle {
    /// Every image is resized to `cell × cell` (0: the largest tile's side, at least 96).
    pub cell: usize,
    /// Frame width around each image.
    pub frame: usize,
    /// Space between cells; the query column is followed by three times this.
    pub gap: usize,
    /// Height of the distance bar under each neighbour.
    pub bar: usize,
}

impl Default for SheetStyle {
    fn default() -> Self {
        Self {
            cell: 0,
            frame: 3,
            gap: 4,
            bar: 4,
        }
    }
}

pub const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
pub const QUERY_FRAME: Rgb<u8> = Rgb([200, 200, 200]);
pub const SAME_LABEL: Rgb<u8> = Rgb([40, 170, 60]);
pub const OTHER_LABEL: Rgb<u8> = Rgb([210, 50, 40]);
pub const UNKNOWN_LABEL: Rgb<u8> = Rgb([60, 110, 220]);
pub const DISTANCE_BAR: Rgb<u8> = Rgb([230, 200, 60]);

/// Where cell (row, column) starts: the top-left corner of its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SheetLayout {
    pub cell: usize,
    pub frame: usize,
    pub gap: usize,
    pub bar: usize,
    pub columns: usize,
    pub rows: usize,
}

impl SheetLayout {
    fn framed(&self) -> usize {
        self.cell + 2 * self.frame
    }

    fn row_height(&self) -> usize {
        self.framed() + self.bar + self.gap
    }

    /// Top-left pixel of the framed cell at (`row`, `column`); column 0 is the query.
    pub fn origin(&self, row: usize, column: usize) -> (usize, usize) {
        let x = self.gap
            + column * (self.framed() + self.gap)
            + if column > 0 { 2 * self.gap } else { 0 };
        (x, self.gap + row * self.row_height())
    }

    pub fn width(&self) -> usize {
        self.origin(0, self.columns - 1).0 + self.framed() + self.gap
    }

    pub fn height(&self) -> usize {
        self.gap + self.rows * self.row_height()
    }
}

/// Draws `rows` into a PNG at `out` (written atomically). Returns the layout used, so a
/// caller (or a test) can find each cell.
pub fn contact_sheet(
    rows: &[SheetRow],
    out: &Path,
    style: SheetStyle,
) -> Result<SheetLayout, FeaturesError> {
    if rows.is_empty() {
        return Err(FeaturesError::InvalidOption {
            key: "sheet rows",
            reason: "nothing to draw".into(),
        });
    }
    for tile in rows
        .iter()
        .flat_map(|r| std::iter::once(&r.query).chain(r.neighbours.iter().map(|(t, _)| t)))
    {
        if tile.side == 0 || tile.rgb.len() != tile.side * tile.side * 3 {
            return Err(FeaturesError::mismatch(
                "sheet tile",
                format!("a {0}×{0} tile", tile.side),
                tile.side * tile.side * 3,
                "its pixel buffer",
                tile.rgb.len(),
            ));
        }
    }
    let largest = rows
        .iter()
        .flat_map(|r| std::iter::once(r.query.side).chain(r.neighbours.iter().map(|(t, _)| t.side)))
        .max()
        .unwrap_or(1);
    let layout = SheetLayout {
        cell: if style.cell == 0 {
            largest.max(96)
        } else {
            style.cell
        },
        frame: style.frame,
        gap: style.gap,
        bar: style.bar,
        columns: 1 + rows.iter().map(|r| r.neighbours.len()).max().unwrap_or(0),
        rows: rows.len(),
    };
    let max_distance = rows
        .iter()
        .flat_map(|r| r.neighbours.iter().map(|(_, d)| *d))
        .fold(0f32, f32::max);
    let mut sheet = RgbImage::from_pixel(layout.width() as u32, layout.height() as u32, BACKGROUND);
    for (r, row) in rows.iter().enumerate() {
        draw_cell(
            &mut sheet,
            &layout,
            layout.origin(r, 0),
            &row.query,
            QUERY_FRAME,
        );
        for (c, (tile, distance)) in row.neighbours.iter().enumerate() {
            let origin = layout.origin(r, c + 1);
            let frame = match (row.query.label, tile.label) {
                (Some(q), Some(t)) if q == t => SAME_LABEL,
                (Some(_), _) => OTHER_LABEL,
                (None, _) => UNKNOWN_LABEL,
            };
            draw_cell(&mut sheet, &layout, origin, tile, frame);
            let share = if max_distance > 0.0 {
                (distance / max_distance).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let length = (share * layout.framed() as f32).round() as usize;
            fill(
                &mut sheet,
                origin.0,
                origin.1 + layout.framed() + 1,
                length,
                layout.bar.saturating_sub(1),
                DISTANCE_BAR,
            );
        }
    }
    let mut png = Cursor::new(Vec::new());
    sheet
        .write_to(&mut png, ImageFormat::Png)
        .map_err(|source| FeaturesError::Image {
            path: out.display().to_string(),
            source,
        })?;
    atomic::write_file(out, png.get_ref()).map_err(|e| FeaturesError::io(out, e))?;
    Ok(layout)
}

/// The sheet rows for `queries` (rows of `table`) and their `neighbours` (rows of
/// `table`, as a search returns them), with the images read from `dataset` by key.
pub fn sheet_rows(
    dataset: &Path,
    table: &FeatureTable,
    queries: &[usize],
    neighbours: &[Vec<(usize, f32)>],
) -> Result<Vec<SheetRow>, FeaturesError> {
    let mut keys = Vec::new();
    for (&q, list) in queries.iter().zip(neighbours) {
        keys.push(table.keys[q].clone());
        keys.extend(list.iter().map(|&(row, _)| table.keys[row].clone()));
    }
    let mut images = rows_by_key(dataset, &keys)?.into_iter();
    let manifest_side = |pixels: &[u8]| ((pixels.len() / 3) as f64).sqrt().round() as usize;
    let mut tile = || {
        let row = images.next().expect("one image per key");
        Tile {
            side: manifest_side(&row.pixels),
            rgb: row.pixels,
            label: Some(row.label),
        }
    };
    Ok(queries
        .iter()
        .zip(neighbours)
        .map(|(_, list)| {
            let query = tile();
            let neighbours = list.iter().map(|&(_, d)| (tile(), d)).collect();
            SheetRow { query, neighbours }
        })
        .collect())
}

fn draw_cell(
    sheet: &mut RgbImage,
    layout: &SheetLayout,
    (x, y): (usize, usize),
    tile: &Tile,
    frame: Rgb<u8>,
) {
    fill(sheet, x, y, layout.framed(), layout.framed(), frame);
    let image = RgbImage::from_raw(tile.side as u32, tile.side as u32, tile.rgb.clone())
        .expect("size checked");
    let image = if tile.side == layout.cell {
        image
    } else {
        // Nearest keeps small images crisp when scaled by a whole factor.
        let filter = if layout.cell.is_multiple_of(tile.side) {
            FilterType::Nearest
        } else {
            FilterType::Triangle
        };
        image::imageops::resize(&image, layout.cell as u32, layout.cell as u32, filter)
    };
    image::imageops::replace(
        sheet,
        &image,
        (x + layout.frame) as i64,
        (y + layout.frame) as i64,
    );
}

fn fill(sheet: &mut RgbImage, x: usize, y: usize, w: usize, h: usize, colour: Rgb<u8>) {
    for yy in y..(y + h).min(sheet.height() as usize) {
        for xx in x..(x + w).min(sheet.width() as usize) {
            sheet.put_pixel(xx as u32, yy as u32, colour);
        }
    }
}
