//! The interactive client's state and what keys and commands do to it. No
//! I/O: the terminal loop feeds it keys and [`Update`]s and sends the
//! [`Command`]s it returns, so it is tested without a terminal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use natter_proto::chats::ChatKind;
use natter_proto::users::GroupAddPermission;
use natter_proto::{ChatId, MessageId, UserId};
use time::OffsetDateTime;

use crate::driver::{
    ChatRow, Command, ContactRow, DeviceRow, Hit, InvitationRow, Line, LineBody, Mark, Update,
};

/// How long "typing…" shows after the last signal.
pub const TYPING_SHOWN: Duration = Duration::from_secs(6);
/// At most one typing signal per this long.
pub const TYPING_EVERY: Duration = Duration::from_secs(3);
/// Below this width the list and the conversation take turns.
pub const NARROW: u16 = 70;
/// The longest input line (characters).
pub const MAX_INPUT: usize = 4000;
/// Why a file line cannot be saved: my own file, still on its way (the
/// server has not stored its message yet).
const NO_FILE_KEY: &str = "that file is still on its way: it can be saved once the server has it";

/// One conversation's loaded lines and receipts.
#[derive(Debug, Default, Clone)]
pub struct Conversation {
    /// Oldest first.
    pub lines: Vec<Line>,
    /// Older lines exist.
    pub has_more: bool,
    /// A page is being loaded.
    pub loading: bool,
    /// Delivered to everyone up to here.
    pub delivered: i64,
    /// Read by everyone up to here.
    pub read: i64,
    /// Rows scrolled up from the bottom.
    pub scroll: usize,
    /// The history was loaded once.
    pub loaded: bool,
}

/// A screen over the main one.
#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    /// Key bindings and commands.
    Help,
    /// A safety number.
    Safety {
        /// With whom.
        user: UserId,
        /// The digits, grouped.
        digits: Option<String>,
        /// Marked verified.
        verified: bool,
    },
    /// Search results.
    Search {
        /// The query.
        query: String,
        /// The hits (`None`: searching).
        hits: Option<Vec<Hit>>,
        /// The selected hit.
        selected: usize,
    },
    /// The account's devices.
    Devices {
        /// Them (`None`: loading).
        rows: Option<Vec<DeviceRow>>,
        /// The selected one.
        selected: usize,
    },
    /// Pending invitations to groups (the list is [`App::invitations`]).
    Invitations {
        /// The selected one.
        selected: usize,
    },
    /// My contacts.
    Contacts {
        /// Them (`None`: loading).
        rows: Option<Vec<ContactRow>>,
        /// The selected one.
        selected: usize,
    },
    /// Lines to read (discovery's answer).
    Info {
        /// The title.
        title: String,
        /// The lines.
        lines: Vec<String>,
    },
}

/// What the input line writes, besides a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compose {
    /// An answer to this message.
    Reply(MessageId),
    /// A new text for this message of mine.
    Edit(MessageId),
}

/// What is known of someone's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Online now.
    pub online: bool,
    /// Last seen, if they let me know.
    pub last_seen: Option<OffsetDateTime>,
}

/// The interactive client's state.
#[derive(Debug)]
pub struct App {
    /// Me.
    pub me: Option<UserId>,
    /// My name and number.
    pub me_label: String,
    /// The chat list, as the server orders it.
    pub chats: Vec<ChatRow>,
    /// The selected chat in the list.
    pub selected: usize,
    /// The open chat.
    pub open: Option<ChatId>,
    /// Loaded conversations.
    pub conversations: HashMap<ChatId, Conversation>,
    /// The input line.
    pub input: String,
    /// The cursor in the input, in characters.
    pub cursor: usize,
    /// A screen over the main one.
    pub overlay: Option<Overlay>,
    /// The last notice (or error) and whether it is an error.
    pub status: Option<(String, bool)>,
    /// Connected to the server.
    pub connected: bool,
    /// Who types where, and since when.
    pub typing: HashMap<ChatId, HashMap<UserId, Instant>>,
    /// Presence by user.
    pub presence: HashMap<UserId, Presence>,
    /// Names by user.
    pub names: HashMap<UserId, String>,
    /// Contacts whose identity changed, not yet looked at.
    pub identity_changed: Vec<UserId>,
    /// A long step in progress, and since when.
    pub progress: Option<(String, Instant)>,
    /// How far the transfer in progress is (0 to 1), once it has moved.
    pub progress_ratio: Option<f64>,
    /// On a narrow terminal: the list shows, not the conversation.
    pub show_list: bool,
    /// The session ended with this sentence.
    pub fatal: Option<String>,
    /// Quit.
    pub quit: bool,
    /// The local time offset for times and day separators.
    pub offset: time::UtcOffset,
    /// When I last told a chat I am typing.
    last_typing: Option<(ChatId, Instant)>,
    /// The terminal's width (for the narrow layout).
    pub width: u16,
    /// Pending invitations to groups.
    pub invitations: Vec<InvitationRow>,
    /// Selection mode: the highlighted line of the open conversation.
    pub selecting: Option<usize>,
    /// What the input line writes, if not a new message.
    pub compose: Option<Compose>,
    /// Image thumbnails by message.
    pub thumbs: HashMap<MessageId, crate::thumb::Thumb>,
    /// Rows the help screen is scrolled (a short terminal).
    pub help_scroll: u16,
}

impl App {
    /// An empty client; times are shown at `offset`.
    #[must_use]
    pub fn new(offset: time::UtcOffset) -> Self {
        Self {
            me: None,
            me_label: String::new(),
            chats: Vec::new(),
            selected: 0,
            open: None,
            conversations: HashMap::new(),
            input: String::new(),
            cursor: 0,
            overlay: None,
            status: None,
            connected: false,
            typing: HashMap::new(),
            presence: HashMap::new(),
            names: HashMap::new(),
            identity_changed: Vec::new(),
            progress: None,
            progress_ratio: None,
            show_list: true,
            fatal: None,
            quit: false,
            offset,
            last_typing: None,
            width: 80,
            invitations: Vec::new(),
            selecting: None,
            compose: None,
            thumbs: HashMap::new(),
            help_scroll: 0,
        }
    }

    /// Whether the list and the conversation take turns.
    #[must_use]
    pub fn narrow(&self) -> bool {
        self.width < NARROW
    }

    /// The open chat's row.
    #[must_use]
    pub fn open_row(&self) -> Option<&ChatRow> {
        let open = self.open?;
        self.chats.iter().find(|c| c.id == open)
    }

    /// A user's name as shown.
    #[must_use]
    pub fn name(&self, user: UserId) -> String {
        if Some(user) == self.me {
            return "you".to_owned();
        }
        self.names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| "someone".to_owned())
    }

    /// Who is typing in `chat` now.
    #[must_use]
    pub fn typing_in(&self, chat: ChatId, now: Instant) -> Vec<String> {
        let mut who: Vec<String> = self
            .typing
            .get(&chat)
            .map(|m| {
                m.iter()
                    .filter(|(_, t)| now.duration_since(**t) < TYPING_SHOWN)
                    .map(|(u, _)| self.name(*u))
                    .collect()
            })
            .unwrap_or_default();
        who.sort();
        who
    }

    /// Shows a notice in the status line.
    pub fn notice(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), false));
    }

    /// Shows an error in the status line.
    pub fn error(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), true));
    }

    /// Opens the chat at `index` of the list.
    fn open_index(&mut self, index: usize) -> Vec<Command> {
        let Some(row) = self.chats.get(index) else {
            return Vec::new();
        };
        self.selected = index;
        let chat = row.id;
        if self.open != Some(chat) {
            self.selecting = None;
            self.compose = None;
        }
        self.open = Some(chat);
        self.show_list = false;
        if let Some(row) = self.chats.get_mut(index) {
            row.unread = 0;
        }
        let conv = self.conversations.entry(chat).or_default();
        conv.scroll = 0;
        let mut out = Vec::new();
        if !conv.loaded {
            conv.loading = true;
            out.push(Command::Open(chat));
        }
        if let Some(seq) = conv.lines.iter().filter_map(|l| l.seq).max() {
            out.push(Command::Read { chat, seq });
        }
        out
    }

    /// Opens `chat` if it is in the list.
    fn open_chat(&mut self, chat: ChatId) -> Vec<Command> {
        match self.chats.iter().position(|c| c.id == chat) {
            Some(i) => self.open_index(i),
            None => Vec::new(),
        }
    }

    /// Applies an update from the driver; returns commands it causes.
    pub fn apply(&mut self, update: Update, now: Instant) -> Vec<Command> {
        match update {
            Update::Me { user, name, phone } => {
                self.me = Some(user);
                self.me_label = format!("{name} ({phone})");
            }
            Update::Chats(rows) => {
                for r in &rows {
                    for (u, n) in &r.people {
                        self.names.insert(*u, n.clone());
                    }
                }
                let open = self.open;
                self.chats = rows;
                if let Some(open) = open {
                    if let Some(i) = self.chats.iter().position(|c| c.id == open) {
                        self.selected = i;
                        self.chats[i].unread = 0;
                    } else {
                        self.open = None;
                        self.show_list = true;
                    }
                }
                self.selected = self.selected.min(self.chats.len().saturating_sub(1));
            }
            Update::History {
                chat,
                lines,
                has_more,
                older,
            } => {
                let conv = self.conversations.entry(chat).or_default();
                conv.loading = false;
                conv.has_more = has_more;
                conv.loaded = true;
                if older {
                    let mut lines = lines;
                    lines.append(&mut conv.lines);
                    conv.lines = lines;
                } else {
                    // Keep what arrived live while the page was loading.
                    let known: Vec<i64> = lines.iter().filter_map(|l| l.seq).collect();
                    let newest = known.iter().max().copied().unwrap_or(0);
                    let live: Vec<Line> = conv
                        .lines
                        .drain(..)
                        .filter(|l| l.seq.is_none_or(|s| s > newest))
                        .collect();
                    conv.lines = lines;
                    conv.lines.extend(live);
                }
                if Some(chat) == self.open
                    && let Some(seq) = conv.lines.iter().filter_map(|l| l.seq).max()
                {
                    return vec![Command::Read { chat, seq }];
                }
            }
            Update::Line(line) => return self.add_line(*line),
            Update::Sent {
                local_id,
                seq,
                message_id,
            } => {
                for conv in self.conversations.values_mut() {
                    let duplicate = conv.lines.iter().any(|l| l.seq == Some(seq));
                    if let Some(i) = conv
                        .lines
                        .iter()
                        .position(|l| l.local_id.as_deref() == Some(&local_id))
                    {
                        if duplicate {
                            conv.lines.remove(i);
                        } else {
                            conv.lines[i].seq = Some(seq);
                            conv.lines[i].message_id = Some(message_id);
                            conv.lines[i].mark = Mark::None;
                        }
                    }
                }
            }
            Update::Sending { local_id } => self.mark(&local_id, Mark::Sending),
            Update::Queued { local_id } => {
                self.mark(&local_id, Mark::Queued);
                self.notice("offline: the message waits and is sent when the server is back");
            }
            Update::Failed { local_id, reason } => {
                for conv in self.conversations.values_mut() {
                    conv.lines
                        .retain(|l| l.local_id.as_deref() != Some(&local_id));
                }
                self.error(format!("not sent: {reason}"));
            }
            Update::Changed { chat, target, text } => {
                if let Some(conv) = self.conversations.get_mut(&chat) {
                    for l in &mut conv.lines {
                        if l.message_id == Some(target) {
                            match &text {
                                Some(t) => {
                                    l.body = LineBody::Text(t.clone());
                                    l.edited = true;
                                }
                                None => {
                                    l.body = LineBody::Text(String::new());
                                    l.deleted = true;
                                }
                            }
                        }
                    }
                }
            }
            Update::Receipt {
                chat,
                delivered,
                read,
            } => {
                let conv = self.conversations.entry(chat).or_default();
                conv.delivered = conv.delivered.max(delivered);
                conv.read = conv.read.max(read);
            }
            Update::Typing { chat, user } => {
                self.typing.entry(chat).or_default().insert(user, now);
            }
            Update::Presence {
                user,
                online,
                last_seen,
            } => {
                self.presence.insert(user, Presence { online, last_seen });
            }
            Update::Connection(up) => {
                self.connected = up;
            }
            Update::Safety {
                user,
                digits,
                verified,
            } => {
                self.identity_changed.retain(|u| *u != user);
                self.overlay = Some(Overlay::Safety {
                    user,
                    digits: Some(digits),
                    verified,
                });
            }
            Update::IdentityChanged(user) => {
                if !self.identity_changed.contains(&user) {
                    self.identity_changed.push(user);
                }
            }
            Update::Search(found) => {
                if let Some(Overlay::Search { hits, selected, .. }) = &mut self.overlay {
                    *hits = Some(found);
                    *selected = 0;
                }
            }
            Update::Devices(found) => {
                if let Some(Overlay::Devices { rows, selected }) = &mut self.overlay {
                    // A device waiting for approval is what the screen is for.
                    *selected = found
                        .iter()
                        .position(|d| !d.approved && !d.current)
                        .unwrap_or((*selected).min(found.len().saturating_sub(1)));
                    *rows = Some(found);
                }
            }
            Update::Invitations(rows) => {
                if let Some(Overlay::Invitations { selected }) = &mut self.overlay {
                    *selected = (*selected).min(rows.len().saturating_sub(1));
                }
                if rows.len() > self.invitations.len() {
                    self.notice(format!(
                        "✉ {} invited you to {}: /invites",
                        rows[0].inviter, rows[0].group
                    ));
                }
                self.invitations = rows;
            }
            Update::Contacts(found) => {
                if let Some(Overlay::Contacts { rows, selected }) = &mut self.overlay {
                    *selected = (*selected).min(found.len().saturating_sub(1));
                    *rows = Some(found);
                }
            }
            Update::FileKept { local_id, body } => {
                for conv in self.conversations.values_mut() {
                    for l in &mut conv.lines {
                        if l.local_id.as_deref() == Some(&local_id)
                            && matches!(l.body, LineBody::File { .. })
                        {
                            l.body = body.clone();
                        }
                    }
                }
            }
            Update::Thumbnail { message, thumb } => {
                self.thumbs.insert(message, thumb);
            }
            Update::Info { title, lines } => {
                self.overlay = Some(Overlay::Info { title, lines });
            }
            Update::Progress(p) => {
                self.progress = p.map(|label| (label, now));
                self.progress_ratio = None;
            }
            Update::Transfer { label, done, total } => {
                // A late step of a transfer that already ended is dropped.
                if self.progress.as_ref().is_some_and(|(l, _)| *l == label) {
                    self.progress_ratio = Some(done as f64 / total.max(1) as f64);
                }
            }
            Update::OpenChat(chat) => {
                self.status = None;
                return self.open_chat(chat);
            }
            Update::Notice(text) => self.notice(text),
            Update::Error(text) => self.error(text),
            Update::Fatal(text) => {
                self.fatal = Some(text);
                self.quit = true;
            }
        }
        Vec::new()
    }

    fn mark(&mut self, local_id: &str, mark: Mark) {
        for conv in self.conversations.values_mut() {
            for l in &mut conv.lines {
                if l.local_id.as_deref() == Some(local_id) {
                    l.mark = mark;
                }
            }
        }
    }

    fn add_line(&mut self, line: Line) -> Vec<Command> {
        let chat = line.chat;
        if let Some(u) = self.typing.get_mut(&chat) {
            u.remove(&line.sender);
        }
        let mine = Some(line.sender) == self.me;
        let preview = match &line.body {
            LineBody::Text(t) => Some(t.clone()),
            LineBody::File { name, .. } | LineBody::PlainFile { name, .. } => {
                Some(format!("📎 {name}"))
            }
            LineBody::System(_) => None,
        };
        let is_open = Some(chat) == self.open;
        if let Some(row) = self.chats.iter_mut().find(|c| c.id == chat) {
            if let Some(p) = preview {
                row.last = p;
            }
            if !mine && !is_open && line.seq.is_some() {
                row.unread += 1;
            }
        }
        let conv = self.conversations.entry(chat).or_default();
        if line.seq.is_some() && conv.lines.iter().any(|l| l.seq == line.seq) {
            return Vec::new();
        }
        let seq = line.seq;
        conv.lines.push(line);
        match seq {
            Some(seq) if is_open && !mine => vec![Command::Read { chat, seq }],
            _ => Vec::new(),
        }
    }

    /// Handles a pasted text.
    pub fn paste(&mut self, text: &str) {
        for c in text.chars() {
            let c = if c == '\n' || c == '\r' { ' ' } else { c };
            self.insert(c);
        }
    }

    fn insert(&mut self, c: char) {
        if self.input.chars().count() >= MAX_INPUT || c.is_control() {
            return;
        }
        let at = self.byte_at(self.cursor);
        self.input.insert(at, c);
        self.cursor += 1;
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.input
            .char_indices()
            .nth(chars)
            .map_or(self.input.len(), |(i, _)| i)
    }

    /// Handles a key; returns the commands it causes.
    pub fn key(&mut self, key: KeyEvent, now: Instant) -> Vec<Command> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c' | 'q')) {
            self.quit = true;
            return Vec::new();
        }
        if let Some(overlay) = self.overlay.clone() {
            return self.overlay_key(overlay, key);
        }
        if self.selecting.is_some() {
            return self.select_key(key);
        }
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let in_conversation = self.open.is_some() && (!self.narrow() || !self.show_list);
        if key.code == KeyCode::Up
            && in_conversation
            && (alt || (self.narrow() && self.input.is_empty()))
        {
            self.start_selecting();
            return Vec::new();
        }
        match key.code {
            KeyCode::F(1) => {
                self.overlay = Some(Overlay::Help);
                Vec::new()
            }
            KeyCode::Char('?') if self.input.is_empty() => {
                self.overlay = Some(Overlay::Help);
                Vec::new()
            }
            KeyCode::Char('f') if ctrl => {
                self.input = "/search ".to_owned();
                self.cursor = self.input.chars().count();
                Vec::new()
            }
            KeyCode::Char('n') if ctrl => self.step(1),
            KeyCode::Char('p') if ctrl => self.step(-1),
            KeyCode::Tab | KeyCode::Down if self.show_list || !self.narrow() => self.step(1),
            KeyCode::BackTab | KeyCode::Up if self.show_list || !self.narrow() => self.step(-1),
            KeyCode::Tab => self.step(1),
            KeyCode::BackTab => self.step(-1),
            KeyCode::Esc => {
                if self.compose.is_some() {
                    self.compose = None;
                    self.input.clear();
                    self.cursor = 0;
                } else if !self.input.is_empty() {
                    self.input.clear();
                    self.cursor = 0;
                } else if self.narrow() {
                    self.show_list = true;
                }
                self.status = None;
                Vec::new()
            }
            KeyCode::PageUp => self.scroll_up(),
            KeyCode::PageDown => {
                if let Some(conv) = self.open.and_then(|c| self.conversations.get_mut(&c)) {
                    conv.scroll = conv.scroll.saturating_sub(10);
                }
                Vec::new()
            }
            KeyCode::Enter => self.submit(now),
            KeyCode::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    let at = self.byte_at(self.cursor);
                    self.input.remove(at);
                }
                Vec::new()
            }
            KeyCode::Delete => {
                if self.cursor < self.input.chars().count() {
                    let at = self.byte_at(self.cursor);
                    self.input.remove(at);
                }
                Vec::new()
            }
            KeyCode::Left => {
                self.cursor = self.cursor.saturating_sub(1);
                Vec::new()
            }
            KeyCode::Right => {
                self.cursor = (self.cursor + 1).min(self.input.chars().count());
                Vec::new()
            }
            KeyCode::Home => {
                self.cursor = 0;
                Vec::new()
            }
            KeyCode::End => {
                self.cursor = self.input.chars().count();
                Vec::new()
            }
            KeyCode::Char(c) if !ctrl => {
                self.insert(c);
                self.typed(now)
            }
            _ => Vec::new(),
        }
    }

    fn typed(&mut self, now: Instant) -> Vec<Command> {
        let Some(chat) = self.open else {
            return Vec::new();
        };
        if self.input.starts_with('/') {
            return Vec::new();
        }
        match self.last_typing {
            Some((c, t)) if c == chat && now.duration_since(t) < TYPING_EVERY => Vec::new(),
            _ => {
                self.last_typing = Some((chat, now));
                vec![Command::Typing(chat)]
            }
        }
    }

    fn step(&mut self, by: isize) -> Vec<Command> {
        if self.chats.is_empty() {
            return Vec::new();
        }
        let n = self.chats.len() as isize;
        let from = if self.open.is_some() {
            self.selected as isize
        } else {
            -1
        };
        let next = (from + by).rem_euclid(n) as usize;
        self.open_index(next)
    }

    fn scroll_up(&mut self) -> Vec<Command> {
        let Some(chat) = self.open else {
            return Vec::new();
        };
        let conv = self.conversations.entry(chat).or_default();
        conv.scroll += 10;
        // Near the top of what is loaded: the next page, once.
        let rows = conv.lines.len() * 2;
        if conv.has_more
            && !conv.loading
            && conv.scroll + 20 >= rows
            && let Some(before_seq) = conv.lines.iter().filter_map(|l| l.seq).min()
        {
            conv.loading = true;
            return vec![Command::Older { chat, before_seq }];
        }
        Vec::new()
    }

    fn overlay_key(&mut self, overlay: Overlay, key: KeyEvent) -> Vec<Command> {
        if key.code == KeyCode::Esc || key.code == KeyCode::Char('q') {
            self.overlay = None;
            return Vec::new();
        }
        match overlay {
            Overlay::Help => {
                let most = u16::try_from(crate::ui::HELP.len()).unwrap_or(u16::MAX);
                match key.code {
                    KeyCode::Down => self.help_scroll = (self.help_scroll + 1).min(most),
                    KeyCode::PageDown => self.help_scroll = (self.help_scroll + 10).min(most),
                    KeyCode::Up => self.help_scroll = self.help_scroll.saturating_sub(1),
                    KeyCode::PageUp => self.help_scroll = self.help_scroll.saturating_sub(10),
                    _ => {
                        self.help_scroll = 0;
                        self.overlay = None;
                    }
                }
                Vec::new()
            }
            Overlay::Info { .. } => {
                self.overlay = None;
                Vec::new()
            }
            Overlay::Invitations { selected } => {
                let len = self.invitations.len();
                let current = self.invitations.get(selected).map(|i| i.id);
                match key.code {
                    KeyCode::Down | KeyCode::Up if len > 0 => {
                        self.overlay = Some(Overlay::Invitations {
                            selected: moved(key.code, selected, len),
                        });
                        Vec::new()
                    }
                    KeyCode::Char('a') | KeyCode::Enter => match current {
                        Some(id) => {
                            self.overlay = None;
                            self.notice("joining…");
                            vec![Command::Accept(id)]
                        }
                        None => Vec::new(),
                    },
                    KeyCode::Char('d') => current.map(Command::Decline).into_iter().collect(),
                    _ => Vec::new(),
                }
            }
            Overlay::Contacts { rows, selected } => {
                let len = rows.as_ref().map_or(0, Vec::len);
                let current = rows.as_ref().and_then(|r| r.get(selected)).map(|c| c.user);
                match key.code {
                    KeyCode::Down | KeyCode::Up if len > 0 => {
                        self.overlay = Some(Overlay::Contacts {
                            rows,
                            selected: moved(key.code, selected, len),
                        });
                        Vec::new()
                    }
                    KeyCode::Enter => match current {
                        Some(user) => {
                            self.overlay = None;
                            vec![Command::DirectWith(user)]
                        }
                        None => Vec::new(),
                    },
                    KeyCode::Char('x') | KeyCode::Delete => {
                        current.map(Command::RemoveContact).into_iter().collect()
                    }
                    _ => Vec::new(),
                }
            }
            Overlay::Safety { user, .. } => match key.code {
                KeyCode::Char('v') => vec![Command::Verify {
                    user,
                    verified: true,
                }],
                KeyCode::Char('u') => vec![Command::Verify {
                    user,
                    verified: false,
                }],
                _ => Vec::new(),
            },
            Overlay::Search {
                query,
                hits,
                selected,
            } => {
                let len = hits.as_ref().map_or(0, Vec::len);
                match key.code {
                    KeyCode::Down | KeyCode::Up if len > 0 => {
                        self.overlay = Some(Overlay::Search {
                            query,
                            hits,
                            selected: moved(key.code, selected, len),
                        });
                        Vec::new()
                    }
                    KeyCode::Enter => {
                        let chat = hits.as_ref().and_then(|h| h.get(selected)).map(|h| h.chat);
                        self.overlay = None;
                        chat.map(|c| self.open_chat(c)).unwrap_or_default()
                    }
                    _ => Vec::new(),
                }
            }
            Overlay::Devices { rows, selected } => {
                let len = rows.as_ref().map_or(0, Vec::len);
                match key.code {
                    KeyCode::Down | KeyCode::Up if len > 0 => {
                        self.overlay = Some(Overlay::Devices {
                            rows,
                            selected: moved(key.code, selected, len),
                        });
                        Vec::new()
                    }
                    KeyCode::Char('a') => match rows.as_ref().and_then(|r| r.get(selected)) {
                        Some(d) if !d.approved && !d.current => vec![Command::Approve(d.id)],
                        Some(_) => {
                            self.notice("that device is approved already");
                            Vec::new()
                        }
                        None => Vec::new(),
                    },
                    KeyCode::Char('c') => vec![Command::LoginCode],
                    _ => Vec::new(),
                }
            }
        }
    }

    fn submit(&mut self, now: Instant) -> Vec<Command> {
        let text = std::mem::take(&mut self.input);
        self.cursor = 0;
        let text = text.trim().to_owned();
        if text.is_empty() {
            if self.narrow() && self.show_list {
                return self.open_index(self.selected);
            }
            return Vec::new();
        }
        if let Some(rest) = text.strip_prefix('/') {
            return self.slash(rest);
        }
        let Some(chat) = self.open else {
            self.error("open a chat first (Tab), or start one: /new +PHONE");
            return Vec::new();
        };
        let _ = now;
        self.last_typing = None;
        if let Some(conv) = self.conversations.get_mut(&chat) {
            conv.scroll = 0;
        }
        let reply_to = match self.compose.take() {
            Some(Compose::Edit(target)) => {
                return vec![Command::Edit { chat, target, text }];
            }
            Some(Compose::Reply(to)) => Some(to),
            None => None,
        };
        vec![Command::Send {
            chat,
            text,
            local_id: uuid::Uuid::now_v7().to_string(),
            reply_to,
        }]
    }

    /// Whether line `l` can be selected (a message the server has).
    fn selectable(l: &Line) -> bool {
        l.message_id.is_some() && !matches!(l.body, LineBody::System(_)) && !l.deleted
    }

    /// Enters selection mode at the newest message of the open chat.
    fn start_selecting(&mut self) {
        let Some(conv) = self.open.and_then(|c| self.conversations.get(&c)) else {
            return;
        };
        match conv.lines.iter().rposition(Self::selectable) {
            Some(i) => {
                self.selecting = Some(i);
                self.notice("r reply · e edit · d delete · s save file · Esc back");
            }
            None => self.error("no message to select here yet"),
        }
    }

    /// The selected line.
    #[must_use]
    pub fn selected_line(&self) -> Option<&Line> {
        let conv = self.conversations.get(&self.open?)?;
        conv.lines.get(self.selecting?)
    }

    /// A line's first words, for a quote: `Bob: Hello there…`.
    #[must_use]
    pub fn quote(&self, target: MessageId) -> String {
        let found = self
            .open
            .and_then(|c| self.conversations.get(&c))
            .and_then(|c| c.lines.iter().find(|l| l.message_id == Some(target)));
        match found {
            Some(l) => {
                let text = match &l.body {
                    _ if l.deleted => "(deleted)".to_owned(),
                    LineBody::Text(t) => t.clone(),
                    LineBody::File { name, .. } | LineBody::PlainFile { name, .. } => {
                        format!("📎 {name}")
                    }
                    LineBody::System(t) => t.clone(),
                };
                format!(
                    "{}: {}",
                    self.name(l.sender),
                    natter_client::quote_words(&text)
                )
            }
            None => "an earlier message".to_owned(),
        }
    }

    fn select_key(&mut self, key: KeyEvent) -> Vec<Command> {
        let (Some(chat), Some(at)) = (self.open, self.selecting) else {
            self.selecting = None;
            return Vec::new();
        };
        let lines = self
            .conversations
            .get(&chat)
            .map(|c| c.lines.clone())
            .unwrap_or_default();
        let Some(line) = lines.get(at).cloned() else {
            self.selecting = None;
            return Vec::new();
        };
        let mine = Some(line.sender) == self.me;
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => {
                if let Some(i) = lines[..at].iter().rposition(Self::selectable) {
                    self.selecting = Some(i);
                } else if let Some(conv) = self.conversations.get(&chat)
                    && conv.has_more
                {
                    // At the top of what is loaded: the page before.
                    return self.scroll_up();
                }
                Vec::new()
            }
            KeyCode::Down | KeyCode::Char('j') => {
                match lines[at + 1..].iter().position(Self::selectable) {
                    Some(i) => self.selecting = Some(at + 1 + i),
                    None => self.leave_selection(),
                }
                Vec::new()
            }
            KeyCode::Esc | KeyCode::Char('q') => {
                self.leave_selection();
                Vec::new()
            }
            KeyCode::Char('r') | KeyCode::Enter => {
                if let Some(id) = line.message_id {
                    self.compose = Some(Compose::Reply(id));
                    self.leave_selection();
                }
                Vec::new()
            }
            KeyCode::Char('e') => {
                match (&line.body, line.message_id) {
                    (LineBody::Text(t), Some(id)) if mine => {
                        self.compose = Some(Compose::Edit(id));
                        self.input = t.clone();
                        self.cursor = self.input.chars().count();
                        self.leave_selection();
                    }
                    _ if !mine => self.error("only your own messages can be edited"),
                    _ => self.error("only text messages can be edited"),
                }
                Vec::new()
            }
            KeyCode::Char('d') => match line.message_id {
                Some(target) if mine => {
                    self.leave_selection();
                    vec![Command::Delete { chat, target }]
                }
                _ => {
                    self.error("only your own messages can be deleted");
                    Vec::new()
                }
            },
            KeyCode::Char('s') => {
                let out = self.save(&line.body, PathBuf::from("."));
                if !out.is_empty() {
                    self.leave_selection();
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// The command that saves the file of a line to `path`.
    fn save(&mut self, body: &LineBody, path: PathBuf) -> Vec<Command> {
        match body {
            LineBody::File {
                body: Some(body), ..
            } => vec![Command::SaveFile {
                body: body.clone(),
                path,
            }],
            LineBody::PlainFile { name, media } => vec![Command::SavePlain {
                media: *media,
                name: name.clone(),
                path,
            }],
            LineBody::File { .. } => {
                self.error(NO_FILE_KEY);
                Vec::new()
            }
            _ => {
                self.error("that message is not a file");
                Vec::new()
            }
        }
    }

    fn leave_selection(&mut self) {
        self.selecting = None;
        self.status = None;
    }

    /// My latest message in the open chat that the server has.
    fn my_last(&self) -> Option<(ChatId, natter_proto::MessageId)> {
        let chat = self.open?;
        let conv = self.conversations.get(&chat)?;
        conv.lines
            .iter()
            .rev()
            .find(|l| Some(l.sender) == self.me && l.message_id.is_some() && !l.deleted)
            .and_then(|l| l.message_id.map(|m| (chat, m)))
    }

    /// The `n`th file of the open chat (1-based), or the latest.
    #[must_use]
    pub fn file(&self, n: Option<usize>) -> Option<&Line> {
        let chat = self.open?;
        let files: Vec<&Line> = self
            .conversations
            .get(&chat)?
            .lines
            .iter()
            .filter(|l| l.body.is_file())
            .collect();
        match n {
            Some(n) => files.get(n.checked_sub(1)?).copied(),
            None => files.last().copied(),
        }
    }

    #[allow(clippy::too_many_lines)]
    fn slash(&mut self, rest: &str) -> Vec<Command> {
        let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let args = args.trim();
        let open = self.open;
        let need_open = |app: &mut Self| {
            if open.is_none() {
                app.error("open a chat first");
            }
            open
        };
        let group = |app: &mut Self| -> Option<ChatId> {
            let chat = need_open(app)?;
            if app.open_row().is_some_and(|r| r.kind == ChatKind::Direct) {
                app.error("that works in groups only");
                return None;
            }
            Some(chat)
        };
        match name {
            "help" | "h" => {
                self.overlay = Some(Overlay::Help);
                Vec::new()
            }
            "quit" | "q" => {
                self.quit = true;
                Vec::new()
            }
            "new" | "plain" => {
                if args.is_empty() {
                    self.error(format!("usage: /{name} +PHONE"));
                    return Vec::new();
                }
                self.notice(format!("starting a chat with {args}…"));
                vec![Command::NewDirect {
                    phone: args.to_owned(),
                    plain: name == "plain",
                }]
            }
            "group" => {
                let (phones, words): (Vec<&str>, Vec<&str>) =
                    args.split_whitespace().partition(|w| w.starts_with('+'));
                if phones.is_empty() || words.is_empty() {
                    self.error("usage: /group NAME +PHONE [+PHONE…]");
                    return Vec::new();
                }
                vec![Command::NewGroup {
                    name: words.join(" "),
                    phones: phones.into_iter().map(str::to_owned).collect(),
                }]
            }
            "add" | "remove" => {
                let Some(chat) = group(self) else {
                    return Vec::new();
                };
                if args.is_empty() {
                    self.error(format!("usage: /{name} +PHONE"));
                    return Vec::new();
                }
                let phone = args.to_owned();
                if name == "add" {
                    vec![Command::Add { chat, phone }]
                } else {
                    vec![Command::Remove { chat, phone }]
                }
            }
            "leave" => group(self).map(Command::Leave).into_iter().collect(),
            "rename" => {
                let Some(chat) = group(self) else {
                    return Vec::new();
                };
                if args.is_empty() {
                    self.error("usage: /rename NAME");
                    return Vec::new();
                }
                vec![Command::Rename {
                    chat,
                    name: args.to_owned(),
                }]
            }
            "file" => {
                let Some(chat) = need_open(self) else {
                    return Vec::new();
                };
                if args.is_empty() {
                    self.error("usage: /file PATH");
                    return Vec::new();
                }
                vec![Command::SendFile {
                    chat,
                    path: expand(args),
                }]
            }
            "save" => {
                let mut words = args.splitn(2, ' ');
                let first = words.next().unwrap_or_default();
                let (n, path) = match first.parse::<usize>() {
                    Ok(n) => (Some(n), words.next().unwrap_or_default().trim()),
                    Err(_) => (None, args),
                };
                let path = if path.is_empty() { "." } else { path };
                match self.file(n).map(|l| l.body.clone()) {
                    Some(body) => self.save(&body, expand(path)),
                    None => {
                        self.error("no such file in this chat: /save [N] [PATH]");
                        Vec::new()
                    }
                }
            }
            "edit" => match self.my_last() {
                Some((chat, target)) if !args.is_empty() => vec![Command::Edit {
                    chat,
                    target,
                    text: args.to_owned(),
                }],
                Some(_) => {
                    self.error("usage: /edit NEW TEXT");
                    Vec::new()
                }
                None => {
                    self.error("you have no message here to edit");
                    Vec::new()
                }
            },
            "delete" => match self.my_last() {
                Some((chat, target)) => vec![Command::Delete { chat, target }],
                None => {
                    self.error("you have no message here to delete");
                    Vec::new()
                }
            },
            "safety" | "verify" => {
                let Some(row) = self.open_row() else {
                    self.error("open a direct chat first");
                    return Vec::new();
                };
                let Some(user) = row.other else {
                    self.error("safety numbers are per person: open your direct chat with them");
                    return Vec::new();
                };
                self.overlay = Some(Overlay::Safety {
                    user,
                    digits: None,
                    verified: false,
                });
                vec![Command::Safety(user)]
            }
            "search" => {
                if args.is_empty() {
                    self.error("usage: /search WORDS");
                    return Vec::new();
                }
                self.overlay = Some(Overlay::Search {
                    query: args.to_owned(),
                    hits: None,
                    selected: 0,
                });
                vec![Command::Search(args.to_owned())]
            }
            "devices" => {
                self.overlay = Some(Overlay::Devices {
                    rows: None,
                    selected: 0,
                });
                vec![Command::Devices]
            }
            "older" => self.scroll_up(),
            "invites" | "invitations" => {
                if self.invitations.is_empty() {
                    self.notice("no pending invitations");
                    return vec![Command::Invitations];
                }
                self.overlay = Some(Overlay::Invitations { selected: 0 });
                vec![Command::Invitations]
            }
            "groups" => {
                let permission = match args {
                    "everyone" => GroupAddPermission::Everyone,
                    "contacts" => GroupAddPermission::Contacts,
                    "nobody" => GroupAddPermission::Nobody,
                    _ => {
                        self.error("usage: /groups everyone|contacts|nobody (who may add you)");
                        return Vec::new();
                    }
                };
                vec![Command::GroupAdds(permission)]
            }
            "contacts" => {
                self.overlay = Some(Overlay::Contacts {
                    rows: None,
                    selected: 0,
                });
                vec![Command::Contacts]
            }
            "contact" => {
                if !args.starts_with('+') || args.contains(' ') {
                    self.error("usage: /contact +PHONE (adds them to your contacts)");
                    return Vec::new();
                }
                self.overlay = Some(Overlay::Contacts {
                    rows: None,
                    selected: 0,
                });
                vec![Command::AddContact(args.to_owned())]
            }
            "discover" => {
                let phones: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
                if phones.is_empty() {
                    self.error("usage: /discover +PHONE [+PHONE…]");
                    return Vec::new();
                }
                vec![Command::Discover(phones)]
            }
            _ => {
                self.error(format!("unknown command /{name}: F1 lists them"));
                Vec::new()
            }
        }
    }
}

/// A list screen's selection after Up or Down (around the ends).
fn moved(key: KeyCode, selected: usize, len: usize) -> usize {
    if key == KeyCode::Up {
        (selected + len - 1) % len
    } else {
        (selected + 1) % len
    }
}

/// `~/x` as a path under the home directory.
fn expand(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::home_dir().map_or_else(|| PathBuf::from(path), |h| h.join(rest)),
        None => PathBuf::from(path),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::driver::{ChatRow, Line, LineBody, Mark, Update};
    use crossterm::event::KeyEvent;

    fn id<T: std::str::FromStr>() -> T {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .unwrap_or_else(|_| unreachable!())
    }

    fn row(chat: ChatId, kind: ChatKind, other: Option<UserId>) -> ChatRow {
        ChatRow {
            id: chat,
            kind,
            title: "x".into(),
            encrypted: true,
            unread: 0,
            last: String::new(),
            other,
            people: Vec::new(),
        }
    }

    /// A client signed in as `me` with these chats.
    fn signed_in(me: UserId, chats: Vec<ChatRow>) -> App {
        let now = Instant::now();
        let mut app = App::new(time::UtcOffset::UTC);
        app.apply(
            Update::Me {
                user: me,
                name: "A".into(),
                phone: "+1".into(),
            },
            now,
        );
        app.apply(Update::Chats(chats), now);
        app
    }

    fn typed(app: &mut App, text: &str, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        for c in text.chars() {
            out.extend(app.key(KeyEvent::from(KeyCode::Char(c)), now));
        }
        out.extend(app.key(KeyEvent::from(KeyCode::Enter), now));
        out
    }

    fn incoming(chat: ChatId, sender: UserId, seq: i64) -> Update {
        Update::Line(Box::new(Line {
            chat,
            seq: Some(seq),
            message_id: Some(id()),
            local_id: None,
            sender,
            at: OffsetDateTime::now_utc(),
            body: LineBody::Text("hi".into()),
            edited: false,
            deleted: false,
            mark: Mark::None,
            reply_to: None,
        }))
    }

    #[test]
    fn commands_are_parsed_and_wrong_ones_explained() {
        let now = Instant::now();
        let mut app = App::new(time::UtcOffset::UTC);
        let out = typed(&mut app, "/group Book club +14155550101 +14155550102", now);
        match out.as_slice() {
            [Command::NewGroup { name, phones }] => {
                assert_eq!(name, "Book club");
                assert_eq!(phones.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(typed(&mut app, "/new", now).is_empty());
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.1 && s.0.contains("usage"))
        );
        assert!(typed(&mut app, "hello", now).is_empty());
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.0.contains("open a chat"))
        );
        assert!(typed(&mut app, "/frobnicate", now).is_empty());
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.0.contains("unknown command"))
        );
        assert!(matches!(
            typed(&mut app, "/plain +14155550101", now).as_slice(),
            [Command::NewDirect { plain: true, .. }]
        ));
    }

    #[test]
    fn group_commands_refuse_a_direct_chat() {
        let now = Instant::now();
        let mut app = App::new(time::UtcOffset::UTC);
        let chat = id();
        app.apply(
            Update::Chats(vec![row(chat, ChatKind::Direct, Some(id()))]),
            now,
        );
        app.key(KeyEvent::from(KeyCode::Tab), now);
        assert!(typed(&mut app, "/leave", now).is_empty());
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.0.contains("groups only"))
        );
        assert!(matches!(
            typed(&mut app, "/safety", now).as_slice(),
            [Command::Safety(_)]
        ));
    }

    #[test]
    fn unread_typing_and_sent_lines_follow_the_updates() {
        let now = Instant::now();
        let me: UserId = id();
        let bob: UserId = id();
        let (a, b): (ChatId, ChatId) = (id(), id());
        let mut app = signed_in(
            me,
            vec![
                row(a, ChatKind::Direct, Some(bob)),
                row(b, ChatKind::Group, None),
            ],
        );
        let out = app.key(KeyEvent::from(KeyCode::Tab), now);
        assert!(matches!(out.as_slice(), [Command::Open(c)] if *c == a));
        // A message in the open chat is marked read; in the other, unread.
        let out = app.apply(incoming(a, bob, 1), now);
        assert!(matches!(out.as_slice(), [Command::Read { seq: 1, .. }]));
        assert!(app.apply(incoming(b, bob, 1), now).is_empty());
        assert_eq!(app.chats[1].unread, 1);
        // The same entry twice shows once.
        app.apply(incoming(a, bob, 1), now);
        assert_eq!(app.conversations[&a].lines.len(), 1);
        // Typing shows, then expires.
        app.apply(Update::Typing { chat: a, user: bob }, now);
        assert_eq!(app.typing_in(a, now).len(), 1);
        assert!(app.typing_in(a, now + TYPING_SHOWN).is_empty());
        // My line gets its seq; queued lines are marked.
        let out = typed(&mut app, "yo", now);
        let Some(Command::Send { local_id, .. }) = out.last() else {
            panic!("{out:?}")
        };
        let local_id = local_id.clone();
        app.apply(
            Update::Line(Box::new(Line {
                chat: a,
                seq: None,
                message_id: None,
                local_id: Some(local_id.clone()),
                sender: me,
                at: OffsetDateTime::now_utc(),
                body: LineBody::Text("yo".into()),
                edited: false,
                deleted: false,
                mark: Mark::Sending,
                reply_to: None,
            })),
            now,
        );
        app.apply(
            Update::Queued {
                local_id: local_id.clone(),
            },
            now,
        );
        assert_eq!(app.conversations[&a].lines[1].mark, Mark::Queued);
        let sent: MessageId = id();
        app.apply(
            Update::Sent {
                local_id,
                seq: 2,
                message_id: sent,
            },
            now,
        );
        assert_eq!(app.conversations[&a].lines[1].message_id, Some(sent));
        assert_eq!(app.conversations[&a].lines[1].seq, Some(2));
        assert_eq!(app.conversations[&a].lines[1].mark, Mark::None);
    }

    #[test]
    fn the_selection_answers_any_message_and_edits_only_mine() {
        let now = Instant::now();
        let (me, bob, chat): (UserId, UserId, ChatId) = (id(), id(), id());
        let mut app = signed_in(me, vec![row(chat, ChatKind::Direct, Some(bob))]);
        app.key(KeyEvent::from(KeyCode::Tab), now);
        let Update::Line(mut theirs) = incoming(chat, bob, 1) else {
            unreachable!()
        };
        theirs.body = LineBody::Text("one two three four five six seven".into());
        let their_id = theirs.message_id.unwrap();
        app.apply(Update::Line(theirs), now);
        let mut mine = incoming(chat, me, 2);
        if let Update::Line(l) = &mut mine {
            l.body = LineBody::Text("mine".into());
        }
        app.apply(mine, now);
        let alt_up = KeyEvent::new(KeyCode::Up, KeyModifiers::ALT);
        assert!(app.key(alt_up, now).is_empty());
        assert_eq!(app.selecting, Some(1));
        app.key(KeyEvent::from(KeyCode::Up), now);
        assert_eq!(app.selecting, Some(0));
        // Not mine: no edit, no delete.
        assert!(app.key(KeyEvent::from(KeyCode::Char('e')), now).is_empty());
        assert!(app.status.as_ref().is_some_and(|s| s.1));
        assert!(app.key(KeyEvent::from(KeyCode::Char('d')), now).is_empty());
        assert!(app.compose.is_none());
        // A reply: quoted by its first words, sent with what it answers.
        app.key(KeyEvent::from(KeyCode::Char('r')), now);
        assert_eq!(app.selecting, None);
        assert_eq!(app.quote(their_id), "someone: one two three four five six…");
        match typed(&mut app, "yes", now).as_slice() {
            [Command::Typing(_), Command::Send { reply_to, .. }] => {
                assert_eq!(*reply_to, Some(their_id))
            }
            other => panic!("{other:?}"),
        }
        // Mine: edit fills the input with its text; Enter sends the edit.
        app.key(alt_up, now);
        app.key(KeyEvent::from(KeyCode::Char('e')), now);
        assert_eq!(app.input, "mine");
        match typed(&mut app, "!", now).as_slice() {
            [.., Command::Edit { text, .. }] => assert_eq!(text, "mine!"),
            other => panic!("{other:?}"),
        }
        // A narrow terminal: Up on an empty input selects too (the list is
        // not on the screen); Esc leaves, and the next Esc shows the list.
        app.width = NARROW - 1;
        app.key(KeyEvent::from(KeyCode::Up), now);
        assert_eq!(app.selecting, Some(1));
        app.key(KeyEvent::from(KeyCode::Esc), now);
        assert_eq!(app.selecting, None);
        app.key(KeyEvent::from(KeyCode::Esc), now);
        assert!(app.show_list);
        app.key(KeyEvent::from(KeyCode::Up), now);
        assert_eq!(app.selecting, None);
    }

    #[test]
    fn the_input_edits_by_character_and_has_a_limit() {
        let now = Instant::now();
        let mut app = App::new(time::UtcOffset::UTC);
        for c in "你好👋".chars() {
            app.key(KeyEvent::from(KeyCode::Char(c)), now);
        }
        app.key(KeyEvent::from(KeyCode::Left), now);
        app.key(KeyEvent::from(KeyCode::Backspace), now);
        assert_eq!(app.input, "你👋");
        app.input.clear();
        app.cursor = 0;
        app.paste(&"x".repeat(MAX_INPUT + 1));
        assert_eq!(app.input.chars().count(), MAX_INPUT);
        app.paste("y");
        assert_eq!(app.input.chars().count(), MAX_INPUT);
    }

    #[test]
    fn scrolling_up_asks_for_older_history_once() {
        let now = Instant::now();
        let mut app = App::new(time::UtcOffset::UTC);
        let chat = id();
        let bob = id();
        app.apply(
            Update::Chats(vec![row(chat, ChatKind::Direct, Some(bob))]),
            now,
        );
        app.key(KeyEvent::from(KeyCode::Tab), now);
        app.apply(
            Update::History {
                chat,
                lines: Vec::new(),
                has_more: true,
                older: false,
            },
            now,
        );
        app.apply(incoming(chat, bob, 51), now);
        let out = app.key(KeyEvent::from(KeyCode::PageUp), now);
        assert!(matches!(
            out.as_slice(),
            [Command::Older { before_seq: 51, .. }]
        ));
        assert!(app.key(KeyEvent::from(KeyCode::PageUp), now).is_empty());
    }
}
