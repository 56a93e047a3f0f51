//! Pixel checksums: a CRC-32 of each row group's pixel values, kept in the shard's
//! footer, so bytes that change on disk after ingest are caught when the row group
//! is read instead of being trained on silently.
//!
//! Parquet's own page CRCs would do, but the parquet crate only verifies them: it
//! never writes one. A CRC per row group matches the unit the stream reads and
//! costs four bytes of footer per group. It is zlib's CRC-32, so any tool can check
//! a group: `zlib.crc32(b"".join(group["pixels"]))` in Python.

use parquet::file::metadata::KeyValue;

/// Footer key-value entry holding the CRCs: a JSON array, one per row group, in order.
pub const PIXELS_CRC32_KEY: &str = "pipeline.pixels_crc32";

/// Running CRC-32 of one row group's pixel values, fed in row order.
#[derive(Default)]
pub struct PixelDigest(crc32fast::Hasher);

impl PixelDigest {
    pub fn update(&mut self, pixels: &[u8]) {
        self.0.update(pixels);
    }

    pub fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// CRC-32 of the concatenated pixel values of one row group.
pub fn pixels_crc32<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    let mut digest = PixelDigest::default();
    values.into_iter().for_each(|v| digest.update(v));
    digest.finish()
}

/// The footer entry recording `crcs` (one per row group).
pub fn footer_entry(crcs: &[u32]) -> KeyValue {
    let json = serde_json::to_string(crcs).expect("a list of integers serialises");
    KeyValue::new(PIXELS_CRC32_KEY.to_string(), json)
}

/// The row groups' CRCs recorded in a footer's key-value metadata; `None` for a
/// shard written before checksums existed. Errors say what is wrong with the entry.
pub fn recorded(
    key_values: Option<&Vec<KeyValue>>,
    row_groups: usize,
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
    if crcs.len() != row_groups {
        return Err(format!(
            "footer entry {PIXELS_CRC32_KEY} lists {} CRCs for {row_groups} row groups",
            crcs.len()
        ));
    }
    Ok(Some(crcs))
}

/// Why a row group's pixels do not match their recorded CRC.
pub fn mismatch_message(found: u32, recorded: u32) -> String {
    format!(
        "pixel data is corrupt: its CRC-32 is {found:08x} but the footer records {recorded:08x} \
         (the file changed after ingest wrote it; ingest the dataset again)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_zlibs_and_spans_values() {
        // zlib.crc32(b"123456789") = 0xcbf43926, the CRC-32 check value.
        assert_eq!(pixels_crc32([b"1234".as_slice(), b"56789"]), 0xcbf4_3926);
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
