//! The acceptance test of `natter chat`: two terminal clients in tmux
//! against a real `natter serve`, driven with send-keys and read with
//! capture-pane, the way a person uses them. Each test has its own tmux
//! server (`tmux -L <unique socket>`), killed on drop; every wait polls the
//! screen until WAIT.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::WAIT;
use super::chat::ChatServer;

static SOCKETS: AtomicU32 = AtomicU32::new(0);

/// One terminal running `natter chat`, on a tmux server of its own.
struct Terminal {
    socket: String,
    command: Vec<String>,
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let path = self.tmux(&["display-message", "-p", "#{socket_path}"]);
        let _ = self.tmux(&["kill-server"]);
        if !path.trim().is_empty() {
            let _ = std::fs::remove_file(path.trim());
        }
    }
}

impl Terminal {
    fn start(command: Vec<String>, width: u16, height: u16) -> Self {
        // No 24-bit colour unless a test asks (the test's own terminal may have it).
        Self::start_with(command, width, height, "COLORTERM=")
    }

    /// [`Terminal::start`] with one environment variable (`KEY=VALUE`) set.
    fn start_with(command: Vec<String>, width: u16, height: u16, env: &str) -> Self {
        let socket = format!(
            "natter-test-{}-{}",
            std::process::id(),
            SOCKETS.fetch_add(1, Ordering::Relaxed)
        );
        let term = Self { socket, command };
        let (w, h) = (width.to_string(), height.to_string());
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &w,
            "-y",
            &h,
            "-e",
            env,
        ];
        let cmd: Vec<&str> = term.command.iter().map(String::as_str).collect();
        args.extend(cmd);
        term.tmux(&args);
        // Keep the pane when the client exits, to restart it.
        term.tmux(&["set-option", "-g", "remain-on-exit", "on"]);
        term
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-u", "-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (apt-get install tmux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "main", "-l", text]);
        self.key("Enter");
    }

    /// Presses a key (tmux's names: `Enter`, `Tab`, `Escape`, `C-q`).
    fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "main", key]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "main"])
    }

    /// The screen with its colours (SGR escapes).
    fn colours(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-e", "-t", "main"])
    }

    /// Polls the screen until it shows `needle`; returns the screen.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the screen within {WAIT:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the screen until `done` holds for it; returns the screen.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen within {WAIT:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the screen with its colours until `done` holds for it.
    fn wait_until_colours(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.colours()) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT:?}:\n{}",
                self.colours()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the client in the pane has exited.
    fn exited(&self) -> bool {
        self.tmux(&["display-message", "-p", "-t", "main", "#{pane_dead}"])
            .trim()
            == "1"
    }

    /// Quits the client (Ctrl-Q) and waits until it has exited.
    fn quit(&self) {
        self.key("C-q");
        let deadline = Instant::now() + WAIT;
        while !self.exited() {
            assert!(Instant::now() < deadline, "the client did not quit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Quits the client and starts it again in the same pane.
    fn restart(&self) {
        self.quit();
        self.respawn();
    }

    /// Starts the client again in the pane it exited in.
    fn respawn(&self) {
        let mut args = vec!["respawn-pane", "-k", "-t", "main"];
        args.extend(self.command.iter().map(String::as_str));
        self.tmux(&args);
    }
}

/// Signs `phone` up in the client on `term`, typing what it asks (an
/// empty `name` logs in to the number's account).
fn sign_up(server: &mut ChatServer, term: &Terminal, phone: &str, name: &str) {
    term.wait_for("Phone number");
    term.line(phone);
    term.wait_for("DEVELOPMENT SMS SINK");
    term.wait_for("Your name");
    term.line(name);
    let name = if name.is_empty() { "Alice" } else { name };
    term.wait_for("A name for this device");
    term.line("terminal");
    term.wait_for("Code:");
    let code = server.code_for(phone);
    term.line(&code);
    term.wait_for(&format!("{name} ({phone})"));
}

/// The 5-digit groups of a safety number on the screen.
fn safety_digits(screen: &str) -> Vec<String> {
    screen
        .split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| w.len() == 5 && w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_people_chat_encrypted_in_two_terminals() {
    let mut server = ChatServer::start();
    let alice = Terminal::start(server.interactive("alice"), 120, 36);
    let bob = Terminal::start(server.interactive("bob"), 120, 36);
    sign_up(&mut server, &alice, "+14155550501", "Alice");
    sign_up(&mut server, &bob, "+14155550502", "Bob");

    // Bob finds Alice by her number; the chat is end-to-end encrypted.
    bob.line("/new +14155550501");
    bob.wait_for("🔒 end-to-end encrypted");
    bob.line("Hello Alice, 你好 👋");

    // Alice sees it in her list, opens it, answers.
    alice.wait_for("Hello Alice");
    alice.key("Tab");
    alice.wait_for("Bob: Hello Alice, 你好 👋");
    alice.line("Hi Bob, مرحبا");
    bob.wait_for("Alice: Hi Bob, مرحبا");
    // Alice had the chat open: Bob's message shows read.
    bob.wait_for("Hello Alice, 你好 👋 ✓✓ read");

    // A file, encrypted, saved byte-exact on the other side.
    let file = server.dir.path().join("payload.bin");
    let bytes: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    alice.line(&format!("/file {}", file.display()));
    bob.wait_for("payload.bin (146.5 KiB)");
    let downloads = server.dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    bob.line(&format!("/save 1 {}", downloads.display()));
    bob.wait_for("saved payload.bin");
    assert_eq!(std::fs::read(downloads.join("payload.bin")).unwrap(), bytes);
    // The sender saves her own file too, in the same run.
    let own = server.dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    alice.line(&format!("/save 1 {}", own.display()));
    alice.wait_for("saved payload.bin");
    assert_eq!(std::fs::read(own.join("payload.bin")).unwrap(), bytes);

    // Safety numbers: the same on both screens; Alice marks Bob verified.
    alice.line("/safety");
    let shown = |s: &str| safety_digits(s).len() == 12;
    let a = safety_digits(&alice.wait_until("safety number", shown));
    bob.line("/safety");
    let b = safety_digits(&bob.wait_until("safety number", shown));
    assert_eq!(a.len(), 12, "{a:?}");
    assert_eq!(a, b);
    alice.wait_for("Bob is not verified");
    alice.key("v");
    alice.wait_for("✓ Bob is verified");
    alice.key("Escape");
    bob.key("Escape");
    bob.wait_until("the safety number closed", |s| safety_digits(s).is_empty());

    // Bob restarts his client: his history is there.
    bob.restart();
    bob.wait_for("Alice");
    bob.key("Tab");
    let screen = bob.wait_for("Alice: Hi Bob, مرحبا");
    assert!(screen.contains("you: Hello Alice, 你好 👋"), "{screen}");
    // The file received before the restart saves again: its key was kept.
    bob.wait_for("payload.bin (146.5 KiB)");
    let again = server.dir.path().join("after-restart");
    std::fs::create_dir(&again).unwrap();
    bob.line(&format!("/save 1 {}", again.display()));
    bob.wait_for("saved payload.bin");
    assert_eq!(std::fs::read(again.join("payload.bin")).unwrap(), bytes);
    // And the chat goes on.
    bob.line("back again");
    alice.wait_for("Bob: back again");

    // Presence in the header, live: Bob leaves, then comes back.
    alice.wait_for("🔒 end-to-end encrypted  online");
    bob.quit();
    alice.wait_for("🔒 end-to-end encrypted  last seen");
    bob.respawn();
    alice.wait_for("🔒 end-to-end encrypted  online");
}

#[test]
fn replies_edits_of_any_message_contacts_and_invitations() {
    let mut server = ChatServer::start();
    let alice = Terminal::start(server.interactive("alice"), 120, 40);
    let bob = Terminal::start(server.interactive("bob"), 120, 40);
    sign_up(&mut server, &alice, "+14155550521", "Alice");
    sign_up(&mut server, &bob, "+14155550522", "Bob");

    // Bob lets nobody add him to groups: adds become invitations.
    bob.line("/groups nobody");
    bob.wait_for("everyone invites you");
    // Discovery: which numbers are on Natter.
    bob.line("/discover +14155550521 +14155550599 12ab");
    bob.wait_for("✓ +14155550521 is on Natter");
    let screen = bob.wait_for("· +14155550599 is not on Natter");
    assert!(screen.contains("✗ 12ab is not a phone number"), "{screen}");
    // Typing only once the screen is closed: an Escape that the next key
    // follows at once reads as Alt and that key.
    bob.key("Escape");
    bob.wait_until("the discovery closed", |s| !s.contains("is on Natter"));
    // Contacts: add Alice, see her with her number and presence, open the chat.
    bob.line("/contact +14155550521");
    bob.wait_for("Alice is in your contacts");
    let screen = bob.wait_for("Alice  +14155550521  ● online");
    assert!(screen.contains(" Contacts "), "{screen}");
    bob.key("Enter");
    bob.wait_for("🔒 end-to-end encrypted");
    bob.line("first from bob");
    bob.line("second from bob");

    // Alice selects Bob's first message (not the last) and answers it.
    alice.wait_for("second from bob");
    alice.key("Tab");
    alice.wait_for("Bob: second from bob");
    alice.key("M-Up");
    alice.wait_for("r reply · e edit");
    alice.key("Up");
    alice.key("r");
    alice.wait_for("Reply to Bob: first from bob");
    alice.line("answering your first");
    let screen = bob.wait_for("Alice: answering your first");
    assert!(screen.contains("↱ you: first from bob"), "{screen}");

    // Bob edits his first message (two up from the newest) and deletes the second.
    bob.key("M-Up");
    bob.key("Up");
    bob.key("Up");
    bob.key("e");
    bob.wait_for("Edit your message");
    bob.tmux(&["send-keys", "-t", "main", "-l", " (fixed)"]);
    bob.key("Enter");
    alice.wait_for("Bob: first from bob (fixed) (edited)");
    bob.key("M-Up");
    bob.key("Up");
    bob.key("d");
    alice.wait_for("Bob: (deleted)");
    // The quote follows the edit.
    alice.wait_for("↱ Bob: first from bob (fixed)");

    // Alice's group invites Bob; he accepts and reads the group.
    alice.line("/group Book club +14155550522");
    alice.wait_for("Book club");
    bob.wait_for("Chats · ✉ 1: /invites");
    bob.line("/invites");
    bob.wait_for("✉ Book club — invited by Alice");
    bob.key("a");
    bob.wait_for("you joined Book club");
    // Alice's device adds Bob's to the encryption by itself.
    alice.wait_for(" joined");
    alice.line("welcome to the club");
    bob.wait_for("Alice: welcome to the club");
    bob.line("glad to be here");
    alice.wait_for("Bob: glad to be here");
}

#[test]
fn a_second_device_is_approved_and_offline_messages_go_out_in_order() {
    let mut server = ChatServer::start();
    let alice = Terminal::start(server.interactive("alice"), 120, 36);
    let bob = Terminal::start(server.interactive("bob"), 120, 36);
    let laptop = Terminal::start(server.interactive("alice-laptop"), 120, 36);
    sign_up(&mut server, &alice, "+14155550511", "Alice");
    sign_up(&mut server, &bob, "+14155550512", "Bob");
    bob.line("/new +14155550511");
    bob.wait_for("🔒 end-to-end encrypted");
    bob.line("before the laptop");
    alice.wait_for("before the laptop");

    // Alice's second device logs in to her account and waits for approval.
    sign_up(&mut server, &laptop, "+14155550511", "");
    alice.line("/devices");
    alice.wait_for("waiting for approval");
    alice.key("a");
    alice.wait_for("the device is approved");
    alice.key("Escape");
    laptop.wait_for("this device is approved");
    laptop.key("Tab");
    // The history came along, and new messages reach the new device.
    laptop.wait_for("Bob: before the laptop");
    bob.line("after the laptop");
    laptop.wait_for("Bob: after the laptop");
    alice.key("Tab");
    alice.wait_for("Bob: after the laptop");

    // The server goes away; Bob writes two messages; they wait, marked.
    server.restart(|| {
        bob.wait_for("○ offline");
        bob.line("written offline, first");
        bob.line("written offline, second");
        bob.wait_until("two queued messages", |s| {
            s.matches("[queued]").count() == 2
        });
    });
    // Back: they go out in order, and both of Alice's devices read them.
    for term in [&alice, &laptop] {
        let screen = term.wait_for("Bob: written offline, second");
        let first = screen.find("written offline, first").unwrap();
        // (the list's preview shows the second one too: the last one found is the conversation's)
        assert!(
            first < screen.rfind("written offline, second").unwrap(),
            "{screen}"
        );
    }
    bob.wait_until("no queued message", |s| !s.contains("[queued]"));
}

#[test]
fn files_go_to_plaintext_chats_as_plain_media_and_save_byte_exact() {
    let mut server = ChatServer::start();
    let alice = Terminal::start(server.interactive("alice"), 120, 36);
    let bob = Terminal::start(server.interactive("bob"), 120, 36);
    sign_up(&mut server, &alice, "+14155550531", "Alice");
    sign_up(&mut server, &bob, "+14155550532", "Bob");
    bob.line("/plain +14155550531");
    bob.wait_for("not end-to-end encrypted");
    // More than one piece of the ranged download (about 4 MiB each).
    let file = server.dir.path().join("notes.bin");
    let bytes: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    bob.line(&format!("/file {}", file.display()));
    alice.wait_for("📎 notes.bin");
    alice.key("Tab");
    alice.wait_for("Bob: 📎 notes.bin [file 1: /save 1]");
    let downloads = server.dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    alice.line(&format!("/save 1 {}", downloads.display()));
    alice.wait_for("saved notes.bin (4.8 MiB)");
    assert_eq!(std::fs::read(downloads.join("notes.bin")).unwrap(), bytes);
    // The sender saves it in the same run: the line names the upload as
    // soon as the server has the message.
    bob.wait_for("you: 📎 notes.bin [file 1: /save 1]");
    let mine = server.dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    bob.line(&format!("/save 1 {}", mine.display()));
    bob.wait_for("saved notes.bin (4.8 MiB)");
    assert_eq!(std::fs::read(mine.join("notes.bin")).unwrap(), bytes);
}

/// Whether the screen (with colours) shows a thumbnail whose top is about
/// `upper` and whose bottom is about `lower` (a JPEG thumbnail's colours are
/// close, not exact): a run of rows of `▀` whose first row's foreground (the
/// upper pixels) and last row's background (the lower ones) are these.
/// The SGR escapes are followed the way a terminal does.
fn has_thumbnail(colours: &str, upper: [u8; 3], lower: [u8; 3]) -> bool {
    type Rgb = Option<[u8; 3]>;
    let near = |c: Rgb, want: [u8; 3]| {
        c.is_some_and(|c| c.iter().zip(want).all(|(&a, b)| a.abs_diff(b) <= 40))
    };
    let (mut fg, mut bg): (Rgb, Rgb) = (None, None);
    // Each row's first `▀`: its colours.
    let mut rows: Vec<Option<(Rgb, Rgb)>> = vec![None];
    for (n, piece) in colours.split("\x1b[").enumerate() {
        let text = if n == 0 {
            piece
        } else {
            let Some((params, text)) = piece.split_once('m') else {
                continue;
            };
            let p: Vec<&str> = params.split(';').collect();
            let mut i = 0;
            while i < p.len() {
                let step = match (p[i], p.get(i + 1)) {
                    ("38" | "48", Some(&"2")) if i + 4 < p.len() => {
                        let rgb = [p[i + 2], p[i + 3], p[i + 4]].map(|n| n.parse().unwrap_or(0));
                        if p[i] == "38" {
                            fg = Some(rgb);
                        } else {
                            bg = Some(rgb);
                        }
                        5
                    }
                    ("38" | "48", Some(&"5")) => 3,
                    ("" | "0", _) => {
                        (fg, bg) = (None, None);
                        1
                    }
                    ("39", _) => {
                        fg = None;
                        1
                    }
                    ("49", _) => {
                        bg = None;
                        1
                    }
                    _ => 1,
                };
                i += step;
            }
            text
        };
        for c in text.chars() {
            match c {
                '\n' => rows.push(None),
                '▀' => {
                    let row = rows.last_mut().expect("one row at least");
                    row.get_or_insert((fg, bg));
                }
                _ => {}
            }
        }
    }
    rows.split(Option::is_none)
        .filter(|run| !run.is_empty())
        .any(|run| {
            let (top, bottom) = (
                run[0].expect("a ▀ row"),
                run[run.len() - 1].expect("a ▀ row"),
            );
            near(top.0, upper) && near(bottom.1, lower)
        })
}

#[test]
fn images_show_as_half_block_thumbnails_on_a_truecolor_terminal() {
    let mut server = ChatServer::start();
    let alice = Terminal::start_with(server.interactive("alice"), 120, 40, "COLORTERM=truecolor");
    let bob = Terminal::start(server.interactive("bob"), 120, 40);
    sign_up(&mut server, &alice, "+14155550541", "Alice");
    sign_up(&mut server, &bob, "+14155550542", "Bob");
    bob.line("/new +14155550541");
    bob.wait_for("🔒 end-to-end encrypted");
    // Red above, blue below: the cells show them as ▀ in front and behind.
    let picture = image::RgbImage::from_fn(64, 32, |_, y| {
        if y < 16 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let file = server.dir.path().join("sunset.png");
    picture.save(&file).unwrap();
    bob.line(&format!("/file {}", file.display()));
    alice.wait_for("sunset.png");
    alice.key("Tab");
    alice.wait_for("Bob: 📎 sunset.png");
    let sunset = |s: &str| has_thumbnail(s, [255, 0, 0], [0, 0, 255]);
    alice.wait_until_colours("the thumbnail", sunset);
    // After a restart it comes from the local history.
    alice.restart();
    alice.wait_for("Bob");
    alice.key("Tab");
    alice.wait_for("Bob: 📎 sunset.png");
    alice.wait_until_colours("the thumbnail after the restart", sunset);
    // Without 24-bit colour: the name and size only.
    assert!(!bob.screen().contains('▀'));
    bob.wait_for("you: 📎 sunset.png");

    // A plaintext chat (with Carol: Alice and Bob have their direct chat):
    // the server's thumbnail, drawn the same way, for an image that
    // arrives, for my own as soon as the server has it, and from the
    // history after a restart.
    let carol = Terminal::start(server.interactive("carol"), 120, 40);
    sign_up(&mut server, &carol, "+14155550543", "Carol");
    carol.line("/plain +14155550541");
    carol.wait_for("not end-to-end encrypted");
    let image_file = |name: &str, upper: [u8; 3], lower: [u8; 3]| {
        let picture = image::RgbImage::from_fn(64, 32, |_, y| {
            image::Rgb(if y < 16 { upper } else { lower })
        });
        let file = server.dir.path().join(name);
        picture.save(&file).unwrap();
        file
    };
    let (green, yellow, magenta, cyan) = ([0, 255, 0], [255, 255, 0], [255, 0, 255], [0, 255, 255]);
    let garden = image_file("garden.png", green, yellow);
    carol.line(&format!("/file {}", garden.display()));
    carol.wait_for("you: 📎 garden.png [file 1: /save 1]");
    alice.wait_for("Carol");
    alice.key("Tab");
    alice.wait_for("Carol: 📎 garden.png [file 1: /save 1]");
    let gardens = |s: &str| has_thumbnail(s, green, yellow);
    alice.wait_until_colours("the plaintext image's thumbnail", gardens);
    let pond = image_file("pond.png", magenta, cyan);
    alice.line(&format!("/file {}", pond.display()));
    alice.wait_for("you: 📎 pond.png [file 2: /save 2]");
    let both = |s: &str| gardens(s) && has_thumbnail(s, magenta, cyan);
    alice.wait_until_colours("my own plaintext image's thumbnail", both);
    assert!(!gardens(&carol.colours()));
    alice.restart();
    alice.wait_for("Carol");
    alice.key("Tab");
    alice.wait_for("you: 📎 pond.png [file 2: /save 2]");
    alice.wait_until_colours("the plaintext thumbnails after the restart", both);
}
