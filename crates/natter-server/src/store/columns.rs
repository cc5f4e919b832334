//! How values the engines store as text are spelled, and orders both
//! engines must return the same, so the embedded and the PostgreSQL engine
//! read each other's meaning (and a test can compare their answers).

use natter_proto::push::{ApnsEnvironment, PushKind};
use natter_proto::users::{GroupAddPermission, LastSeenVisibility};

use super::ContactEntry;

/// The stored spelling of a last-seen setting.
#[must_use]
pub const fn visibility_to_sql(v: LastSeenVisibility) -> &'static str {
    match v {
        LastSeenVisibility::Everyone => "everyone",
        LastSeenVisibility::Contacts => "contacts",
        LastSeenVisibility::Nobody => "nobody",
    }
}

/// A stored last-seen setting (the schema's CHECK allows only the three).
#[must_use]
pub fn visibility_from_sql(s: &str) -> LastSeenVisibility {
    match s {
        "contacts" => LastSeenVisibility::Contacts,
        "nobody" => LastSeenVisibility::Nobody,
        _ => LastSeenVisibility::Everyone,
    }
}

/// The stored spelling of who may add a user to groups.
#[must_use]
pub const fn permission_to_sql(p: GroupAddPermission) -> &'static str {
    match p {
        GroupAddPermission::Everyone => "everyone",
        GroupAddPermission::Contacts => "contacts",
        GroupAddPermission::Nobody => "nobody",
    }
}

/// A stored group-add setting (the schema's CHECK allows only the three).
#[must_use]
pub fn permission_from_sql(s: &str) -> GroupAddPermission {
    match s {
        "contacts" => GroupAddPermission::Contacts,
        "nobody" => GroupAddPermission::Nobody,
        _ => GroupAddPermission::Everyone,
    }
}

/// The stored spelling of a push protocol.
#[must_use]
pub const fn push_kind_to_sql(kind: PushKind) -> &'static str {
    match kind {
        PushKind::Webpush => "webpush",
        PushKind::Unifiedpush => "unifiedpush",
        PushKind::Fcm => "fcm",
        PushKind::Apns => "apns",
    }
}

/// A stored push protocol (the schema's CHECK allows only the four).
#[must_use]
pub fn push_kind_from_sql(s: &str) -> PushKind {
    match s {
        "unifiedpush" => PushKind::Unifiedpush,
        "fcm" => PushKind::Fcm,
        "apns" => PushKind::Apns,
        _ => PushKind::Webpush,
    }
}

/// The stored spelling of an APNs environment.
#[must_use]
pub fn apns_environment_to_sql(environment: Option<ApnsEnvironment>) -> Option<&'static str> {
    environment.map(|e| match e {
        ApnsEnvironment::Sandbox => "sandbox",
        ApnsEnvironment::Production => "production",
    })
}

/// A stored APNs environment.
#[must_use]
pub fn apns_environment_from_sql(s: Option<&str>) -> Option<ApnsEnvironment> {
    match s {
        Some("sandbox") => Some(ApnsEnvironment::Sandbox),
        Some(_) => Some(ApnsEnvironment::Production),
        None => None,
    }
}

/// A contact list in its one order: by name with ASCII letters compared
/// without case (what SQLite's NOCASE did), then by id, so every engine
/// lists the same contacts the same way whatever its collation.
pub fn sort_contacts(list: &mut [ContactEntry]) {
    list.sort_by(|a, b| {
        a.user
            .name
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.user.name.bytes().map(|c| c.to_ascii_lowercase()))
            .then_with(|| a.user.id.as_uuid().cmp(b.user.id.as_uuid()))
    });
}
