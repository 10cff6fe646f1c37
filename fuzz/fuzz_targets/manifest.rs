//! Fuzzes the parsers of what sits beside an archive in a store: the manifest
//! (`Manifest::from_bytes`, checksum trailer and JSON), the index's JSON lines
//! (`ArchiveIndex::from_jsonl`) and backup ids. Nothing may panic, and what parses must
//! write back to bytes that parse to the same value.

#![no_main]

use girofle_core::archive::ArchiveIndex;
use girofle_core::backup::{parse_id, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::from_bytes("fuzz manifest", data);
    // The same bytes with a checksum that matches, so the JSON itself is parsed.
    let mut signed = data.to_vec();
    signed.extend_from_slice(format!("\nblake3:{}\n", blake3::hash(data).to_hex()).as_bytes());
    if let Ok(m) = Manifest::from_bytes("fuzz manifest", &signed) {
        let bytes = m.to_bytes().expect("a parsed manifest serializes");
        let again = Manifest::from_bytes("written back", &bytes).expect("what was written parses");
        assert_eq!(again, m);
    }

    if let Ok(index) = ArchiveIndex::from_jsonl(data) {
        let again = ArchiveIndex::from_jsonl(&index.to_jsonl()).expect("what was written parses");
        assert_eq!(again, index);
    }

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((name, ts)) = parse_id(text) {
            assert_eq!(format!("{name}/{ts}"), text);
        }
    }
});
