//! AFL++ target for the envelope decoder (`weft_bus::Envelope::from_slice`).
//!
//! For any bytes: decoding must not panic. When it succeeds, the envelope must
//! validate, encode, and decode again to the same envelope, and encoding that must
//! give the same bytes (the round trip is stable, as forwarding relies on). A failed
//! check panics, which AFL++ records as a crash.

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}

fn check(data: &[u8]) {
    let Ok(env) = weft_bus::Envelope::from_slice(data) else {
        return;
    };
    if let Err(e) = env.validate() {
        panic!("decoded but does not validate: {e}");
    }
    // Re-encoding can outgrow the limit only for inputs near it (numbers such as `1E2`
    // print longer); anything else must encode.
    let bytes = match env.to_bytes() {
        Ok(bytes) => bytes,
        Err(_) if data.len() > weft_bus::envelope::MAX_ENVELOPE_BYTES / 2 => return,
        Err(e) => panic!("decoded but does not encode: {e}"),
    };
    let again = match weft_bus::Envelope::from_slice(&bytes) {
        Ok(again) => again,
        Err(e) => panic!(
            "its own encoding does not decode: {e}: {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(again, env, "decode(encode(envelope)) differs");
    assert_eq!(
        again.to_bytes().ok().as_deref(),
        Some(bytes.as_slice()),
        "encoding is not stable"
    );
    // The payload survives as JSON too.
    let text: serde_json::Value = serde_json::from_slice(&bytes).expect("encoding is JSON");
    assert_eq!(text.get("payload"), env.payload.as_ref());
}
