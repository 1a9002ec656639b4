//! The web dashboard: server-rendered HTML (no JavaScript, nothing to build). Read-only; changes
//! go through the CLI / admin API. Signing in stores the admin token in an HttpOnly, SameSite
//! cookie; `/login?token=…` (the link `otter server` prints) does it in one click.

use std::fmt::Write;

use axum::Form;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::AppState;
use crate::auth::hash_secret;
use crate::devices::{DeviceFilter, audit_for, load_device, query_devices, query_logs};
use crate::error::ApiErr;
use crate::store::{self, now_ms};
use crate::{releases, rollouts};

const COOKIE: &str = "otter_admin";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login_form))
        .route("/logout", get(logout))
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .route("/releases", get(releases_page))
        .route("/rollouts", get(rollouts_page))
        .route("/rollouts/{id}", get(rollout_page))
}

/// HTML-escapes text. Hand-written: five replacements do not justify a template engine, and
/// every dynamic value on these pages goes through it.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// [`esc`] for text shown as one line of a `<pre>` (device log lines): control characters,
/// newlines included, are shown as `\u{..}`, so a log line cannot forge the lines after it.
pub fn esc_line(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            o.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            o.push(c);
        }
    }
    esc(&o)
}

fn ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let s = (now_ms() - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

const CSS: &str = r#"
body{font-family:"DejaVu Sans",sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#17324d;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3f7;text-decoration:none;font-weight:bold}header .brand{color:#fff;font-size:20px}
main{padding:16px 24px}h1{font-size:22px;margin:8px 0 16px}h2{font-size:17px;margin:20px 0 8px}
.cards{display:flex;gap:16px;flex-wrap:wrap}.card{background:#fff;border-radius:6px;padding:12px 16px;min-width:150px;box-shadow:0 1px 2px #0002}
.card .n{font-size:28px;font-weight:bold}.card .l{color:#5b6b7b;font-size:13px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0002}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e8ee;font-size:13px}th{background:#e9eef3}
.ok{color:#1e7e3e}.bad{color:#c0392b}.muted{color:#8795a1}
.pill{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;background:#e3e8ee}
.pill.online{background:#d3f0dc;color:#1e7e3e}.pill.offline{background:#eee;color:#777}
.pill.active{background:#d6e9fb;color:#17538a}.pill.paused{background:#fde2c8;color:#9a4b00}
.pill.completed{background:#d3f0dc;color:#1e7e3e}.pill.aborted{background:#f7d4d0;color:#a02c1f}
.pill.pending{background:#fff1b8;color:#7a5d00}.pill.rejected,.pill.revoked{background:#f7d4d0;color:#a02c1f}
.bar{display:flex;height:18px;width:360px;background:#dde3e9;border-radius:4px;overflow:hidden}
.bar .s{background:#2e9e4f}.bar .f{background:#d64541}.bar .t{background:#7fb3e0}
.vbar{display:inline-block;height:14px;background:#3b7dd8;border-radius:3px;vertical-align:middle}
form.filters{margin:0 0 12px;display:flex;gap:8px;align-items:center}
form.filters input,form.filters select{padding:4px}
pre.logs{background:#0f1a24;color:#d9e4ee;padding:10px;font-size:12px;overflow:auto;max-height:420px}
.reason{background:#fff4e5;border-left:4px solid #e67e22;padding:8px 12px;margin:8px 0}
"#;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} · Otter</title><style>{CSS}</style></head>\
         <body><header><span class=\"brand\">Otter</span><a href=\"/\">Overview</a><a href=\"/devices\">Devices</a>\
         <a href=\"/releases\">Releases</a><a href=\"/rollouts\">Rollouts</a><span style=\"flex:1\"></span><a href=\"/logout\">Sign out</a></header>\
         <main>{body}</main></body></html>",
        esc(title)
    ))
}

/// A dashboard visitor with a valid admin token cookie; others are sent to /login.
pub struct Viewer;

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let token = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.to_owned());
        let Some(token) = token else {
            return Err(Redirect::to("/login").into_response());
        };
        if valid_admin(st, &token)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Ok(Viewer)
        } else {
            Err(Redirect::to("/login").into_response())
        }
    }
}

async fn valid_admin(st: &AppState, token: &str) -> Result<bool, ApiErr> {
    Ok(store::tokens::admin_token_valid(&st.db, &hash_secret(token)).await?)
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

fn signed_in(token: &str) -> Response {
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn login_html(msg: &str) -> Response {
    let body = format!(
        "<h1>Sign in</h1>{msg}<form method=\"post\" action=\"/login\" class=\"filters\">\
         <input name=\"token\" type=\"password\" size=\"50\" placeholder=\"admin token (printed by otter server on its first start)\">\
         <button>Sign in</button></form>"
    );
    let mut r = page("Sign in", &body).into_response();
    if !msg.is_empty() {
        *r.status_mut() = StatusCode::UNAUTHORIZED;
    }
    r
}

async fn login_page(State(st): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    match q.token {
        Some(t) => match valid_admin(&st, &t).await {
            Ok(true) => signed_in(&t),
            Ok(false) => login_html("<p class=\"bad\">That token is not valid.</p>"),
            Err(e) => e.into_response(),
        },
        None => login_html(""),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form(State(st): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    match valid_admin(&st, f.token.trim()).await {
        Ok(true) => signed_in(f.token.trim()),
        Ok(false) => login_html("<p class=\"bad\">That token is not valid.</p>"),
        Err(e) => e.into_response(),
    }
}

async fn logout() -> Response {
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("otter_admin=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

type PageResult = Result<Html<String>, ApiErr>;

fn pill(class: &str, text: &str) -> String {
    format!("<span class=\"pill {}\">{}</span>", esc(class), esc(text))
}

async fn overview(State(st): State<AppState>, _v: Viewer) -> PageResult {
    let now = now_ms();
    let online_since = now - 3 * st.cfg.poll_interval.as_millis() as i64;
    let mut by_status = std::collections::BTreeMap::new();
    for (status, n) in store::devices::count_by_status(&st.db).await? {
        by_status.insert(status, n);
    }
    let total: i64 = by_status.values().sum();
    let online = store::devices::count_online(&st.db, online_since).await?;
    let accepted = by_status.get("accepted").copied().unwrap_or(0);
    let mut body = String::from("<h1>Fleet overview</h1><div class=\"cards\">");
    for (n, l) in [
        (total, "devices"),
        (accepted, "accepted"),
        (online, "online"),
        (accepted - online, "offline"),
        (by_status.get("pending").copied().unwrap_or(0), "pending"),
    ] {
        let _ = write!(
            body,
            "<div class=\"card\" id=\"card-{l}\"><div class=\"n\">{n}</div><div class=\"l\">{l}</div></div>"
        );
    }
    body.push_str("</div><h2>Devices per version</h2><table id=\"versions\"><tr><th>version</th><th>devices</th><th>online</th><th></th></tr>");
    for (v, n, on) in store::devices::count_by_version(&st.db, online_since).await? {
        let width = if accepted > 0 { 300 * n / accepted } else { 0 };
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices?version={0}\">{0}</a></td><td>{n}</td><td>{on}</td><td><span class=\"vbar\" style=\"width:{width}px\"></span></td></tr>",
            esc(v.as_deref().unwrap_or("unknown"))
        );
    }
    body.push_str("</table><h2>Devices per state</h2><table id=\"states\"><tr><th>state</th><th>devices</th></tr>");
    for (s, n) in &by_status {
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices?status={0}\">{1}</a></td><td>{n}</td></tr>",
            esc(s),
            pill(s, s)
        );
    }
    body.push_str("</table>");
    body.push_str(&rollout_table(&st, true).await?);
    Ok(page("Overview", &body))
}

fn phase_bar(p: &otter_proto::admin::PhaseStatus) -> String {
    let n = p.devices.max(1) as f64;
    let s = 360.0 * p.succeeded as f64 / n;
    let f = 360.0 * p.failed as f64 / n;
    let t = if p.started_at_ms.is_some() {
        360.0 * (p.devices - p.succeeded - p.failed) as f64 / n
    } else {
        0.0
    };
    format!(
        "<div class=\"bar\"><div class=\"s\" style=\"width:{s:.0}px\"></div><div class=\"f\" style=\"width:{f:.0}px\"></div><div class=\"t\" style=\"width:{t:.0}px\"></div></div>"
    )
}

async fn rollout_table(st: &AppState, only_open: bool) -> Result<String, ApiErr> {
    let list = rollouts::list(st).await?;
    let mut body = String::from(if only_open {
        "<h2>Active and paused rollouts</h2>"
    } else {
        "<h1>Rollouts</h1>"
    });
    body.push_str("<table id=\"rollouts\"><tr><th>rollout</th><th>release</th><th>state</th><th>phase</th><th>devices</th><th>succeeded</th><th>failed</th><th>progress</th></tr>");
    for r in list.iter().filter(|r| {
        !only_open
            || matches!(
                r.state,
                otter_proto::admin::RolloutState::Active | otter_proto::admin::RolloutState::Paused
            )
    }) {
        let succeeded: u64 = r.phases.iter().map(|p| p.succeeded).sum();
        let failed: u64 = r.phases.iter().map(|p| p.failed).sum();
        let whole = otter_proto::admin::PhaseStatus {
            percent: 100.0,
            min_soak_secs: 0,
            devices: r.total_devices,
            succeeded,
            failed,
            started_at_ms: Some(r.created_at_ms),
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"/rollouts/{0}\">{0}</a></td><td>{1} <span class=\"muted\">{2}</span></td><td>{3}</td><td>{4} of {5}</td><td>{6}</td><td class=\"ok\">{succeeded}</td><td class=\"bad\">{failed}</td><td>{7}</td></tr>",
            esc(&r.id),
            esc(&r.version),
            esc(&r.compatible),
            pill(r.state.as_str(), r.state.as_str()),
            r.phase + 1,
            r.phases.len(),
            r.total_devices,
            phase_bar(&whole)
        );
    }
    body.push_str("</table>");
    Ok(body)
}

async fn devices(
    State(st): State<AppState>,
    _v: Viewer,
    Query(mut f): Query<DeviceFilter>,
) -> PageResult {
    // Empty form fields mean "any".
    for v in [
        &mut f.status,
        &mut f.compatible,
        &mut f.version,
        &mut f.tag,
        &mut f.q,
    ] {
        if v.as_deref() == Some("") {
            *v = None;
        }
    }
    f.limit = Some(f.limit.unwrap_or(500).min(5000));
    let list = query_devices(&st, &f).await?;
    let sel = |cur: &Option<String>, v: &str| {
        if cur.as_deref() == Some(v) {
            " selected"
        } else {
            ""
        }
    };
    let mut body = String::from("<h1>Devices</h1><form class=\"filters\" method=\"get\">");
    let _ = write!(
        body,
        "<select name=\"status\"><option value=\"\">any status</option><option{}>pending</option><option{}>accepted</option><option{}>rejected</option><option{}>revoked</option></select>\
         <input name=\"version\" placeholder=\"version\" value=\"{}\"><input name=\"tag\" placeholder=\"tag\" value=\"{}\">\
         <input name=\"compatible\" placeholder=\"board\" value=\"{}\"><input name=\"q\" placeholder=\"id or name\" value=\"{}\"><button>Filter</button></form>",
        sel(&f.status, "pending"),
        sel(&f.status, "accepted"),
        sel(&f.status, "rejected"),
        sel(&f.status, "revoked"),
        esc(f.version.as_deref().unwrap_or("")),
        esc(f.tag.as_deref().unwrap_or("")),
        esc(f.compatible.as_deref().unwrap_or("")),
        esc(f.q.as_deref().unwrap_or("")),
    );
    let _ = write!(
        body,
        "<p class=\"muted\">{} device(s) shown</p>",
        list.len()
    );
    body.push_str("<table id=\"devices\"><tr><th>device</th><th>name</th><th>status</th><th>board</th><th>version</th><th>target</th><th>update</th><th>tags</th><th>seen</th></tr>");
    for d in &list {
        let update = d
            .update
            .as_ref()
            .map(|u| {
                format!(
                    "{} {}{}",
                    u.version,
                    u.phase.as_str(),
                    u.progress.map(|p| format!(" {p}%")).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7}</td><td>{8} {9}</td></tr>",
            esc(&d.id),
            esc(d.name.as_deref().unwrap_or("")),
            pill(d.status.as_str(), d.status.as_str()),
            esc(&d.compatible),
            esc(d.os_version.as_deref().unwrap_or("")),
            esc(d.target_version.as_deref().unwrap_or("")),
            esc(&update),
            esc(&d.tags.join(", ")),
            if d.online {
                pill("online", "online")
            } else {
                pill("offline", "offline")
            },
            esc(&ago(d.last_seen_ms)),
        );
    }
    body.push_str("</table>");
    Ok(page("Devices", &body))
}

async fn device(State(st): State<AppState>, _v: Viewer, Path(id): Path<String>) -> PageResult {
    let d = load_device(&st, &id).await?;
    let history = audit_for(&st, &format!("device:{id}"), 100).await?;
    let logs = query_logs(&st, &id, None, 200).await?;
    let mut body = format!(
        "<h1>Device {} {}</h1><table id=\"state\" style=\"width:auto\">",
        esc(&d.id),
        if d.online {
            pill("online", "online")
        } else {
            pill("offline", "offline")
        }
    );
    let update = d.update.as_ref().map(|u| {
        format!(
            "{} {}{}{}",
            u.version,
            u.phase.as_str(),
            u.progress.map(|p| format!(" {p}%")).unwrap_or_default(),
            u.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
    });
    for (k, v) in [
        ("name", d.name.clone()),
        ("status", Some(d.status.as_str().to_owned())),
        ("board", Some(d.compatible.clone())),
        ("version", d.os_version.clone()),
        ("booted slot", d.booted_slot.clone()),
        ("target", d.target_version.clone()),
        ("pinned to", d.pinned_release.clone()),
        ("update", update),
        ("health", d.health.map(|h| h.as_str().to_owned())),
        (
            "uptime",
            d.uptime_secs
                .map(|s| format!("{}h {}m", s / 3600, s / 60 % 60)),
        ),
        (
            "free space",
            d.free_bytes
                .map(|b| format!("{:.1} GiB", b as f64 / 1073741824.0)),
        ),
        ("tags", Some(d.tags.join(", "))),
        ("last seen", Some(ago(d.last_seen_ms))),
        ("enrolled", Some(ago(Some(d.enrolled_at_ms)))),
    ] {
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(k),
            esc(v.as_deref().unwrap_or("–"))
        );
    }
    body.push_str("</table>");
    device_apps(&mut body, &d);
    body.push_str("<h2>History</h2><table id=\"history\"><tr><th>when</th><th>who</th><th>what</th><th>detail</th></tr>");
    for h in &history {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&ago(Some(h.at_ms))),
            esc(&h.actor),
            esc(&h.action),
            esc(&h.detail)
        );
    }
    body.push_str("</table><h2>Logs</h2><pre class=\"logs\" id=\"logs\">");
    for l in &logs {
        let _ = writeln!(
            body,
            "{} {:<7} {}: {}",
            l.ts_ms,
            esc_line(&l.level),
            esc_line(l.source.as_deref().unwrap_or("-")),
            esc_line(&l.message)
        );
    }
    body.push_str("</pre>");
    Ok(page(&format!("Device {id}"), &body))
}

/// The device page's apps: source and app release, the last app update, each service.
fn device_apps(body: &mut String, d: &otter_proto::admin::Device) {
    body.push_str("<h2>Apps</h2><table id=\"apps\">");
    let row = |body: &mut String, k: &str, v: &str| {
        let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    };
    row(
        body,
        "target",
        d.target_app_version.as_deref().unwrap_or("–"),
    );
    if let Some(p) = &d.pinned_app_release {
        row(body, "pinned to", p);
    }
    let Some(a) = &d.apps else {
        row(body, "running", "– (not reported)");
        body.push_str("</table>");
        return;
    };
    row(
        body,
        "running",
        &format!("{} {}", a.source, a.version.as_deref().unwrap_or("")),
    );
    if let Some(l) = &a.last_apply {
        let mut v = format!("{} {}", l.version, l.phase.as_str());
        if let Some(p) = &l.progress {
            let _ = write!(v, " ({p})");
        }
        if let Some(e) = &l.error {
            let _ = write!(v, ": {e}");
        }
        row(body, "last update", &v);
    }
    body.push_str("</table><table id=\"services\"><tr><th>service</th><th>state</th><th>health</th><th>restarts</th><th>image</th></tr>");
    for s in &a.services {
        let class = if s.is_ok() { "ok" } else { "bad" };
        let _ = write!(
            body,
            "<tr><td>{}.{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.app),
            esc(&s.service),
            pill(class, &s.state),
            pill(class, &s.health),
            s.restarts,
            esc(&s.image)
        );
    }
    body.push_str("</table>");
}

async fn releases_page(State(st): State<AppState>, _v: Viewer) -> PageResult {
    let list = releases::list(&st).await?;
    let mut body = String::from(
        "<h1>Releases</h1><table id=\"releases\"><tr><th>version</th><th>board</th><th>id</th><th>size</th><th>signed by</th><th>uploaded</th></tr>",
    );
    for r in &list {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} MiB</td><td>{}</td><td>{} by {}</td></tr>",
            esc(&r.version),
            esc(&r.compatible),
            esc(&r.id),
            r.size as f64 / 1048576.0,
            esc(&r.signer),
            esc(&ago(Some(r.uploaded_at_ms))),
            esc(&r.uploaded_by)
        );
    }
    body.push_str("</table>");
    Ok(page("Releases", &body))
}

async fn rollouts_page(State(st): State<AppState>, _v: Viewer) -> PageResult {
    let body = rollout_table(&st, false).await?;
    Ok(page("Rollouts", &body))
}

async fn rollout_page(
    State(st): State<AppState>,
    _v: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let r = rollouts::load(&st, &id).await?;
    let mut body = format!(
        "<h1>Rollout {} {}</h1><p>{} <b>{}</b> ({}) for <b>{}</b>: {} device(s). Advance at {:.0}% success, pause above {:.0}% failures, devices silent for {} s count as failed. Created {} by {}.</p>",
        esc(&r.id),
        pill(r.state.as_str(), r.state.as_str()),
        match r.kind {
            otter_proto::admin::RolloutKind::Os => "Release",
            otter_proto::admin::RolloutKind::Apps => "App release (no reboot)",
        },
        esc(&r.version),
        esc(&r.release_id),
        esc(if r.compatible.is_empty() {
            "any board"
        } else {
            &r.compatible
        }),
        r.total_devices,
        r.success_threshold * 100.0,
        r.failure_threshold * 100.0,
        r.device_deadline_secs,
        esc(&ago(Some(r.created_at_ms))),
        esc(&r.created_by)
    );
    if let Some(reason) = &r.reason {
        let _ = write!(
            body,
            "<div class=\"reason\" id=\"reason\">{}</div>",
            esc(reason)
        );
    }
    body.push_str("<h2>Phases</h2><table id=\"phases\"><tr><th>phase</th><th>share</th><th>soak</th><th>devices</th><th>succeeded</th><th>failed</th><th>progress</th><th>started</th></tr>");
    for (i, p) in r.phases.iter().enumerate() {
        let cur = if i == r.phase { " ◀" } else { "" };
        let _ = write!(
            body,
            "<tr><td>{}{cur}</td><td>{}%</td><td>{} s</td><td>{}</td><td class=\"ok\">{}</td><td class=\"bad\">{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            p.percent,
            p.min_soak_secs,
            p.devices,
            p.succeeded,
            p.failed,
            phase_bar(p),
            esc(&p
                .started_at_ms
                .map_or("not started".into(), |t| ago(Some(t))))
        );
    }
    body.push_str("</table><h2>Failures</h2><table id=\"failures\"><tr><th>device</th><th>reason</th><th>when</th></tr>");
    for f in &r.failures {
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices/{0}\">{0}</a></td><td class=\"bad\">{1}</td><td>{2}</td></tr>",
            esc(&f.device_id),
            esc(&f.reason),
            esc(&ago(Some(f.at_ms)))
        );
    }
    body.push_str("</table><h2>Events</h2><table id=\"events\"><tr><th>when</th><th>who</th><th>what</th><th>detail</th></tr>");
    for e in &r.events {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&ago(Some(e.at_ms))),
            esc(&e.actor),
            esc(&e.action),
            esc(&e.detail)
        );
    }
    body.push_str("</table>");
    Ok(page(&format!("Rollout {id}"), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_stay_one_line() {
        assert_eq!(
            esc_line("a\nb <i>\r\u{1b}[2J\tc"),
            "a\\u{a}b &lt;i&gt;\\u{d}\\u{1b}[2J\tc"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
