//! The agent's frame decoder: no panic, no allocation past the frame limit,
//! and whatever decodes encodes back to the same frame.
#![no_main]

use faas_common::protocol::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let wire = frame.encode().expect("a decoded frame encodes");
        let again = Frame::read_from(&mut wire.as_slice()).expect("and decodes again");
        assert_eq!(again, frame);
    }
    let _ = Frame::read_from(&mut &data[..]);
});
