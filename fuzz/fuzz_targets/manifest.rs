//! Fuzzes the parsers of what sits beside an archive in a store: the manifest
//! (`Manifest::from_bytes`, checksum trailer and JSON, its header as plain JSON), its
//! signature (minisign's `.minisig`, `TrustedKeys::check`) and public keys, the index's
//! JSON lines (`ArchiveIndex::from_jsonl`) and backup ids. Nothing may panic, and what parses must
//! write back to bytes that parse to the same value.

#![no_main]

use girofle_archive::manifest::{parse_id, Manifest as AnyManifest};
use girofle_archive::signature::{PublicKey, Signed, TrustedKeys};
use girofle_archive::ArchiveIndex;
use libfuzzer_sys::fuzz_target;

/// A manifest whose header is any JSON object: the header's own fields are core's
/// (`BackupHeader`); the checksum trailer, the format check and the rest of the manifest
/// are the format's, fuzzed here.
type Manifest = AnyManifest<serde_json::Value>;

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

    // A signature object as a store may hand it back: never trusted, never a panic.
    let key = PublicKey::parse("RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3")
        .expect("minisign's example key parses");
    let trust = TrustedKeys::from_keys(vec![key]);
    let check = trust.check("web/20261125T220000Z", b"a manifest", Some(data));
    assert_ne!(
        check.signed,
        Signed::Trusted,
        "a forged signature was trusted"
    );
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(k) = PublicKey::parse(text) {
            assert_eq!(PublicKey::parse(&k.pub_file()).expect("written back"), k);
        }
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
