//! The `components.schemas` of `/api/openapi.json`: one JSON Schema per `otter-proto` type.
//!
//! Request bodies are closed (`additionalProperties: false`) exactly where the proto type has
//! `#[serde(deny_unknown_fields)]`, and a field is `required` exactly where serde needs it
//! (no `#[serde(default)]`, not an `Option`). Response bodies list the fields serde writes.

use serde_json::{Map, Value, json};

/// `{"$ref": "#/components/schemas/NAME"}`
pub fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The value or `null` (an `Option` that serde writes as `null`).
fn or_null(v: Value) -> Value {
    json!({"anyOf": [v, {"type": "null"}]})
}

fn s() -> Value {
    json!({"type": "string"})
}
fn os() -> Value {
    json!({"type": ["string", "null"]})
}
fn int() -> Value {
    json!({"type": "integer", "format": "int64"})
}
fn oint() -> Value {
    json!({"type": ["integer", "null"], "format": "int64"})
}
/// A `u64`.
fn uint() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}
fn ouint() -> Value {
    json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX})
}
fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}
/// A string of at most `max` characters (what the server's `check_len` allows).
fn sn(max: usize) -> Value {
    json!({"type": "string", "maxLength": max})
}
fn osn(max: usize) -> Value {
    json!({"type": ["string", "null"], "maxLength": max})
}
/// 1-128 of `[A-Za-z0-9._-]` (the server's `check_name_chars`: boards, tags, key names).
fn name() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"})
}

/// A request body type with `deny_unknown_fields`: no other properties.
fn closed(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}

/// A response body type: serde writes these properties (`required`: always).
fn open(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props})
}

fn device_props() -> Value {
    json!({
        "id": s(), "name": os(), "public_key": s(), "compatible": s(),
        "status": {"enum": ["pending", "accepted", "rejected", "revoked"]},
        "tags": strings(), "pinned_release": os(), "target_version": os(),
        "os_version": os(), "booted_slot": os(),
        "update": or_null(r("UpdateReport")),
        "health": {"enum": ["healthy", "degraded", "unhealthy", null]},
        "uptime_secs": ouint(), "free_bytes": ouint(),
        "enrolled_at_ms": int(), "last_seen_ms": oint(), "online": {"type": "boolean"},
        "pinned_app_release": os(), "target_app_version": os(),
        "apps": or_null(r("AppsReport"))
    })
}

const DEVICE_FIELDS: &[&str] = &[
    "id",
    "name",
    "public_key",
    "compatible",
    "status",
    "tags",
    "pinned_release",
    "target_version",
    "os_version",
    "booted_slot",
    "update",
    "health",
    "uptime_secs",
    "free_bytes",
    "enrolled_at_ms",
    "last_seen_ms",
    "online",
    "pinned_app_release",
    "target_app_version",
    "apps",
];

fn device_schemas(m: &mut Map<String, Value>) {
    let mut detail = device_props();
    detail["history"] =
        json!({"type": "array", "items": r("AuditEntry"), "description": "newest first"});
    let mut detail_fields = DEVICE_FIELDS.to_vec();
    detail_fields.push("history");
    let entries = [
        (
            "ApiError",
            open(&["error", "message"], json!({"error": s(), "message": s()})),
        ),
        (
            "Challenge",
            open(
                &["challenge", "expires_in_secs"],
                json!({"challenge": s(), "expires_in_secs": uint()}),
            ),
        ),
        (
            "EnrollRequest",
            closed(
                &["public_key", "compatible", "challenge", "signature"],
                json!({
            "public_key": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$", "description": "64 hex characters: the raw Ed25519 public key"},
            "compatible": name(), "name": osn(128), "enrollment_key": osn(128), "os_version": osn(64), "challenge": s(),
            "signature": {"type": "string", "pattern": "^[0-9a-fA-F]{128}$", "description": "128 hex characters: Ed25519 over otter_proto::enroll_message v2 (challenge, public key, compatible, name, os_version, SHA-256 of the enrollment key; docs/api.md)"}}),
            ),
        ),
        (
            "EnrollResponse",
            open(
                &["device_id", "status"],
                json!({
            "device_id": s(), "status": {"enum": ["accepted", "pending", "rejected"]},
            "token": {"type": "string", "description": "only when accepted"},
            "retry_after_secs": {"type": "integer", "minimum": 0, "description": "only when pending"}}),
            ),
        ),
        (
            "TargetRelease",
            open(
                &[
                    "release_id",
                    "version",
                    "compatible",
                    "url",
                    "size",
                    "manifest_digest",
                    "rollout_id",
                ],
                json!({
            "release_id": s(), "version": s(), "compatible": s(), "url": s(),
            "size": uint(), "manifest_digest": s(), "rollout_id": os()}),
            ),
        ),
        (
            "TargetState",
            open(
                &["device_id", "release", "poll_interval_secs"],
                json!({
            "device_id": s(), "release": or_null(r("TargetRelease")), "poll_interval_secs": uint(),
            "apps": {"$ref": "#/components/schemas/TargetApps", "description": "absent: keep the apps the device runs"}}),
            ),
        ),
        (
            "UpdateReport",
            closed(
                &["version", "phase"],
                json!({
            "version": sn(64),
            "phase": {"enum": ["downloading", "installing", "installed", "rebooting", "trying", "committed", "failed", "rolled_back"]},
            "progress": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
            "error": osn(4096)}),
            ),
        ),
        (
            "RollbackEvent",
            closed(
                &["version", "reason"],
                json!({"version": sn(64), "reason": sn(4096), "at_ms": oint()}),
            ),
        ),
        (
            "StateReport",
            closed(
                &[],
                json!({
            "os_version": osn(64), "booted_slot": {"enum": ["a", "b", null]},
            "update": or_null(r("UpdateReport")),
            "rollbacks": {"type": "array", "maxItems": 100, "items": r("RollbackEvent")},
            "health": {"enum": ["healthy", "degraded", "unhealthy", null]},
            "uptime_secs": ouint(), "free_bytes": ouint(),
            "apps": or_null(r("AppsReport"))}),
            ),
        ),
        (
            "LogEntry",
            closed(
                &["ts_ms", "message"],
                json!({
            "ts_ms": int(), "level": {"type": "string", "maxLength": 16, "default": "info"}, "source": osn(128), "message": sn(16384)}),
            ),
        ),
        (
            "LogBatch",
            closed(
                &["entries"],
                json!({"entries": {"type": "array", "maxItems": otter_proto::MAX_LOG_BATCH, "items": r("LogEntry")}}),
            ),
        ),
        ("LogAck", open(&["accepted"], json!({"accepted": uint()}))),
        ("Device", open(DEVICE_FIELDS, device_props())),
        ("DeviceList", json!({"type": "array", "items": r("Device")})),
        ("DeviceDetail", open(&detail_fields, detail)),
        (
            "TagChange",
            closed(
                &[],
                json!({
            "add": {"type": "array", "items": name(), "maxItems": 64, "description": "a device has at most 64 tags"},
            "remove": {"type": "array", "items": name()}}),
            ),
        ),
        (
            "PinRequest",
            closed(
                &[],
                json!({"release": {"type": ["string", "null"], "description": "release id or version; null or absent unpins"}}),
            ),
        ),
        (
            "PinAppsRequest",
            closed(
                &[],
                json!({"app_release": {"type": ["string", "null"], "description": "app release id or version; null or absent unpins"}}),
            ),
        ),
        (
            "AuditEntry",
            open(
                &["at_ms", "actor", "action", "subject", "detail"],
                json!({
            "at_ms": int(), "actor": s(), "action": s(), "subject": s(), "detail": s()}),
            ),
        ),
        (
            "AuditList",
            json!({"type": "array", "items": r("AuditEntry")}),
        ),
        (
            "StoredLogEntry",
            open(
                &[
                    "id",
                    "device_id",
                    "ts_ms",
                    "received_at_ms",
                    "level",
                    "source",
                    "message",
                ],
                json!({
            "id": int(), "device_id": s(), "ts_ms": int(), "received_at_ms": int(), "level": s(), "source": os(), "message": s()}),
            ),
        ),
        (
            "LogLines",
            json!({"type": "array", "items": r("StoredLogEntry")}),
        ),
        (
            "WhoAmI",
            open(
                &["admin", "server_version"],
                json!({"admin": s(), "server_version": s()}),
            ),
        ),
    ];
    m.extend(entries.into_iter().map(|(k, v)| (k.to_owned(), v)));
}

fn release_schemas(m: &mut Map<String, Value>) {
    let entries = [
        (
            "Release",
            open(
                &[
                    "id",
                    "version",
                    "compatible",
                    "size",
                    "manifest_digest",
                    "signer",
                    "uploaded_at_ms",
                    "uploaded_by",
                ],
                json!({
            "id": s(), "version": s(), "compatible": s(), "size": uint(), "manifest_digest": s(),
            "signer": s(), "uploaded_at_ms": int(), "uploaded_by": s()}),
            ),
        ),
        (
            "ReleaseList",
            json!({"type": "array", "items": r("Release")}),
        ),
        (
            "EnrollmentKey",
            open(
                &["id", "name", "created_at_ms", "revoked_at_ms"],
                json!({
            "id": s(), "name": s(), "created_at_ms": int(), "revoked_at_ms": oint(),
            "key": {"type": "string", "description": "the secret: only in the answer that created the key"}}),
            ),
        ),
        (
            "EnrollmentKeyList",
            json!({"type": "array", "items": r("EnrollmentKey")}),
        ),
        (
            "CreateEnrollmentKey",
            closed(&["name"], json!({"name": name()})),
        ),
        (
            "TrustedKey",
            open(
                &["fingerprint", "pem", "added_at_ms", "source"],
                json!({
            "fingerprint": s(), "pem": s(), "added_at_ms": int(), "source": s()}),
            ),
        ),
        (
            "TrustedKeyList",
            json!({"type": "array", "items": r("TrustedKey")}),
        ),
        (
            "AddTrustedKey",
            closed(
                &["pem"],
                json!({"pem": {"type": "string", "description": "SPKI PEM of an Ed25519 public key"}}),
            ),
        ),
        (
            "Selector",
            closed(&[], json!({"tags": strings(), "devices": strings()})),
        ),
        (
            "PhaseSpec",
            closed(
                &["percent"],
                json!({
            "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "description": "cumulative share, increasing; the last is 100"},
            "min_soak_secs": uint()}),
            ),
        ),
        (
            "CreateRollout",
            closed(
                &[],
                json!({
            "release": {"type": "string", "description": "OS release id or version (give this or app_release)"},
            "app_release": os(), "selector": r("Selector"),
            "phases": {"type": ["array", "null"], "minItems": 1, "maxItems": 20, "items": r("PhaseSpec"), "description": "default: 1, 10, 50, 100 percent with 10 minutes soak each"},
            "success_threshold": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1, "description": "default 0.95"},
            "failure_threshold": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1, "description": "default 0.05"},
            "device_deadline_secs": {"type": ["integer", "null"], "minimum": 1, "maximum": u64::MAX, "description": "default 3600"}}),
            ),
        ),
        (
            "PhaseStatus",
            open(
                &[
                    "percent",
                    "min_soak_secs",
                    "devices",
                    "succeeded",
                    "failed",
                    "started_at_ms",
                ],
                json!({
            "percent": {"type": "number"}, "min_soak_secs": uint(), "devices": uint(),
            "succeeded": uint(), "failed": uint(), "started_at_ms": oint()}),
            ),
        ),
        (
            "RolloutFailure",
            open(
                &["device_id", "reason", "at_ms"],
                json!({"device_id": s(), "reason": s(), "at_ms": int()}),
            ),
        ),
        (
            "Rollout",
            open(
                &[
                    "id",
                    "kind",
                    "release_id",
                    "version",
                    "compatible",
                    "state",
                    "phase",
                    "phases",
                    "success_threshold",
                    "failure_threshold",
                    "device_deadline_secs",
                    "total_devices",
                    "reason",
                    "created_at_ms",
                    "created_by",
                    "failures",
                    "events",
                ],
                json!({
            "id": s(), "kind": {"enum": ["os", "apps"]}, "release_id": s(), "version": s(), "compatible": s(),
            "state": {"enum": ["active", "paused", "aborted", "completed"]},
            "phase": uint(), "phases": {"type": "array", "items": r("PhaseStatus")},
            "success_threshold": {"type": "number"}, "failure_threshold": {"type": "number"},
            "device_deadline_secs": uint(), "total_devices": uint(), "reason": os(),
            "created_at_ms": int(), "created_by": s(),
            "failures": {"type": "array", "items": r("RolloutFailure")},
            "events": {"type": "array", "items": r("AuditEntry")}}),
            ),
        ),
        (
            "RolloutList",
            json!({"type": "array", "items": r("Rollout")}),
        ),
    ];
    m.extend(entries.into_iter().map(|(k, v)| (k.to_owned(), v)));
}

fn app_schemas(m: &mut Map<String, Value>) {
    let entries = [
        (
            "AppBody",
            closed(
                &["name", "compose"],
                json!({
            "name": {"type": "string", "description": "a-z 0-9 - _, 1-63 characters"},
            "compose": {"type": "string", "description": "compose file text (the subset of docs/apps.md)"},
            "images": {"type": "object", "additionalProperties": s(), "description": "service → image reference (NAME@sha256:…)"}}),
            ),
        ),
        (
            "AppSet",
            closed(
                &["apps"],
                json!({"apps": {"type": "array", "items": r("AppBody")}}),
            ),
        ),
        (
            "TargetApps",
            open(
                &["app_release_id", "version", "digest", "set", "rollout_id"],
                json!({
            "app_release_id": s(), "version": s(),
            "digest": {"type": "string", "description": "SHA-256 hex of the set's JSON as serialised by the server"},
            "set": r("AppSet"), "rollout_id": os()}),
            ),
        ),
        (
            "AppOutcome",
            closed(
                &["app", "result"],
                json!({"app": sn(64), "result": sn(32), "reason": osn(4096)}),
            ),
        ),
        (
            "AppApplyReport",
            closed(
                &["app_release_id", "version", "phase"],
                json!({
            "app_release_id": sn(64), "version": sn(64),
            "phase": {"enum": ["applying", "applied", "rolled_back", "failed", "refused", "deferred"]},
            "progress": osn(1024), "error": osn(4096),
            "apps": {"type": "array", "maxItems": 100, "items": r("AppOutcome")}}),
            ),
        ),
        (
            "ServiceReport",
            closed(
                &["app", "service", "image", "state", "health"],
                json!({
            "app": sn(64), "service": sn(64), "image": sn(512),
            "state": {"type": "string", "maxLength": 32, "description": "running, starting, exited, failed, inactive or unknown"},
            "health": {"type": "string", "maxLength": 32, "description": "none, starting, healthy or unhealthy"},
            "restarts": {"type": "integer", "minimum": 0, "maximum": u32::MAX}}),
            ),
        ),
        (
            "AppsReport",
            closed(
                &["source"],
                json!({
            "source": {"type": "string", "maxLength": 16, "description": "builtin, applied or release"},
            "app_release_id": osn(64), "version": osn(64),
            "last_apply": or_null(r("AppApplyReport")),
            "services": {"type": "array", "maxItems": 500, "items": r("ServiceReport")}}),
            ),
        ),
        (
            "UploadAppRelease",
            closed(
                &["version", "set"],
                json!({
            "version": {"type": "string", "pattern": "^[A-Za-z0-9._+-]{1,64}$", "description": "unique among app releases"},
            "set": r("AppSet")}),
            ),
        ),
        (
            "AppRelease",
            open(
                &[
                    "id",
                    "version",
                    "digest",
                    "apps",
                    "images",
                    "uploaded_at_ms",
                    "uploaded_by",
                ],
                json!({
            "id": s(), "version": s(), "digest": s(), "apps": strings(), "images": strings(),
            "uploaded_at_ms": int(), "uploaded_by": s(),
            "set": {"$ref": "#/components/schemas/AppSet", "description": "only in GET /app-releases/{id}"}}),
            ),
        ),
        (
            "AppReleaseList",
            json!({"type": "array", "items": r("AppRelease")}),
        ),
    ];
    m.extend(entries.into_iter().map(|(k, v)| (k.to_owned(), v)));
}

/// Every schema, by name.
pub fn all() -> Value {
    let mut m = Map::new();
    device_schemas(&mut m);
    release_schemas(&mut m);
    app_schemas(&mut m);
    Value::Object(m)
}
