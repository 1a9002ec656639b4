//! `/api/openapi.json`: an OpenAPI 3.1 description of the device and admin APIs. Written by hand
//! from the `otter-proto` types (deriving it would tie the serde-only proto crate to an OpenAPI
//! library); a test checks every route in the router is described.

use axum::Json;
use serde_json::{Value, json};

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props})
}

fn op(summary: &str, auth: Option<&str>, body: Option<&str>, ok: (&str, Option<&str>)) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": {
            ok.0: match ok.1 {
                Some(s) => json!({"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}}),
                None => json!({"description": "success"}),
            },
            "4XX": {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}}
        }
    });
    if let Some(a) = auth {
        o["security"] = json!([{ a: [] }]);
    }
    if let Some(b) = body {
        let content = if b == "bundle" {
            json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
        } else {
            json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}})
        };
        o["requestBody"] = json!({"required": true, "content": content});
    }
    o
}

pub fn document() -> Value {
    let s = |t: &str| json!({"type": t});
    let os = |t: &str| json!({"type": [t, "null"]});
    let dev = Some("deviceToken");
    let adm = Some("adminToken");
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Otter fleet server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Device and admin API of otter server. See docs/api.md."},
        "components": {
            "securitySchemes": {
                "deviceToken": {"type": "http", "scheme": "bearer", "description": "token from /api/v1/device/enroll"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "admin token printed by otter server"}
            },
            "schemas": {
                "ApiError": obj(&["error", "message"], json!({"error": s("string"), "message": s("string")})),
                "Challenge": obj(&["challenge", "expires_in_secs"], json!({"challenge": s("string"), "expires_in_secs": s("integer")})),
                "EnrollRequest": obj(&["public_key", "compatible", "challenge", "signature"], json!({
                    "public_key": {"type": "string", "description": "64 hex chars"},
                    "compatible": s("string"), "name": os("string"), "enrollment_key": os("string"),
                    "os_version": os("string"), "challenge": s("string"),
                    "signature": {"type": "string", "description": "128 hex chars: Ed25519 over otter_proto::enroll_message v2 (challenge, public_key, compatible, name, os_version, SHA-256 of enrollment_key; see docs/api.md)"}})),
                "EnrollResponse": obj(&["device_id", "status"], json!({
                    "device_id": s("string"), "status": {"enum": ["accepted", "pending"]},
                    "token": s("string"), "retry_after_secs": s("integer")})),
                "TargetRelease": obj(&["release_id", "version", "compatible", "url", "size", "manifest_digest"], json!({
                    "release_id": s("string"), "version": s("string"), "compatible": s("string"), "url": s("string"),
                    "size": s("integer"), "manifest_digest": s("string"), "rollout_id": os("string")})),
                "TargetState": obj(&["device_id", "release", "poll_interval_secs"], json!({
                    "device_id": s("string"),
                    "release": {"oneOf": [{"$ref": "#/components/schemas/TargetRelease"}, {"type": "null"}]},
                    "poll_interval_secs": s("integer"),
                    "apps": {"$ref": "#/components/schemas/TargetApps", "description": "absent: keep the apps the device runs"}})),
                "UpdateReport": obj(&["version", "phase"], json!({
                    "version": s("string"),
                    "phase": {"enum": ["downloading", "installing", "installed", "rebooting", "trying", "committed", "failed", "rolled_back"]},
                    "progress": {"type": ["integer", "null"], "minimum": 0, "maximum": 100}, "error": os("string")})),
                "StateReport": {"type": "object", "additionalProperties": false, "properties": {
                    "os_version": os("string"), "booted_slot": {"enum": ["a", "b", null]},
                    "update": {"oneOf": [{"$ref": "#/components/schemas/UpdateReport"}, {"type": "null"}]},
                    "rollbacks": {"type": "array", "items": obj(&["version", "reason"], json!({"version": s("string"), "reason": s("string"), "at_ms": os("integer")}))},
                    "health": {"enum": ["healthy", "degraded", "unhealthy", null]},
                    "uptime_secs": os("integer"), "free_bytes": os("integer"),
                    "apps": {"oneOf": [{"$ref": "#/components/schemas/AppsReport"}, {"type": "null"}]}}},
                "LogBatch": obj(&["entries"], json!({"entries": {"type": "array", "maxItems": 1000, "items": obj(&["ts_ms", "message"], json!({
                    "ts_ms": s("integer"), "level": s("string"), "source": os("string"), "message": s("string")}))}})),
                "LogAck": obj(&["accepted"], json!({"accepted": s("integer")})),
                "Device": {"type": "object", "description": "otter_proto::admin::Device"},
                "DeviceList": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}},
                "Release": {"type": "object", "description": "otter_proto::admin::Release"},
                "ReleaseList": {"type": "array", "items": {"$ref": "#/components/schemas/Release"}},
                "Rollout": {"type": "object", "description": "otter_proto::admin::Rollout"},
                "RolloutList": {"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}},
                "CreateRollout": {"type": "object", "description": "otter_proto::admin::CreateRollout: `release` (OS release) or `app_release`, selector, phases, thresholds, device_deadline_secs"},
                "TagChange": obj(&[], json!({"add": {"type": "array", "items": s("string")}, "remove": {"type": "array", "items": s("string")}})),
                "PinRequest": obj(&["release"], json!({"release": os("string")})),
                "EnrollmentKey": {"type": "object", "description": "otter_proto::admin::EnrollmentKey"},
                "CreateEnrollmentKey": obj(&["name"], json!({"name": s("string")})),
                "TrustedKey": {"type": "object", "description": "otter_proto::admin::TrustedKey"},
                "AddTrustedKey": obj(&["pem"], json!({"pem": s("string")})),
                "LogLines": {"type": "array", "items": {"type": "object", "description": "otter_proto::admin::StoredLogEntry"}},
                "AuditList": {"type": "array", "items": {"type": "object", "description": "otter_proto::admin::AuditEntry"}},
                "WhoAmI": obj(&["admin", "server_version"], json!({"admin": s("string"), "server_version": s("string")}))
            }
        },
        "paths": {
            "/api/v1/device/challenge": {"get": op("a fresh enrollment challenge (single-use)", None, None, ("200", Some("Challenge")))},
            "/api/v1/device/enroll": {"post": op("enroll with proof of key possession", None, Some("EnrollRequest"), ("200", Some("EnrollResponse")))},
            "/api/v1/device/target": {"get": {
                "summary": "target state; 304 when If-None-Match matches; Otter-Poll-Interval header",
                "security": [{"deviceToken": []}],
                "parameters": [{"name": "If-None-Match", "in": "header", "schema": s("string")}],
                "responses": {"200": {"description": "target", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TargetState"}}}},
                              "304": {"description": "unchanged"}}}},
            "/api/v1/device/report": {"post": op("report the device state", dev, Some("StateReport"), ("204", None))},
            "/api/v1/device/logs": {"post": op("upload a batch of log lines (rate-limited per device: --log-rate; kept up to --log-quota per device)", dev, Some("LogBatch"), ("200", Some("LogAck")))},
            "/api/v1/device/artifacts/{release_id}": {"get": {
                "summary": "the targeted bundle; Range supported", "security": [{"deviceToken": []}],
                "parameters": [{"name": "release_id", "in": "path", "required": true, "schema": s("string")},
                               {"name": "Range", "in": "header", "schema": s("string")}],
                "responses": {"200": {"description": "whole bundle"}, "206": {"description": "the range"},
                              "403": {"description": "not targeted at this device"}}}},
            "/api/v1/admin/whoami": {"get": op("who the token belongs to", adm, None, ("200", Some("WhoAmI")))},
            "/api/v1/admin/devices": {"get": op("devices (filters: status, compatible, version, tag, online, q, limit 0 to 1000000)", adm, None, ("200", Some("DeviceList")))},
            "/api/v1/admin/devices/{id}": {"get": op("one device with its history", adm, None, ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/accept": {"post": op("accept", adm, None, ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/reject": {"post": op("reject (revokes tokens)", adm, None, ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/revoke": {"post": op("revoke the device's tokens", adm, None, ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/tags": {"post": op("add/remove tags", adm, Some("TagChange"), ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/pin": {"post": op("pin to a release or unpin", adm, Some("PinRequest"), ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/pin-apps": {"post": op("pin the device's apps to an app release or unpin", adm, Some("PinAppsRequest"), ("200", Some("Device")))},
            "/api/v1/admin/devices/{id}/logs": {"get": op("log lines (after, limit)", adm, None, ("200", Some("LogLines")))},
            "/api/v1/admin/enrollment-keys": {
                "get": op("enrollment keys (no secrets)", adm, None, ("200", Some("EnrollmentKey"))),
                "post": op("create an enrollment key (secret shown once)", adm, Some("CreateEnrollmentKey"), ("201", Some("EnrollmentKey")))},
            "/api/v1/admin/enrollment-keys/{id}/revoke": {"post": op("revoke an enrollment key", adm, None, ("204", None))},
            "/api/v1/admin/keys": {
                "get": op("trusted release keys", adm, None, ("200", Some("TrustedKey"))),
                "post": op("trust a release key", adm, Some("AddTrustedKey"), ("201", Some("TrustedKey")))},
            "/api/v1/admin/releases": {
                "get": op("releases", adm, None, ("200", Some("ReleaseList"))),
                "post": op("upload a signed bundle", adm, Some("bundle"), ("201", Some("Release")))},
            "/api/v1/admin/app-releases": {
                "get": op("app releases (without their sets)", adm, None, ("200", Some("AppReleaseList"))),
                "post": op("upload an app release: compose subset checked, every image pinned by digest", adm, Some("UploadAppRelease"), ("201", Some("AppRelease")))},
            "/api/v1/admin/app-releases/{id}": {"get": op("one app release (id or version) with its set", adm, None, ("200", Some("AppRelease")))},
            "/api/v1/admin/rollouts": {
                "get": op("rollouts", adm, None, ("200", Some("RolloutList"))),
                "post": op("create a phased rollout", adm, Some("CreateRollout"), ("201", Some("Rollout")))},
            "/api/v1/admin/rollouts/{id}": {"get": op("a rollout's phases, failures and events", adm, None, ("200", Some("Rollout")))},
            "/api/v1/admin/rollouts/{id}/{action}": {"post": op("pause, resume or abort", adm, None, ("200", Some("Rollout")))},
            "/api/v1/admin/audit": {"get": op("recorded state changes (subject, limit)", adm, None, ("200", Some("AuditList")))}
        }
    });
    if let (Some(all), Value::Object(apps)) =
        (doc["components"]["schemas"].as_object_mut(), app_schemas())
    {
        all.extend(apps);
    }
    doc
}

/// The schemas of app releases (apart from the rest: one `json!` of everything would exceed
/// the macro recursion limit).
fn app_schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    let os = |t: &str| json!({"type": [t, "null"]});
    json!({
                "AppSet": {"type": "object", "additionalProperties": false, "required": ["apps"], "properties": {
                    "apps": {"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["name", "compose"], "properties": {
                        "name": {"type": "string", "description": "a-z 0-9 - _, 1-63 characters"},
                        "compose": {"type": "string", "description": "compose file text (the subset of docs/apps.md)"},
                        "images": {"type": "object", "additionalProperties": s("string"), "description": "service → image reference (NAME@sha256:…)"}}}}}},
                "TargetApps": obj(&["app_release_id", "version", "digest", "set"], json!({
                    "app_release_id": s("string"), "version": s("string"),
                    "digest": {"type": "string", "description": "SHA-256 hex of the set's JSON as serialised by the server"},
                    "set": {"$ref": "#/components/schemas/AppSet"}, "rollout_id": os("string")})),
                "AppsReport": {"type": "object", "additionalProperties": false, "required": ["source"], "properties": {
                    "source": {"enum": ["builtin", "applied", "release"]},
                    "app_release_id": os("string"), "version": os("string"),
                    "last_apply": {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": false, "required": ["app_release_id", "version", "phase"], "properties": {
                        "app_release_id": s("string"), "version": s("string"),
                        "phase": {"enum": ["applying", "applied", "rolled_back", "failed", "refused", "deferred"]},
                        "progress": os("string"), "error": os("string"),
                        "apps": {"type": "array", "items": obj(&["app", "result"], json!({"app": s("string"), "result": s("string"), "reason": os("string")}))}}}]},
                    "services": {"type": "array", "maxItems": 500, "items": obj(&["app", "service", "image", "state", "health"], json!({
                        "app": s("string"), "service": s("string"), "image": s("string"),
                        "state": {"enum": ["running", "starting", "exited", "failed", "inactive", "unknown"]},
                        "health": {"enum": ["none", "starting", "healthy", "unhealthy"]}, "restarts": s("integer")}))}}},
                "PinAppsRequest": obj(&["app_release"], json!({"app_release": os("string")})),
                "UploadAppRelease": {"type": "object", "additionalProperties": false, "required": ["version", "set"], "properties": {
                    "version": {"type": "string", "description": "1-64 of A-Z a-z 0-9 . _ - +, unique"},
                    "set": {"$ref": "#/components/schemas/AppSet"}}},
                "AppRelease": obj(&["id", "version", "digest", "apps", "images", "uploaded_at_ms", "uploaded_by"], json!({
                    "id": s("string"), "version": s("string"), "digest": s("string"),
                    "apps": {"type": "array", "items": s("string")}, "images": {"type": "array", "items": s("string")},
                    "uploaded_at_ms": s("integer"), "uploaded_by": s("string"),
                    "set": {"$ref": "#/components/schemas/AppSet", "description": "only in GET /app-releases/{id}"}})),
                "AppReleaseList": {"type": "array", "items": {"$ref": "#/components/schemas/AppRelease"}}
    })
}

pub async fn handler() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn describes_every_api_route() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        let sources = [include_str!("device.rs"), include_str!("admin.rs")];
        // Every "/api/v1/…" literal in the routers, and every path the routers take from
        // otter-proto, is a documented path.
        for p in otter_proto::paths::ALL {
            assert!(paths.contains_key(*p), "{p} missing from openapi.json");
        }
        for src in sources {
            for piece in src.split("\"/api/v1/").skip(1) {
                let p = format!("/api/v1/{}", piece.split('"').next().unwrap());
                assert!(paths.contains_key(&p), "{p} missing from openapi.json");
            }
        }
        for (_, p) in [
            ("challenge", otter_proto::paths::CHALLENGE),
            ("enroll", otter_proto::paths::ENROLL),
            ("target", otter_proto::paths::TARGET),
            ("report", otter_proto::paths::REPORT),
            ("logs", otter_proto::paths::LOGS),
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
        // Every $ref resolves.
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }
}
