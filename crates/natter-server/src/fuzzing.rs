//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly; see
//! docs/security.md): each takes raw fuzzer bytes, runs one of the
//! server's parsers on them, and panics only when a parser breaks its own
//! contract (a range outside the content, a parse that does not round
//! trip). Hidden from the docs; not an API. The corpus-replay test below
//! runs every seed on stable, so the targets cannot rot.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::api::media::{RangeSpec, header_number, parse_range, tus_metadata};
use crate::search_query::{QueryLimits, parse};

/// A `Range` header against a content size taken from the first 8 bytes.
///
/// # Panics
/// When a range is served that is empty or outside the content.
pub fn range(data: &[u8]) {
    let (size, spec) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size) % (1 << 40), rest),
        None => (0, data),
    };
    let Ok(spec) = std::str::from_utf8(spec) else {
        return;
    };
    if let RangeSpec::Part(r) = parse_range(spec, size) {
        assert!(
            r.start < r.end && r.end <= size,
            "{spec:?} of {size}: {r:?}"
        );
    }
}

/// The tus headers: `Upload-Metadata`, `Upload-Offset`, `Upload-Length`.
pub fn tus_headers(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for name in ["upload-metadata", "upload-offset", "upload-length"] {
        headers.insert(HeaderName::from_static(name), value.clone());
    }
    let _ = tus_metadata(&headers);
    let _ = header_number(&headers, &HeaderName::from_static("upload-offset"));
}

/// The MLS framing reader: messages, Welcomes and KeyPackages.
pub fn mls_framing(data: &[u8]) {
    let _ = crate::mls_framing::wire_format(data);
    let _ = crate::mls_framing::parse_message(data);
    let _ = crate::mls_framing::check_welcome(data);
    let _ = crate::mls_framing::parse_key_package(data);
}

/// The message search language.
///
/// # Panics
/// When a query is accepted with more terms than the limit.
pub fn search_query(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let limits = QueryLimits {
        max_chars: 256,
        max_terms: 16,
    };
    if let Ok(query) = parse(input, limits) {
        assert!(query.terms().count() <= limits.max_terms, "{input:?}");
    }
}

/// A WebSocket client frame, as the gateway reads it.
///
/// # Panics
/// When an accepted frame does not survive a serialize–parse round trip.
pub fn client_frame(data: &[u8]) {
    let Ok(frame) = serde_json::from_slice::<natter_proto::ws::ClientFrame>(data) else {
        return;
    };
    let again = serde_json::to_string(&frame).unwrap_or_default();
    let back = serde_json::from_str::<natter_proto::ws::ClientFrame>(&again)
        .ok()
        .and_then(|b| serde_json::to_string(&b).ok());
    assert_eq!(back.as_deref(), Some(again.as_str()), "not a round trip");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    /// A target's corpus directory and entry point.
    type Target = (&'static str, fn(&[u8]));

    /// Every seed of every target's corpus, on stable.
    #[test]
    fn the_fuzz_seed_corpora_run_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let targets: [Target; 5] = [
            ("range", super::range),
            ("tus_headers", super::tus_headers),
            ("mls_framing", super::mls_framing),
            ("search_query", super::search_query),
            ("client_frame", super::client_frame),
        ];
        for (name, target) in targets {
            let dir = root.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                target(&std::fs::read(entry.unwrap().path()).unwrap());
                seeds += 1;
            }
            assert!(seeds > 0, "no seeds in {}", dir.display());
        }
    }
}
