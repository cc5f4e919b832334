//! What `natter bench e2ee` measures, in-process and network-free: the cost
//! of one application message (encrypt, decrypt, size) and of adding and
//! removing a device at a few group sizes (commit time and size, Welcome
//! size, processing by another member, joining).
//!
//! Native only (it reads `std::time::Instant`, which wasm32 lacks).

use std::fmt;
use std::time::{Duration, Instant};

use natter_proto::{ChatId, DeviceId, UserId};

use super::{CommitIntent, E2eeError, Engine, Identity, PinnedKeys, Suite};

/// Bytes of plaintext per benchmark message.
const MESSAGE_BYTES: usize = 100;

/// The cost of one application message.
#[derive(Debug, Clone)]
pub struct MessageCost {
    /// Mean time to encrypt.
    pub encrypt: Duration,
    /// Mean time to decrypt (another member).
    pub decrypt: Duration,
    /// Wire size for a 100-byte plaintext.
    pub wire_bytes: usize,
}

/// The costs at one group size.
#[derive(Debug, Clone)]
pub struct GroupCost {
    /// Devices in the group before the add.
    pub members: usize,
    /// Creating the group with all of them in one commit (validating every package).
    pub create: Duration,
    /// Joining that group from its Welcome (one device).
    pub join_created: Duration,
    /// Adding one device: building the commit.
    pub add_commit: Duration,
    /// Its size.
    pub add_commit_bytes: usize,
    /// The Welcome's size.
    pub welcome_bytes: usize,
    /// Another member processing the add.
    pub add_process: Duration,
    /// The new device joining from the Welcome.
    pub add_join: Duration,
    /// Removing one device: building the commit (with a path).
    pub remove_commit: Duration,
    /// Its size.
    pub remove_commit_bytes: usize,
    /// Another member processing the removal.
    pub remove_process: Duration,
    /// Messages at this size.
    pub message: MessageCost,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The suite.
    pub suite: Suite,
    /// One line per group size.
    pub groups: Vec<GroupCost>,
}

/// Runs the measurements for each group size in `sizes`, with `messages`
/// messages per size.
///
/// # Errors
/// Any engine error (none is expected).
pub fn run(suite: Suite, sizes: &[usize], messages: usize) -> Result<BenchReport, E2eeError> {
    let mut groups = Vec::new();
    for &n in sizes {
        groups.push(at_size(suite, n.max(2), messages.max(1))?);
    }
    Ok(BenchReport { suite, groups })
}

/// A certified device with its own user (one device per user).
fn device(trust: &mut PinnedKeys) -> Result<Engine, E2eeError> {
    let identity = Identity::generate()?;
    let user = UserId::new();
    trust.observe_identity(user, identity.public_key());
    let engine = Engine::new(user, DeviceId::new(), None)?;
    let me = engine.device_ref();
    let cert = identity.certify(me.user, me.device, engine.signature_key())?;
    trust.add_certificate(me.user, me.device, engine.signature_key(), &cert)?;
    Ok(engine)
}

fn at_size(suite: Suite, n: usize, messages: usize) -> Result<GroupCost, E2eeError> {
    let mut trust = PinnedKeys::new();
    let chat = ChatId::new();
    let mut creator = device(&mut trust)?;
    let mut observer = device(&mut trust)?;
    let mut packages = vec![observer.key_packages(suite, 1)?.one_time.remove(0)];
    let mut refs = vec![observer.device_ref()];
    for _ in 2..n {
        let d = device(&mut trust)?;
        packages.push(d.key_packages(suite, 1)?.one_time.remove(0));
        refs.push(d.device_ref());
    }

    let t = Instant::now();
    creator.create_group(chat, suite)?;
    let add = refs
        .iter()
        .zip(&packages)
        .map(|(r, p)| creator.validate_key_package(&trust, *r, suite, p))
        .collect::<Result<Vec<_>, _>>()?;
    let pending = creator.commit(
        chat,
        CommitIntent::Change {
            add,
            remove: vec![],
        },
    )?;
    creator.commit_accepted(chat)?;
    let create = t.elapsed();
    let welcome = pending.welcome.ok_or(E2eeError::NothingToCommit)?;
    let t = Instant::now();
    observer.join(&trust, &welcome)?;
    let join_created = t.elapsed();

    // Messages: the creator sends, the observer reads.
    let plaintext = vec![0x61; MESSAGE_BYTES];
    let mut encrypt = Duration::ZERO;
    let mut decrypt = Duration::ZERO;
    let mut wire_bytes = 0;
    for _ in 0..messages {
        let t = Instant::now();
        let wire = creator.encrypt(chat, &plaintext)?;
        encrypt += t.elapsed();
        wire_bytes = wire.len();
        let t = Instant::now();
        observer.process(&trust, chat, &wire)?;
        decrypt += t.elapsed();
    }
    let per = |d: Duration| d / u32::try_from(messages).unwrap_or(u32::MAX);

    // Add one device.
    let mut newcomer = device(&mut trust)?;
    let package = newcomer.key_packages(suite, 1)?.one_time.remove(0);
    let package = creator.validate_key_package(&trust, newcomer.device_ref(), suite, &package)?;
    let t = Instant::now();
    let added = creator.commit(
        chat,
        CommitIntent::Change {
            add: vec![package],
            remove: vec![],
        },
    )?;
    let add_commit = t.elapsed();
    creator.commit_accepted(chat)?;
    let t = Instant::now();
    observer.process(&trust, chat, &added.commit)?;
    let add_process = t.elapsed();
    let welcome = added.welcome.as_deref().unwrap_or_default();
    let t = Instant::now();
    newcomer.join(&trust, welcome)?;
    let add_join = t.elapsed();

    // Remove it again.
    let t = Instant::now();
    let removed = creator.commit(
        chat,
        CommitIntent::Change {
            add: vec![],
            remove: vec![newcomer.device_ref()],
        },
    )?;
    let remove_commit = t.elapsed();
    creator.commit_accepted(chat)?;
    let t = Instant::now();
    observer.process(&trust, chat, &removed.commit)?;
    let remove_process = t.elapsed();

    Ok(GroupCost {
        members: n,
        create,
        join_created,
        add_commit,
        add_commit_bytes: added.commit.len(),
        welcome_bytes: welcome.len(),
        add_process,
        add_join,
        remove_commit,
        remove_commit_bytes: removed.commit.len(),
        remove_process,
        message: MessageCost {
            encrypt: per(encrypt),
            decrypt: per(decrypt),
            wire_bytes,
        },
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "MLS suite 0x{:04x}", self.suite.code())?;
        for g in &self.groups {
            writeln!(f, "{} members:", g.members)?;
            writeln!(
                f,
                "  message ({MESSAGE_BYTES} B): encrypt {}, decrypt {}, {} B on the wire",
                us(g.message.encrypt),
                us(g.message.decrypt),
                g.message.wire_bytes
            )?;
            writeln!(
                f,
                "  create with all in one commit: {}; a member joins it: {}",
                ms(g.create),
                ms(g.join_created)
            )?;
            writeln!(
                f,
                "  add 1 (no path): commit {} ({} B), Welcome {} B, processed by a member {}, joined {}",
                ms(g.add_commit),
                g.add_commit_bytes,
                g.welcome_bytes,
                ms(g.add_process),
                ms(g.add_join)
            )?;
            writeln!(
                f,
                "  remove 1 (path): commit {} ({} B), processed by a member {}",
                ms(g.remove_commit),
                g.remove_commit_bytes,
                ms(g.remove_process)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_runs_on_a_small_group() {
        let report = run(Suite::default(), &[3], 2).unwrap();
        assert_eq!(report.groups.len(), 1);
        assert!(report.groups[0].welcome_bytes > 0);
        assert!(report.to_string().contains("3 members"));
    }

    /// The figures in the report: `cargo test --release -p natter-client
    /// --lib e2ee::bench -- --ignored --nocapture` (or `natter bench e2ee`).
    #[test]
    #[ignore = "a benchmark: run in release"]
    fn figures_at_100_and_1000_members() {
        let report = run(Suite::default(), &[100, 1000], 1000).unwrap();
        eprintln!("{report}");
    }
}
