//! The JSON bodies the fleet server reads from devices (enroll, state report, log batch), and the
//! enrollment proof check. What parses survives a write and a second parse unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_proto::{EnrollRequest, LogBatch, StateReport};

fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&v).expect("a parsed body serialises");
    let again: T = serde_json::from_slice(&text).expect("a written body parses");
    assert_eq!(v, again);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    if let Some(req) = round_trip::<EnrollRequest>(data) {
        let _ = req.verify_proof();
    }
    round_trip::<StateReport>(data);
    round_trip::<LogBatch>(data);
});
