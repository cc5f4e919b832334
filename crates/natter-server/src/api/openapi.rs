//! The OpenAPI document as served: utoipa's document from the handlers,
//! plus what every handler shares and so does not repeat, written once
//! here: the answers of the extractors and middleware (401 from
//! [`Principal`](crate::service::Principal), 400/413/415/422 from the JSON
//! extractors, 408 from the deadline, 431 from the header limit, 503 from the
//! store) and the configured limits as schema constraints (string lengths,
//! item counts, query ranges), so a client generated from the document, or a
//! fuzzer, sends what this server accepts.
//!
//! The handlers' own `responses(...)` win where they declare a status: theirs
//! say why for that route.

use serde_json::{Value, json};

use crate::config::{Config, SignupMode};

/// The common answers, by name in `components.responses`, with their status.
const COMMON: &[(&str, u16, &str)] = &[
    (
        "Unauthorized",
        401,
        "No valid token: send `Authorization: Bearer <token>` (`unauthorized`).",
    ),
    (
        "InvalidJson",
        400,
        "The body is not valid JSON, or nested deeper than `limits.max_json_depth` (`invalid_json`).",
    ),
    (
        "InvalidParameter",
        400,
        "A query parameter is malformed, unknown or out of range (`invalid_parameter`).",
    ),
    (
        "RequestTimeout",
        408,
        "The request took longer than `limits.request_timeout_secs` (`request_timeout`).",
    ),
    (
        "PayloadTooLarge",
        413,
        "The body is larger than the route's limit (`payload_too_large`).",
    ),
    (
        "UnsupportedMediaType",
        415,
        "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`).",
    ),
    (
        "ValidationFailed",
        422,
        "Well-formed JSON of the wrong shape or out of bounds: a missing or unknown field, a wrong type \
         (an integer is written without a fraction or exponent: `44.0` is refused), `null` for a field \
         that may only be left out, a value the rules refuse (`validation_failed`).",
    ),
    (
        "RateLimited",
        429,
        "Too many requests of this kind lately; `Retry-After` says how many seconds to wait (`rate_limited`).",
    ),
    (
        "HeadersTooLarge",
        431,
        "The header fields are larger than `limits.max_header_bytes` (`headers_too_large`).",
    ),
    (
        "Unavailable",
        503,
        "The store failed; retry later (`unavailable`).",
    ),
];

/// Control, separator and invisible formatting characters, which texts
/// people write may not hold (the body of an ECMA-262 character class).
macro_rules! hidden {
    () => {
        "\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff\\ufff9-\\ufffb"
    };
}

/// A text with nothing hidden in it.
const NOTHING_HIDDEN: &str = concat!("^[^", hidden!(), "]*$");

/// A text with something visible and nothing hidden in it.
const VISIBLE: &str = concat!(
    "^[^",
    hidden!(),
    "]*[^\\s",
    hidden!(),
    "][^",
    hidden!(),
    "]*$"
);

/// A phone number in international format (E.164); the server also parses
/// it by libphonenumber's rules.
const PHONE: &str = "^\\+[1-9][0-9]{6,14}$";

/// Standard base64, padded.
const BASE64: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";

/// The length of the padded base64 of `bytes` bytes.
fn base64_len(bytes: u64) -> u64 {
    bytes.div_ceil(3) * 4
}

/// Standard base64 of exactly `bytes` bytes.
fn base64_exact(bytes: u64) -> String {
    let full = bytes / 3 * 4;
    match bytes % 3 {
        1 => format!("^[A-Za-z0-9+/]{{{}}}[AQgw]==$", full + 1),
        2 => format!("^[A-Za-z0-9+/]{{{}}}[AEIMQUYcgkosw048]=$", full + 2),
        _ => format!("^[A-Za-z0-9+/]{{{full}}}$"),
    }
}

/// The operations behind a rate limit of the `ratelimit` table (the
/// WebSocket's own budgets close the socket instead).
const RATE_LIMITED: &[(&str, &str)] = &[
    ("post", "/api/v1/users/verification"),
    ("post", "/api/v1/users/register"),
    ("post", "/api/v1/users/login"),
    ("post", "/api/v1/users/contacts"),
    ("post", "/api/v1/users/contacts/discover"),
    ("post", "/api/v1/chats"),
    ("post", "/api/v1/chats/{chat_id}/participants"),
    ("post", "/api/v1/messages"),
    ("post", "/api/v1/key-packages/claim"),
    ("post", "/api/v1/media/upload"),
    ("post", "/api/v1/media/tus"),
    ("post", "/api/v1/devices/{device_id}/push"),
];

/// What the server refuses although the schema allows it: rules across
/// fields, or about the server's state, that a JSON Schema cannot state.
/// Appended to the operation's description.
const RULES: &[(&str, &str, &str)] = &[
    (
        "post",
        "/api/v1/users/verification",
        "The number must also be valid by libphonenumber's rules (400 `invalid_phone`).",
    ),
    (
        "post",
        "/api/v1/users/register",
        "The number must also be valid by libphonenumber's rules (400 `invalid_phone`).",
    ),
    (
        "post",
        "/api/v1/users/login",
        "The number must also be valid by libphonenumber's rules (400 `invalid_phone`).",
    ),
    (
        "post",
        "/api/v1/users/contacts",
        "Send exactly one of `phone` and `user_id`, not the caller's own (422).",
    ),
    (
        "post",
        "/api/v1/chats",
        "A direct chat has exactly one other participant and no `name`; a group needs a `name` (422).",
    ),
    (
        "post",
        "/api/v1/messages",
        "`content` in plaintext chats, `ciphertext` in encrypted ones, never both; `media_id` exactly for `image`, `video` and `file`; `type` is not `system` or `commit` (422).",
    ),
    (
        "patch",
        "/api/v1/messages/{message_id}",
        "`content` in plaintext chats, `ciphertext` in encrypted ones (422).",
    ),
    (
        "post",
        "/api/v1/chats/{chat_id}/commits",
        "`commit` must be an MLS commit of this chat's group; `welcome` and `welcome_devices` come together (422).",
    ),
    (
        "post",
        "/api/v1/devices/me/key-packages",
        "Each KeyPackage must parse and carry this device's certified key (422).",
    ),
    (
        "put",
        "/api/v1/devices/{device_id}/credential",
        "`certificate` must verify with the user's identity key (422 `invalid_certificate`).",
    ),
    (
        "post",
        "/api/v1/devices/{device_id}/push",
        "Endpoints must be public `https` URLs; tokens have each service's shape (400, 422).",
    ),
    (
        "post",
        "/api/v1/media/tus",
        "`Upload-Metadata` must carry a `type` (422).",
    ),
    (
        "post",
        "/api/v1/media/upload",
        "The bytes must be of the declared `type` (415 `media_type_mismatch`).",
    ),
    (
        "patch",
        "/api/v1/users/me",
        "`profile_pic_media_id` must name a finished image upload of the caller's (422).",
    ),
    (
        "get",
        "/api/v1/search/messages",
        "`(page - 1) * limit` reaches at most `limits.max_search_offset` hits (400).",
    ),
];

/// The routes that answer without the store or the deadline.
const BARE: &[&str] = &["/healthz", "/metrics", "/api/v1/openapi.json"];

/// The document for a server with this configuration.
#[must_use]
pub(crate) fn document(doc: &utoipa::openapi::OpenApi, config: &Config) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    add_common_responses(&mut doc);
    add_limits(&mut doc, config);
    doc
}

fn add_common_responses(doc: &mut Value) {
    let responses = &mut doc["components"]["responses"];
    if !responses.is_object() {
        *responses = json!({});
    }
    for (name, _, description) in COMMON {
        let mut response = json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        });
        if *name == "Unauthorized" {
            response["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`."}});
        }
        if *name == "RateLimited" {
            response["headers"] = json!({"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds."}});
        }
        responses[*name] = response;
    }
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !op.is_object() || method == "parameters" {
                continue;
            }
            let authenticated = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            let json_body = op["requestBody"]["content"]
                .get("application/json")
                .is_some();
            // Query parameters, and headers carrying values (tus), are read
            // and refused with 400 `invalid_parameter`.
            let has_query = op["parameters"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["in"] == "query" || (p["in"] == "header" && p["name"] != "Tus-Resumable")
                })
            });
            let transfer = path.starts_with("/api/v1/media");
            let bare = BARE.contains(&path.as_str());
            let mut add = |name: &str| {
                let Some((_, status, _)) = COMMON.iter().find(|(n, ..)| *n == name) else {
                    return;
                };
                let responses = &mut op["responses"];
                if !responses.is_object() {
                    *responses = json!({});
                }
                let key = status.to_string();
                if responses.get(&key).is_none() {
                    responses[key] = json!({"$ref": format!("#/components/responses/{name}")});
                }
            };
            if authenticated {
                add("Unauthorized");
            }
            if json_body {
                add("InvalidJson");
                add("PayloadTooLarge");
                add("UnsupportedMediaType");
                add("ValidationFailed");
            }
            if has_query {
                add("InvalidParameter");
            }
            if RATE_LIMITED.contains(&(method.as_str(), path.as_str())) {
                add("RateLimited");
            }
            if !transfer {
                add("RequestTimeout");
            }
            add("HeadersTooLarge");
            if !bare {
                add("Unavailable");
            }
            for (_, _, rule) in RULES
                .iter()
                .filter(|(m, p, _)| *m == method.as_str() && *p == path.as_str())
            {
                let description = op["description"].as_str().unwrap_or_default();
                let joined = if description.is_empty() {
                    (*rule).to_owned()
                } else {
                    format!("{description}\n\n{rule}")
                };
                op["description"] = json!(joined);
            }
        }
    }
}

/// Sets `key` of the property `field` of the component schema `schema`.
fn constrain(doc: &mut Value, schema: &str, field: &str, key: &str, value: impl Into<Value>) {
    let pointer = format!("/components/schemas/{schema}/properties/{field}");
    if let Some(target) = doc.pointer_mut(&pointer).filter(|t| t.is_object()) {
        target[key] = value.into();
    }
}

/// Makes the property `field` of the component schema `schema` refuse
/// `null` (a field that may be left out, but not sent as `null`).
fn not_null(doc: &mut Value, schema: &str, field: &str) {
    let pointer = format!("/components/schemas/{schema}/properties/{field}");
    let Some(target) = doc.pointer_mut(&pointer) else {
        return;
    };
    if let Some(types) = target.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            target["type"] = only;
        }
        return;
    }
    // `oneOf: [{type: null}, {$ref, description}]`: the reference alone.
    let branch = target
        .get("oneOf")
        .and_then(Value::as_array)
        .and_then(|branches| branches.iter().find(|b| b.get("$ref").is_some()).cloned());
    if let Some(branch) = branch {
        *target = branch;
    }
}

/// Sets `key` of the schema of the query or header parameter `name` of
/// every operation that has it on `path`.
fn constrain_param(doc: &mut Value, path: &str, name: &str, key: &str, value: impl Into<Value>) {
    let value = value.into();
    let Some(item) = doc["paths"].get_mut(path).and_then(Value::as_object_mut) else {
        return;
    };
    for op in item.values_mut() {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
            continue;
        };
        for p in params.iter_mut().filter(|p| p["name"] == name) {
            p["schema"][key] = value.clone();
        }
    }
}

fn add_limits(doc: &mut Value, config: &Config) {
    let l = &config.limits;
    // Path ids are UUIDs (one that is not names nothing: 404).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut() {
                let params = op.get_mut("parameters").and_then(Value::as_array_mut);
                for p in params.into_iter().flatten() {
                    let name = p["name"].as_str().unwrap_or_default();
                    if p["in"] == "path" && (name.ends_with("_id") || name == "id") {
                        p["schema"]["format"] = json!("uuid");
                    }
                }
            }
        }
    }
    let history = "/api/v1/chats/{chat_id}/messages";
    constrain_param(doc, history, "page", "minimum", 1);
    constrain_param(doc, history, "limit", "minimum", 1);
    constrain_param(doc, history, "limit", "maximum", l.max_page_size);
    constrain_param(doc, history, "before_seq", "minimum", 1);
    constrain_param(doc, history, "after_seq", "minimum", 0);

    // Searches.
    for path in ["/api/v1/search/chats", "/api/v1/search/contacts"] {
        constrain_param(doc, path, "q", "minLength", 1);
        constrain_param(doc, path, "q", "maxLength", l.max_search_query_chars);
        constrain_param(doc, path, "q", "pattern", VISIBLE);
    }
    let search = "/api/v1/search/messages";
    constrain_param(doc, search, "q", "minLength", 1);
    constrain_param(doc, search, "q", "maxLength", l.max_search_query_chars);
    constrain_param(doc, search, "q", "pattern", VISIBLE);
    constrain_param(
        doc,
        search,
        "chat_id",
        "items",
        json!({"type": "string", "format": "uuid"}),
    );
    constrain_param(doc, search, "sender_id", "format", "uuid");
    constrain_param(
        doc,
        search,
        "type",
        "enum",
        json!(["text", "image", "video", "file"]),
    );
    constrain_param(doc, search, "sort", "enum", json!(["newest", "relevance"]));
    constrain_param(doc, search, "before", "format", "date-time");
    constrain_param(doc, search, "after", "format", "date-time");
    constrain_param(doc, search, "page", "minimum", 1);
    constrain_param(
        doc,
        search,
        "page",
        "maximum",
        l.max_search_offset.saturating_add(1),
    );
    constrain_param(doc, search, "limit", "minimum", 1);
    constrain_param(doc, search, "limit", "maximum", l.max_search_page_size);

    // Phone numbers and codes.
    for (schema, field) in [
        ("VerificationRequest", "phone"),
        ("LoginRequest", "phone"),
        ("RegisterRequest", "phone"),
        ("DeleteAccount", "phone"),
        ("AddContact", "phone"),
    ] {
        constrain(doc, schema, field, "pattern", PHONE);
    }
    // Discovery reports the numbers it cannot read (`invalid`) rather than refusing them.
    constrain(
        doc,
        "DiscoverContacts",
        "phones",
        "maxItems",
        l.max_discover_phones,
    );
    for schema in ["LoginRequest", "RegisterRequest"] {
        constrain(doc, schema, "verification_code", "pattern", "^[0-9]{6}$");
    }

    // Texts people write: trimmed, something visible, no control or
    // invisible formatting characters (some joiners are allowed inside
    // emoji sequences; the pattern leaves them out).
    for (schema, field, max) in [
        ("RegisterRequest", "name", l.max_name_chars),
        ("UpdateMe", "name", l.max_name_chars),
        ("UpdateChat", "name", l.max_chat_name_chars),
        ("CreateChat", "name", l.max_chat_name_chars),
    ] {
        constrain(doc, schema, field, "minLength", 1);
        constrain(doc, schema, field, "maxLength", max);
        constrain(doc, schema, field, "pattern", VISIBLE);
    }
    for schema in ["RegisterRequest", "LoginRequest"] {
        constrain(
            doc,
            schema,
            "device_name",
            "maxLength",
            l.max_device_name_chars,
        );
        constrain(doc, schema, "device_name", "pattern", VISIBLE);
    }
    constrain(doc, "UpdateMe", "about", "maxLength", l.max_about_chars);
    constrain(doc, "UpdateMe", "about", "pattern", NOTHING_HIDDEN);
    for schema in ["SendMessage", "EditMessage"] {
        constrain(doc, schema, "content", "minLength", 1);
        constrain(doc, schema, "content", "maxLength", l.max_message_chars);
        constrain(doc, schema, "content", "pattern", "\\S");
        constrain(doc, schema, "ciphertext", "minLength", 4);
        constrain(
            doc,
            schema,
            "ciphertext",
            "maxLength",
            base64_len(l.max_ciphertext_bytes as u64),
        );
        constrain(doc, schema, "ciphertext", "pattern", BASE64);
    }
    for schema in ["SendMessage", "SubmitCommit"] {
        constrain(doc, schema, "client_message_id", "minLength", 1);
        constrain(
            doc,
            schema,
            "client_message_id",
            "maxLength",
            l.max_client_message_id_chars,
        );
    }
    constrain(doc, "SendMessage", "media_id", "format", "uuid");
    // A media id, or `""` for none.
    let media_or_none = json!({"type": "string", "anyOf": [{"format": "uuid"}, {"maxLength": 0}]});
    constrain(
        doc,
        "UpdateMe",
        "profile_pic_media_id",
        "anyOf",
        media_or_none["anyOf"].clone(),
    );
    constrain(doc, "UpdateMe", "profile_pic_media_id", "type", "string");
    if let Some(chat) = doc.pointer_mut("/components/schemas/UploadForm/properties/chat_id") {
        let description = chat["oneOf"][1]["description"].clone();
        *chat = media_or_none;
        chat["description"] = description;
    }
    // Downloads are served with the type the bytes were found to be.
    for path in [
        "/api/v1/media/{media_id}",
        "/api/v1/media/{media_id}/thumbnail",
    ] {
        for status in ["200", "206"] {
            let pointer = format!(
                "/paths/{}/get/responses/{status}/content",
                path.replace('/', "~1")
            );
            if let Some(content) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut)
                && let Some(body) = content.remove("application/octet-stream")
            {
                content.insert("*/*".to_owned(), body);
            }
        }
    }
    // tus bodies are bytes.
    if let Some(body) = doc.pointer_mut(
        "/paths/~1api~1v1~1media~1tus~1{upload_id}/patch/requestBody/content/application~1offset+octet-stream/schema",
    ) {
        *body = json!({"type": "string", "format": "binary"});
    }

    constrain(
        doc,
        "UploadForm",
        "type",
        "enum",
        json!(["image", "video", "file", "encrypted"]),
    );
    constrain(doc, "MarkRead", "seq", "minimum", 0);
    // Fields one may leave out but not send as `null`.
    for field in [
        "name",
        "about",
        "last_seen_visibility",
        "group_add_permission",
        "profile_pic_media_id",
    ] {
        not_null(doc, "UpdateMe", field);
    }

    // Lists of people.
    for schema in ["AddParticipants", "ClaimKeyPackages"] {
        constrain(doc, schema, "user_ids", "minItems", 1);
        constrain(doc, schema, "user_ids", "maxItems", l.max_group_members);
    }
    constrain(
        doc,
        "CreateChat",
        "participants",
        "maxItems",
        l.max_group_members,
    );

    // End-to-end encryption: keys of fixed sizes, bounded MLS messages.
    let e = &config.e2ee;
    constrain(
        doc,
        "SetIdentity",
        "identity_key",
        "pattern",
        base64_exact(32),
    );
    constrain(
        doc,
        "SetDeviceCredential",
        "signature_key",
        "pattern",
        base64_exact(32),
    );
    constrain(
        doc,
        "SetDeviceCredential",
        "link_key",
        "pattern",
        base64_exact(32),
    );
    constrain(
        doc,
        "SetDeviceCredential",
        "certificate",
        "pattern",
        base64_exact(64),
    );
    constrain(doc, "SubmitCommit", "commit", "minLength", 4);
    constrain(
        doc,
        "SubmitCommit",
        "commit",
        "maxLength",
        base64_len(e.commit_max_bytes),
    );
    constrain(doc, "SubmitCommit", "commit", "pattern", BASE64);
    constrain(
        doc,
        "SubmitCommit",
        "welcome",
        "maxLength",
        base64_len(e.welcome_max_bytes),
    );
    constrain(doc, "SubmitCommit", "welcome", "pattern", BASE64);
    constrain(
        doc,
        "SubmitCommit",
        "welcome_devices",
        "maxItems",
        l.max_group_members.saturating_mul(l.max_devices_per_user),
    );
    constrain(doc, "SendHandover", "payload", "minLength", 4);
    constrain(
        doc,
        "SendHandover",
        "payload",
        "maxLength",
        base64_len(e.handover_max_bytes),
    );
    constrain(doc, "SendHandover", "payload", "pattern", BASE64);
    constrain(
        doc,
        "PublishKeyPackages",
        "key_packages",
        "maxItems",
        e.key_package_batch_max,
    );
    let key_package = json!({
        "type": "string",
        "minLength": 4,
        "maxLength": base64_len(e.key_package_max_bytes),
        "pattern": BASE64,
    });
    constrain(
        doc,
        "PublishKeyPackages",
        "key_packages",
        "items",
        key_package,
    );
    constrain(
        doc,
        "PublishKeyPackages",
        "last_resort",
        "maxLength",
        base64_len(e.key_package_max_bytes),
    );
    constrain(doc, "PublishKeyPackages", "last_resort", "pattern", BASE64);

    // Registration's proof depends on the sign-up mode: a rule across the
    // configuration and the body, written here as `required`.
    let proof = match config.signup_mode() {
        SignupMode::Invite => "invite",
        SignupMode::Sms | SignupMode::Open => "verification_code",
    };
    if let Some(required) = doc
        .pointer_mut("/components/schemas/RegisterRequest/required")
        .and_then(Value::as_array_mut)
    {
        required.push(json!(proof));
    }
    not_null(doc, "RegisterRequest", proof);
    // The WebSocket upgrade's fixed header values (RFC 6455).
    let ws = "/api/v1/ws";
    constrain_param(doc, ws, "Connection", "enum", json!(["Upgrade"]));
    constrain_param(doc, ws, "Upgrade", "enum", json!(["websocket"]));
    constrain_param(doc, ws, "Sec-WebSocket-Version", "enum", json!(["13"]));
    constrain_param(
        doc,
        ws,
        "Sec-WebSocket-Key",
        "pattern",
        "^[A-Za-z0-9+/]{21}[AQgw]==$",
    );
    // tus speaks one version, and its numbers are byte counts.
    for path in ["/api/v1/media/tus", "/api/v1/media/tus/{upload_id}"] {
        constrain_param(doc, path, "Tus-Resumable", "enum", json!(["1.0.0"]));
        constrain_param(doc, path, "Upload-Length", "minimum", 0);
        constrain_param(doc, path, "Upload-Offset", "minimum", 0);
    }
    constrain(doc, "UpdateMe", "name", "maxLength", l.max_name_chars);
}
