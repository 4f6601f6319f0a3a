//! CRC-32 (ISO-HDLC, the one zlib and Ethernet use: reflected polynomial 0xEDB88320, initial and
//! final XOR 0xFFFFFFFF), which RFC 8489 §14.7 names for FINGERPRINT. A table built at compile
//! time; no dependency for 20 lines.

// Indexing in a const initialiser is evaluated by the compiler: out of range fails the build,
// never a run.
#[allow(clippy::indexing_slicing)]
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32 of `bytes`.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        // The index is a u8, always inside the 256-entry table.
        let idx = usize::from((c as u8) ^ b);
        c = TABLE.get(idx).copied().unwrap_or(0) ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The catalogue's check value for CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
