//! Identifier newtypes. Each wraps a UUIDv7 (time-ordered, random tail) and
//! serialises as the canonical hyphenated string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID (read back from storage).
            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            #[must_use]
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A user account, identified to people by its phone number.
    UserId
);
id_type!(
    /// One logged-in device of a user, with its own access token.
    DeviceId
);
id_type!(
    /// A direct or group chat.
    ChatId
);
id_type!(
    /// An entry of a chat log (a message or a system event).
    MessageId
);
id_type!(
    /// An uploaded blob (image, video, file or client-encrypted bytes); also
    /// the id of its resumable (tus) upload while it is in progress.
    MediaId
);
id_type!(
    /// An invitation to a group, waiting for its user to accept or decline.
    InvitationId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json_and_text() {
        let id = UserId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), id);
        assert_eq!(id.to_string().parse::<UserId>().unwrap(), id);
        assert!("user_123".parse::<UserId>().is_err());
    }

    #[test]
    fn new_ids_are_time_ordered() {
        let a = DeviceId::new();
        let b = DeviceId::new();
        assert!(a < b);
    }
}
