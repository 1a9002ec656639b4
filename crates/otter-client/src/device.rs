//! The device API's calls (after enrollment: `Authorization: Bearer DEVICE_TOKEN`).

use otter_proto::paths as p;
use otter_proto::{
    Challenge, EnrollRequest, EnrollResponse, LogAck, LogBatch, StateReport, TargetState,
};

use crate::Call;

pub fn challenge() -> Call<Challenge> {
    Call::get(p::CHALLENGE)
}

pub fn enroll(req: &EnrollRequest) -> Call<EnrollResponse> {
    Call::post(p::ENROLL, req)
}

/// The target state; `None` when it is still the one of `etag` (`304 Not Modified`). The
/// answer's [`crate::Answer::etag`] is the one to send next time.
pub fn target(etag: Option<&str>) -> Call<Option<TargetState>> {
    let mut c = Call::get(p::TARGET);
    c.if_none_match = etag.map(str::to_owned);
    c.not_modified_ok = true;
    c
}

/// Answers `204 No Content`.
pub fn report(r: &StateReport) -> Call<()> {
    Call::post(p::REPORT, r)
}

pub fn logs(batch: &LogBatch) -> Call<LogAck> {
    Call::post(p::LOGS, batch)
}
