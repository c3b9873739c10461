//! Arbitrary bytes into the frame decoder and the body decoders: nothing
//! panics, a frame found stays within the bound, and whatever decodes —
//! as a request or as a response — re-encodes to exactly the same bytes
//! (the encoding is canonical). CI runs this target with a per-allocation
//! limit, so a length field that makes the decoder allocate beyond the
//! frame fails it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slsd::wire::{LENGTH_BYTES, Request, Response, split_frame};

/// The frame bound of the default configuration.
const MAX_FRAME: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((body, used))) = split_frame(data, MAX_FRAME) {
        assert!(body.len() <= MAX_FRAME as usize);
        assert_eq!(used, LENGTH_BYTES + body.len());
        canonical(body);
    }
    canonical(data);
});

fn canonical(body: &[u8]) {
    if let Ok(request) = Request::decode(body) {
        let mut again = Vec::new();
        request.encode_body(&mut again);
        assert_eq!(again, body, "a decoded request re-encodes to its bytes");
    }
    if let Ok(response) = Response::decode(body) {
        let mut again = Vec::new();
        response.encode_body(&mut again);
        assert_eq!(again, body, "a decoded response re-encodes to its bytes");
    }
}
