//! Reading the plaintext framing of MLS messages (RFC 9420 §6), without keys.
//!
//! The server is the MLS delivery service and links no MLS cryptography: it
//! reads only what it must order and route by, the group id, the epoch and
//! the content type of handshake and application messages, and the checkable
//! public fields of KeyPackages (suite, credential, signature key, lifetime).
//! Everything here is a bounds-checked reader over a byte slice in the TLS
//! presentation language (§2.1): integers are big-endian, variable-length
//! vectors carry a QUIC-style varint length (§2.1.2). A malformed input is a
//! [`FramingError`], never a panic.
//!
//! Depends on nothing but `thiserror`.

/// The only protocol version: `mls10`.
pub const MLS_VERSION_10: u16 = 1;

/// Why a byte string is not the MLS message it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The bytes end before a field does.
    #[error("the MLS message ends before its {0} does")]
    Truncated(&'static str),
    /// A varint uses a reserved prefix or is not minimally encoded.
    #[error("the MLS message has an invalid vector length for its {0}")]
    BadLength(&'static str),
    /// The protocol version is not `mls10`.
    #[error("the MLS message has protocol version {0}, not mls10 (1)")]
    Version(u16),
    /// A wire format this reader does not know.
    #[error("the MLS message has an unknown wire format {0}")]
    WireFormat(u16),
    /// A sender type this reader does not know.
    #[error("the MLS message has an unknown sender type {0}")]
    SenderType(u8),
    /// A content type this reader does not know.
    #[error("the MLS message has an unknown content type {0}")]
    ContentType(u8),
    /// A leaf node source other than `key_package` in a KeyPackage.
    #[error("the KeyPackage's leaf node has source {0}, not key_package (1)")]
    LeafNodeSource(u8),
    /// The message is well formed but not of the expected wire format.
    #[error("expected an MLS {expected} message, found {found:?}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: WireFormat,
    },
}

/// An MLS message's wire format (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `mls_public_message` (1).
    PublicMessage,
    /// `mls_private_message` (2).
    PrivateMessage,
    /// `mls_welcome` (3).
    Welcome,
    /// `mls_group_info` (4).
    GroupInfo,
    /// `mls_key_package` (5).
    KeyPackage,
}

impl WireFormat {
    fn from_u16(v: u16) -> Result<Self, FramingError> {
        Ok(match v {
            1 => Self::PublicMessage,
            2 => Self::PrivateMessage,
            3 => Self::Welcome,
            4 => Self::GroupInfo,
            5 => Self::KeyPackage,
            other => return Err(FramingError::WireFormat(other)),
        })
    }
}

/// What a framed message carries (§6: `ContentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application` (1).
    Application,
    /// `proposal` (2).
    Proposal,
    /// `commit` (3).
    Commit,
}

impl ContentType {
    fn from_u8(v: u8) -> Result<Self, FramingError> {
        Ok(match v {
            1 => Self::Application,
            2 => Self::Proposal,
            3 => Self::Commit,
            other => return Err(FramingError::ContentType(other)),
        })
    }
}

/// Who sent a public message (§6: `Sender`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A member, by leaf index.
    Member(u32),
    /// An external sender, by index into the group's external senders.
    External(u32),
    /// A proposal from a non-member to join.
    NewMemberProposal,
    /// An external commit of a joiner.
    NewMemberCommit,
}

/// The readable framing of a public or private message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// Public or private.
    pub wire_format: WireFormat,
    /// The group's id.
    pub group_id: Vec<u8>,
    /// The epoch it was made for.
    pub epoch: u64,
    /// The sender; public messages only (a private message hides it).
    pub sender: Option<Sender>,
    /// What it carries.
    pub content_type: ContentType,
}

/// The checkable public fields of a KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// Its cipher suite.
    pub cipher_suite: u16,
    /// The leaf's credential type (1 = basic).
    pub credential_type: u16,
    /// A basic credential's identity (`None` for other credential types).
    pub identity: Option<Vec<u8>>,
    /// The leaf's signature public key.
    pub signature_key: Vec<u8>,
    /// Valid from (seconds since the Unix epoch).
    pub not_before: u64,
    /// Valid until (seconds since the Unix epoch).
    pub not_after: u64,
}

/// The bytes after the version and wire format.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FramingError> {
        if self.bytes.len() < n {
            return Err(FramingError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FramingError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FramingError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FramingError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FramingError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A varint length (§2.1.2): the top two bits of the first byte give the
    /// size (1, 2 or 4 bytes; 8 is reserved); it must be minimal.
    fn varint(&mut self, what: &'static str) -> Result<usize, FramingError> {
        let first = self.u8(what)?;
        let (len, value) = match first >> 6 {
            0 => return Ok(usize::from(first)),
            1 => (2, u32::from(first & 0x3f)),
            2 => (4, u32::from(first & 0x3f)),
            _ => return Err(FramingError::BadLength(what)),
        };
        let rest = self.take(len - 1, what)?;
        let value = rest.iter().fold(value, |acc, b| (acc << 8) | u32::from(*b));
        let minimal = match len {
            2 => value >= 64,
            _ => value >= 16384,
        };
        if !minimal {
            return Err(FramingError::BadLength(what));
        }
        usize::try_from(value).map_err(|_| FramingError::BadLength(what))
    }

    fn vector(&mut self, what: &'static str) -> Result<&'a [u8], FramingError> {
        let n = self.varint(what)?;
        self.take(n, what)
    }

    /// A vector whose content is itself read as a sequence of vectors
    /// (skipped).
    fn skip_vector(&mut self, what: &'static str) -> Result<(), FramingError> {
        self.vector(what).map(|_| ())
    }
}

/// Reads the `MLSMessage` header: version and wire format.
fn header(bytes: &[u8]) -> Result<(WireFormat, Reader<'_>), FramingError> {
    let mut r = Reader { bytes };
    let version = r.u16("version")?;
    if version != MLS_VERSION_10 {
        return Err(FramingError::Version(version));
    }
    let wire_format = WireFormat::from_u16(r.u16("wire format")?)?;
    Ok((wire_format, r))
}

/// The wire format of an `MLSMessage`.
///
/// # Errors
/// When the header is malformed.
pub fn wire_format(bytes: &[u8]) -> Result<WireFormat, FramingError> {
    header(bytes).map(|(w, _)| w)
}

/// Reads the framing of a public or private message.
///
/// # Errors
/// When the bytes are not a well-formed public or private message header.
pub fn parse_message(bytes: &[u8]) -> Result<Framing, FramingError> {
    let (wire_format, mut r) = header(bytes)?;
    match wire_format {
        WireFormat::PublicMessage => {
            let group_id = r.vector("group id")?.to_vec();
            let epoch = r.u64("epoch")?;
            let sender = match r.u8("sender type")? {
                1 => Sender::Member(r.u32("leaf index")?),
                2 => Sender::External(r.u32("sender index")?),
                3 => Sender::NewMemberProposal,
                4 => Sender::NewMemberCommit,
                other => return Err(FramingError::SenderType(other)),
            };
            r.skip_vector("authenticated data")?;
            let content_type = ContentType::from_u8(r.u8("content type")?)?;
            Ok(Framing {
                wire_format,
                group_id,
                epoch,
                sender: Some(sender),
                content_type,
            })
        }
        WireFormat::PrivateMessage => {
            let group_id = r.vector("group id")?.to_vec();
            let epoch = r.u64("epoch")?;
            let content_type = ContentType::from_u8(r.u8("content type")?)?;
            Ok(Framing {
                wire_format,
                group_id,
                epoch,
                sender: None,
                content_type,
            })
        }
        found => Err(FramingError::Unexpected {
            expected: "public or private",
            found,
        }),
    }
}

/// Checks that the bytes are an `MLSMessage` of wire format `mls_welcome`
/// (the rest is encrypted to the joiners).
///
/// # Errors
/// When they are not.
pub fn check_welcome(bytes: &[u8]) -> Result<(), FramingError> {
    let (wire_format, mut r) = header(bytes)?;
    if wire_format != WireFormat::Welcome {
        return Err(FramingError::Unexpected {
            expected: "welcome",
            found: wire_format,
        });
    }
    r.u16("cipher suite")?;
    Ok(())
}

/// Reads the public fields of an `MLSMessage` holding a KeyPackage.
///
/// # Errors
/// When the bytes are not a well-formed KeyPackage (as far as read).
pub fn parse_key_package(bytes: &[u8]) -> Result<KeyPackageInfo, FramingError> {
    let (wire_format, mut r) = header(bytes)?;
    if wire_format != WireFormat::KeyPackage {
        return Err(FramingError::Unexpected {
            expected: "key package",
            found: wire_format,
        });
    }
    // KeyPackage: version, cipher_suite, init_key, leaf_node, extensions, signature.
    let version = r.u16("key package version")?;
    if version != MLS_VERSION_10 {
        return Err(FramingError::Version(version));
    }
    let cipher_suite = r.u16("cipher suite")?;
    r.skip_vector("init key")?;
    // LeafNode: encryption_key, signature_key, credential, capabilities, source.
    r.skip_vector("encryption key")?;
    let signature_key = r.vector("signature key")?.to_vec();
    let credential_type = r.u16("credential type")?;
    let identity = if credential_type == 1 {
        Some(r.vector("identity")?.to_vec())
    } else {
        // Other credentials (x509: a vector of certificates) are one vector.
        r.skip_vector("credential")?;
        None
    };
    for what in [
        "capability versions",
        "capability cipher suites",
        "capability extensions",
        "capability proposals",
        "capability credentials",
    ] {
        r.skip_vector(what)?;
    }
    let source = r.u8("leaf node source")?;
    if source != 1 {
        return Err(FramingError::LeafNodeSource(source));
    }
    let not_before = r.u64("lifetime")?;
    let not_after = r.u64("lifetime")?;
    Ok(KeyPackageInfo {
        cipher_suite,
        credential_type,
        identity,
        signature_key,
        not_before,
        not_after,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn varint(n: usize) -> Vec<u8> {
        if n < 64 {
            vec![u8::try_from(n).unwrap()]
        } else if n < 16384 {
            let v = u16::try_from(n).unwrap() | 0x4000;
            v.to_be_bytes().to_vec()
        } else {
            let v = u32::try_from(n).unwrap() | 0x8000_0000;
            v.to_be_bytes().to_vec()
        }
    }

    fn vector(b: &[u8]) -> Vec<u8> {
        let mut v = varint(b.len());
        v.extend_from_slice(b);
        v
    }

    fn private(group: &[u8], epoch: u64, content: u8) -> Vec<u8> {
        let mut m = vec![0, 1, 0, 2];
        m.extend(vector(group));
        m.extend(epoch.to_be_bytes());
        m.push(content);
        m.extend(vector(b"aad"));
        m.extend(vector(b"ciphertext"));
        m
    }

    #[test]
    fn a_private_message_gives_group_epoch_and_content_type() {
        let f = parse_message(&private(&[7; 16], 42, 1)).unwrap();
        assert_eq!(f.wire_format, WireFormat::PrivateMessage);
        assert_eq!(f.group_id, vec![7; 16]);
        assert_eq!(f.epoch, 42);
        assert_eq!(f.content_type, ContentType::Application);
        assert_eq!(f.sender, None);
    }

    #[test]
    fn a_public_message_gives_its_sender() {
        let mut m = vec![0, 1, 0, 1];
        m.extend(vector(&[1; 16]));
        m.extend(5u64.to_be_bytes());
        m.push(1);
        m.extend(3u32.to_be_bytes());
        m.extend(vector(&[9; 100]));
        m.push(3);
        let f = parse_message(&m).unwrap();
        assert_eq!(f.sender, Some(Sender::Member(3)));
        assert_eq!(f.content_type, ContentType::Commit);
        assert_eq!(f.epoch, 5);
    }

    #[test]
    fn lengths_must_be_minimal_and_not_reserved() {
        let mut r = Reader {
            bytes: &[0x40, 0x01],
        };
        assert_eq!(r.varint("x"), Err(FramingError::BadLength("x")));
        let mut r = Reader {
            bytes: &[0xc0, 0, 0, 0, 0, 0, 0, 1],
        };
        assert_eq!(r.varint("x"), Err(FramingError::BadLength("x")));
        let mut r = Reader {
            bytes: &[0x7f, 0xff],
        };
        assert_eq!(r.varint("x"), Ok(16383));
        let mut r = Reader {
            bytes: &[0x80, 0, 0x40, 0],
        };
        assert_eq!(r.varint("x"), Ok(16384));
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        assert_eq!(parse_message(&[]), Err(FramingError::Truncated("version")));
        assert_eq!(parse_message(&[0, 2, 0, 2]), Err(FramingError::Version(2)));
        assert_eq!(
            parse_message(&[0, 1, 0, 9]),
            Err(FramingError::WireFormat(9))
        );
        assert_eq!(
            parse_message(&private(&[1], 1, 4)),
            Err(FramingError::ContentType(4))
        );
        let m = private(&[1; 16], 1, 1);
        for cut in 4..22 {
            assert!(parse_message(&m[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            parse_message(&[0, 1, 0, 3, 0, 1]),
            Err(FramingError::Unexpected { .. })
        ));
        assert!(check_welcome(&[0, 1, 0, 3, 0, 1]).is_ok());
        assert!(check_welcome(&private(&[1], 1, 1)).is_err());
        assert!(parse_key_package(&private(&[1], 1, 1)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_message(&bytes);
            let _ = parse_key_package(&bytes);
            let _ = check_welcome(&bytes);
            let _ = wire_format(&bytes);
        }

        #[test]
        fn arbitrary_tails_after_a_valid_header_never_panic(
            wf in 1u16..=5,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut m = vec![0, 1];
            m.extend(wf.to_be_bytes());
            m.extend(tail);
            let _ = parse_message(&m);
            let _ = parse_key_package(&m);
        }
    }

    /// Real bytes made by OpenMLS.
    mod openmls_bytes {
        use openmls::prelude::tls_codec::Serialize as _;
        use openmls::prelude::*;
        use openmls_basic_credential::SignatureKeyPair;
        use openmls_rust_crypto::OpenMlsRustCrypto;

        use super::super as framing;

        const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

        fn member(
            name: &str,
            provider: &OpenMlsRustCrypto,
        ) -> (CredentialWithKey, SignatureKeyPair) {
            let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
            signer.store(provider.storage()).unwrap();
            let credential = BasicCredential::new(name.as_bytes().to_vec());
            (
                CredentialWithKey {
                    credential: credential.into(),
                    signature_key: signer.public().into(),
                },
                signer,
            )
        }

        #[test]
        fn openmls_key_packages_commits_welcomes_and_messages_read_back() {
            let alice_p = OpenMlsRustCrypto::default();
            let bob_p = OpenMlsRustCrypto::default();
            let (alice_cred, alice_signer) = member("alice/1", &alice_p);
            let (bob_cred, bob_signer) = member("bob/1", &bob_p);

            let bob_kp = KeyPackage::builder()
                .build(SUITE, &bob_p, &bob_signer, bob_cred.clone())
                .unwrap();
            let kp_msg: MlsMessageOut = bob_kp.key_package().clone().into();
            let kp_bytes = kp_msg.tls_serialize_detached().unwrap();
            let info = framing::parse_key_package(&kp_bytes).unwrap();
            assert_eq!(info.cipher_suite, 0x0001);
            assert_eq!(info.credential_type, 1);
            assert_eq!(info.identity.as_deref(), Some(&b"bob/1"[..]));
            assert_eq!(info.signature_key, bob_signer.public());
            assert!(info.not_before < info.not_after);

            let group_id = [5u8; 16];
            let config = MlsGroupCreateConfig::builder()
                .ciphersuite(SUITE)
                .use_ratchet_tree_extension(true)
                .build();
            let mut group = MlsGroup::new_with_group_id(
                &alice_p,
                &alice_signer,
                &config,
                GroupId::from_slice(&group_id),
                alice_cred,
            )
            .unwrap();
            let (commit, welcome, _) = group
                .add_members(&alice_p, &alice_signer, &[bob_kp.key_package().clone()])
                .unwrap();
            let commit_bytes = commit.tls_serialize_detached().unwrap();
            let f = framing::parse_message(&commit_bytes).unwrap();
            assert_eq!(f.group_id, group_id);
            assert_eq!(f.epoch, 0);
            assert_eq!(f.content_type, framing::ContentType::Commit);
            let welcome_bytes = welcome.tls_serialize_detached().unwrap();
            framing::check_welcome(&welcome_bytes).unwrap();
            assert_eq!(
                framing::wire_format(&welcome_bytes).unwrap(),
                framing::WireFormat::Welcome
            );

            group.merge_pending_commit(&alice_p).unwrap();
            let app = group
                .create_message(&alice_p, &alice_signer, b"hello")
                .unwrap();
            let app_bytes = app.tls_serialize_detached().unwrap();
            let f = framing::parse_message(&app_bytes).unwrap();
            assert_eq!(f.wire_format, framing::WireFormat::PrivateMessage);
            assert_eq!(f.epoch, 1);
            assert_eq!(f.content_type, framing::ContentType::Application);
            assert_eq!(f.group_id, group_id);
        }
    }
}
