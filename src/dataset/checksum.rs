//! Pixel checksums: a CRC-32 of each row's pixel values, kept in the shard's footer,
//! so bytes that change on disk after ingest are caught when the row is used
//! instead of being trained on silently.
//!
//! Parquet's own page CRCs would do, but the parquet crate only verifies them: it
//! never writes one. A CRC per row (rather than per row group) lets the stream
//! check a row in the same pass that augments it, one image row at a time, and name
//! the row and its key when it fails. It is zlib's CRC-32, so any tool can
//! check a row: `zlib.crc32(row["pixels"])` in Python.

use parquet::file::metadata::KeyValue;

/// Footer key-value entry holding the CRCs: a JSON array, one per row of the shard,
/// in row order.
pub const PIXELS_CRC32_KEY: &str = "pipeline.pixels_crc32";

/// CRC-32 of one row's pixel values.
pub fn pixels_crc32(pixels: &[u8]) -> u32 {
    crc32fast::hash(pixels)
}

/// The same CRC-32 fed piece by piece, for a pass that reads the pixels in pieces.
pub type PixelsCrc = crc32fast::Hasher;

/// The footer entry recording `crcs` (one per row).
pub fn footer_entry(crcs: &[u32]) -> KeyValue {
    let json = serde_json::to_string(crcs).expect("a list of integers serialises");
    KeyValue::new(PIXELS_CRC32_KEY.to_string(), json)
}

/// The rows' CRCs recorded in a footer's key-value metadata; `None` for a shard
/// written before checksums existed. Errors say what is wrong with the entry.
pub fn recorded(
    key_values: Option<&Vec<KeyValue>>,
    rows: usize,
) -> Result<Option<Vec<u32>>, String> {
    let Some(entry) = key_values
        .into_iter()
        .flatten()
        .find(|kv| kv.key == PIXELS_CRC32_KEY)
    else {
        return Ok(None);
    };
    let text = entry.value.as_deref().unwrap_or("");
    let crcs: Vec<u32> = serde_json::from_str(text)
        .map_err(|e| format!("footer entry {PIXELS_CRC32_KEY} is not a list of CRCs: {e}"))?;
    if crcs.len() != rows {
        return Err(format!(
            "footer entry {PIXELS_CRC32_KEY} lists {} CRCs for {rows} rows",
            crcs.len()
        ));
    }
    Ok(Some(crcs))
}

/// A row whose pixels do not match their recorded CRC, named so it can be found: the
/// one error both readers (the stream and `read_shard`) give for it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: row {row} (row group {row_group}, key {key}): pixel data is corrupt: its CRC-32 \
     is {found:08x} but the footer records {recorded:08x} (the file changed after ingest \
     wrote it; ingest the dataset again)"
)]
pub struct CorruptRow {
    pub path: String,
    /// Row within the shard, from 0.
    pub row: usize,
    pub row_group: usize,
    pub key: String,
    pub found: u32,
    pub recorded: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_zlibs() {
        // zlib.crc32(b"123456789") = 0xcbf43926, the CRC-32 check value.
        assert_eq!(pixels_crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn footer_entry_round_trips_and_old_shards_have_none() {
        let entry = footer_entry(&[1, 0xffff_ffff]);
        assert_eq!(
            recorded(Some(&vec![entry.clone()]), 2).unwrap(),
            Some(vec![1, 0xffff_ffff])
        );
        assert_eq!(recorded(None, 2).unwrap(), None);
        assert!(recorded(Some(&vec![entry]), 3).is_err());
        let bad = KeyValue::new(PIXELS_CRC32_KEY.to_string(), "x".to_string());
        assert!(recorded(Some(&vec![bad]), 1).is_err());
    }
}
