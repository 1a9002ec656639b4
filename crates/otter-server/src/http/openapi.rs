//! `/api/openapi.json`: an OpenAPI 3.1 description of the device and admin APIs. Written by hand
//! from the `otter-proto` types (deriving it would tie the serde-only proto crate to an OpenAPI
//! library); a test checks every route in the router is described, and `scripts/api-fuzz` runs
//! schemathesis against it (every answer conforms, every refusal is documented).

mod schemas;

use axum::Json;
use otter_proto::paths::{self, admin as a};
use serde_json::{Map, Value, json};

use schemas::r;

/// Who may call an operation.
#[derive(Clone, Copy)]
enum Auth {
    Anyone,
    Device,
    Admin,
}

/// One operation, built up from its summary.
struct Op(Value);

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": json_content(r("ApiError"))})
}

impl Op {
    fn new(summary: &str, auth: Auth) -> Op {
        let mut o = json!({
            "summary": summary,
            "responses": {"4XX": error("refused: the ApiError's `error` says why (docs/api.md)")},
        });
        match auth {
            Auth::Anyone => o["security"] = json!([]),
            Auth::Device => {
                o["security"] = json!([{"deviceToken": []}]);
                o["responses"]["401"] = error("no token, not a device token, or a revoked one");
                o["responses"]["403"] =
                    error("the device is not accepted, or the artifact is not its target");
            }
            Auth::Admin => {
                o["security"] = json!([{"adminToken": []}]);
                o["responses"]["401"] = error("no token, not an admin token, or a revoked one");
            }
        }
        Op(o)
    }
    /// `status` answers with a JSON body of `schema` (`None`: no body).
    fn ok(mut self, status: &str, schema: Option<&str>) -> Op {
        self.0["responses"][status] = match schema {
            Some(s) => json!({"description": "success", "content": json_content(r(s))}),
            None => json!({"description": "success, no body"}),
        };
        self
    }
    /// Documents a refusal the operation makes for a well-formed request.
    fn refuses(mut self, status: &str, why: &str) -> Op {
        self.0["responses"][status] = error(why);
        self
    }
    fn body(mut self, schema: &str) -> Op {
        self.0["requestBody"] = json!({"required": true, "content": json_content(r(schema))});
        self.0["responses"]["400"] = error("the body is not JSON, or a value is out of range");
        self.0["responses"]["415"] = error("the body needs Content-Type: application/json");
        self.0["responses"]["422"] =
            error("JSON of the wrong shape (unknown field, wrong type, missing field)");
        self
    }
    fn param(mut self, name: &str, place: &str, schema: Value, description: &str) -> Op {
        let mut p =
            json!({"name": name, "in": place, "schema": schema, "description": description});
        if place == "path" {
            p["required"] = json!(true);
        }
        match self.0["parameters"].as_array_mut() {
            Some(ps) => ps.push(p),
            None => self.0["parameters"] = json!([p]),
        }
        self
    }
    /// The `{id}` path parameter.
    fn id(self, what: &str) -> Op {
        self.param("id", "path", json!({"type": "string"}), what)
    }
    fn query(self, name: &str, schema: Value, description: &str) -> Op {
        self.param(name, "query", schema, description)
    }
}

fn limit(max: u64, default: u64) -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": max, "default": default})
}

fn device_paths() -> Vec<(&'static str, &'static str, Op)> {
    use Auth::*;
    let artifact = format!("{}/{{release_id}}", paths::ARTIFACTS);
    let artifact: &'static str = Box::leak(artifact.into_boxed_str());
    let bytes =
        json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}});
    let mut art = Op::new(
        "the targeted bundle; one Range is answered with 206",
        Device,
    )
    .param(
        "release_id",
        "path",
        json!({"type": "string"}),
        "a release id (TargetRelease.release_id)",
    )
    .param(
        "Range",
        "header",
        json!({"type": "string"}),
        "bytes=START-END",
    )
    .refuses("404", "no such release")
    .refuses("416", "the Range does not fit the bundle");
    art.0["responses"]["200"] =
        json!({"description": "the whole bundle", "content": bytes.clone()});
    art.0["responses"]["206"] = json!({"description": "the range", "content": bytes});
    let mut target = Op::new(
        "the target state (ETag; Otter-Poll-Interval header)",
        Device,
    )
    .param(
        "If-None-Match",
        "header",
        json!({"type": "string"}),
        "the ETag of the target the device has",
    )
    .ok("200", Some("TargetState"));
    target.0["responses"]["304"] = json!({"description": "unchanged (If-None-Match matched)"});
    // Both answers carry the target's ETag and the seconds until the next poll.
    let headers = json!({
        "ETag": {"required": true, "schema": {"type": "string"}, "description": "the target's ETag (quoted)"},
        otter_proto::HEADER_POLL_INTERVAL: {"required": true, "schema": {"type": "integer", "minimum": 1}, "description": "seconds until the next poll, jitter included"}
    });
    for status in ["200", "304"] {
        target.0["responses"][status]["headers"] = headers.clone();
    }
    vec![
        (
            paths::CHALLENGE,
            "get",
            Op::new("a fresh enrollment challenge (single-use)", Anyone).ok("200", Some("Challenge")),
        ),
        (
            paths::ENROLL,
            "post",
            Op::new("enroll with proof of key possession", Anyone)
                .body("EnrollRequest")
                .ok("200", Some("EnrollResponse"))
                .refuses("403", "rejected or revoked device, or a bad enrollment key")
                .refuses(
                    "409",
                    "the challenge was used already, or the device is known with another compatible",
                )
                .refuses("429", "too many enrollment requests from this address"),
        ),
        (paths::TARGET, "get", target),
        (
            paths::REPORT,
            "post",
            Op::new("report the device state", Device)
                .body("StateReport")
                .ok("204", None),
        ),
        (
            paths::LOGS,
            "post",
            Op::new(
                "upload a batch of log lines (kept up to --log-quota per device, oldest pruned first)",
                Device,
            )
            .body("LogBatch")
            .ok("200", Some("LogAck"))
            .refuses("413", "more than 1000 entries, or a body over 1 MiB")
            .refuses("429", "over the device's log rate (--log-rate)"),
        ),
        (artifact, "get", art),
    ]
}

fn admin_paths() -> Vec<(&'static str, &'static str, Op)> {
    use Auth::Admin as A;
    let device = "a device id";
    let rollout = "a rollout id";
    vec![
        (
            a::WHOAMI,
            "get",
            Op::new("who the token belongs to", A).ok("200", Some("WhoAmI")),
        ),
        (
            a::DEVICES,
            "get",
            Op::new("devices, oldest enrollment first", A)
                .query(
                    "status",
                    json!({"enum": ["pending", "accepted", "rejected", "revoked"]}),
                    "only devices in this status",
                )
                .query("compatible", json!({"type": "string"}), "only this board")
                .query(
                    "version",
                    json!({"type": "string"}),
                    "only devices running this OS version",
                )
                .query(
                    "tag",
                    json!({"type": "string"}),
                    "only devices with this tag",
                )
                .query(
                    "online",
                    json!({"type": "boolean"}),
                    "only online (true) or offline (false) devices",
                )
                .query(
                    "q",
                    json!({"type": "string"}),
                    "a substring of the id or name",
                )
                .query("limit", limit(1_000_000, 1000), "at most this many devices")
                .ok("200", Some("DeviceList")),
        ),
        (
            a::DEVICE,
            "get",
            Op::new("one device with its history", A)
                .id(device)
                .ok("200", Some("DeviceDetail"))
                .refuses("404", "no such device"),
        ),
        (
            a::DEVICE_ACCEPT,
            "post",
            Op::new("accept a pending, rejected or revoked device", A)
                .id(device)
                .ok("200", Some("Device"))
                .refuses("404", "no such device")
                .refuses("409", "already accepted"),
        ),
        (
            a::DEVICE_REJECT,
            "post",
            Op::new("reject a device (revokes its tokens)", A)
                .id(device)
                .ok("200", Some("Device"))
                .refuses("404", "no such device")
                .refuses("409", "already rejected"),
        ),
        (
            a::DEVICE_REVOKE,
            "post",
            Op::new("revoke an accepted device's tokens", A)
                .id(device)
                .ok("200", Some("Device"))
                .refuses("404", "no such device")
                .refuses("409", "not accepted"),
        ),
        (
            a::DEVICE_TAGS,
            "post",
            Op::new("add and remove tags", A)
                .id(device)
                .body("TagChange")
                .ok("200", Some("Device"))
                .refuses("404", "no such device"),
        ),
        (
            a::DEVICE_PIN,
            "post",
            Op::new("pin to a release, or unpin", A)
                .id(device)
                .body("PinRequest")
                .ok("200", Some("Device"))
                .refuses("404", "no such device or release")
                .refuses("409", "the release is for another board"),
        ),
        (
            a::DEVICE_PIN_APPS,
            "post",
            Op::new("pin the apps to an app release, or unpin", A)
                .id(device)
                .body("PinAppsRequest")
                .ok("200", Some("Device"))
                .refuses("404", "no such device or app release"),
        ),
        (
            a::DEVICE_LOGS,
            "get",
            Op::new(
                "a device's log lines: after `after` (oldest first), else the newest",
                A,
            )
            .id(device)
            .query(
                "after",
                json!({"type": "integer", "format": "int64"}),
                "only lines with a greater id",
            )
            .query(
                "limit",
                json!({"type": "integer", "format": "int64", "default": 200}),
                "at most this many lines (1 to 10000)",
            )
            .ok("200", Some("LogLines"))
            .refuses("404", "no such device"),
        ),
        (
            a::ENROLLMENT_KEYS,
            "get",
            Op::new("enrollment keys (without secrets)", A).ok("200", Some("EnrollmentKeyList")),
        ),
        (
            a::ENROLLMENT_KEYS,
            "post",
            Op::new("create an enrollment key (its secret is shown once)", A)
                .body("CreateEnrollmentKey")
                .ok("201", Some("EnrollmentKey")),
        ),
        (
            a::ENROLLMENT_KEY_REVOKE,
            "post",
            Op::new("revoke an enrollment key", A)
                .id("an enrollment key id")
                .ok("204", None)
                .refuses("404", "no such enrollment key"),
        ),
        (
            a::KEYS,
            "get",
            Op::new("trusted release keys", A).ok("200", Some("TrustedKeyList")),
        ),
        (
            a::KEYS,
            "post",
            Op::new("trust a release key", A)
                .body("AddTrustedKey")
                .ok("201", Some("TrustedKey"))
                .refuses("409", "already trusted"),
        ),
        (
            a::RELEASES,
            "get",
            Op::new("releases", A).ok("200", Some("ReleaseList")),
        ),
        (
            a::APP_RELEASES,
            "get",
            Op::new("app releases (without their sets)", A).ok("200", Some("AppReleaseList")),
        ),
        (
            a::APP_RELEASES,
            "post",
            Op::new(
                "upload an app release: compose subset checked, every image pinned by digest",
                A,
            )
            .body("UploadAppRelease")
            .ok("201", Some("AppRelease"))
            .refuses("409", "an app release with this version exists"),
        ),
        (
            a::APP_RELEASE,
            "get",
            Op::new("one app release (id or version) with its set", A)
                .id("an app release id or version")
                .ok("200", Some("AppRelease"))
                .refuses("404", "no such app release"),
        ),
        (
            a::ROLLOUTS,
            "get",
            Op::new("rollouts", A).ok("200", Some("RolloutList")),
        ),
        (
            a::ROLLOUTS,
            "post",
            Op::new("create a phased rollout", A)
                .body("CreateRollout")
                .ok("201", Some("Rollout"))
                .refuses("404", "no such release")
                .refuses("409", "a rollout of this release is active"),
        ),
        (
            a::ROLLOUT,
            "get",
            Op::new("a rollout's phases, failures and events", A)
                .id(rollout)
                .ok("200", Some("Rollout"))
                .refuses("404", "no such rollout"),
        ),
        (
            a::ROLLOUT_ACTION,
            "post",
            Op::new("pause, resume or abort a rollout", A)
                .id(rollout)
                .param(
                    "action",
                    "path",
                    json!({"enum": ["pause", "resume", "abort"]}),
                    "what to do",
                )
                .ok("200", Some("Rollout"))
                .refuses("404", "no such rollout, or another action")
                .refuses("409", "the rollout's state does not allow it"),
        ),
        (
            a::AUDIT,
            "get",
            Op::new("recorded state changes, newest first", A)
                .query(
                    "subject",
                    json!({"type": "string"}),
                    "only changes of this subject (device:ID, rollout:ID, …)",
                )
                .query(
                    "limit",
                    json!({"type": "integer", "format": "int64", "default": 200}),
                    "at most this many (1 to 10000)",
                )
                .ok("200", Some("AuditList")),
        ),
    ]
}

/// The release upload: the bundle file as the body (no JSON, no size limit but the server's).
fn upload_release() -> Op {
    let mut o = Op::new("upload a signed bundle", Auth::Admin)
        .ok("201", Some("Release"))
        .refuses("400", "not a bundle, or not signed by a trusted key")
        .refuses("409", "a release with this version and board exists")
        .refuses("413", "larger than --max-bundle-size");
    o.0["requestBody"] = json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
    o
}

pub fn document() -> Value {
    let mut paths_obj = Map::new();
    let all = device_paths().into_iter().chain(admin_paths()).chain([(
        a::RELEASES,
        "post",
        upload_release(),
    )]);
    for (path, method, op) in all {
        let entry = paths_obj.entry(path).or_insert_with(|| json!({}));
        entry[method] = op.0;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Otter fleet server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Device and admin API of otter server. See docs/api.md."},
        "security": [],
        "components": {
            "securitySchemes": {
                "deviceToken": {"type": "http", "scheme": "bearer", "description": "token from /api/v1/device/enroll"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "admin token printed by otter server"}
            },
            "schemas": schemas::all(),
        },
        "paths": paths_obj,
    })
}

pub async fn handler() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
        // Every $ref resolves.
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }

    #[test]
    fn declares_every_path_parameter() {
        let doc = super::document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let wanted: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|p| p.split('}').next())
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, wanted, "{method} {path}");
                assert!(op["responses"]["4XX"].is_object(), "{method} {path}");
                if op["security"] != Value::Array(vec![]) {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                }
            }
        }
    }
}
