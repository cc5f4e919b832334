//! Draws the [`App`] with ratatui. Widths are terminal cells (CJK and
//! most emoji take two), measured with `unicode-width`; lines are wrapped
//! here so scrolling counts real rows. Right-to-left text is handed to the
//! terminal as it is, in logical order (terminals that do bidi show it
//! right).

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, List, ListItem, ListState, Paragraph, Wrap};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::app::{App, Compose, Overlay};
use crate::driver::{Line, LineBody, Mark, human_size};

/// The list's width on a wide terminal.
const LIST_WIDTH: u16 = 30;

/// Draws everything.
pub fn draw(frame: &mut Frame<'_>, app: &App, now: Instant) {
    let area = frame.area();
    let [top, main] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    draw_status(frame, app, top);
    if app.narrow() {
        if app.show_list || app.open.is_none() {
            draw_list(frame, app, main, now);
        } else {
            draw_conversation(frame, app, main, now);
        }
    } else {
        let [list, conv] =
            Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(10)]).areas(main);
        draw_list(frame, app, list, now);
        draw_conversation(frame, app, conv, now);
    }
    if let Some(overlay) = &app.overlay {
        draw_overlay(frame, app, overlay, area);
    }
}

fn draw_status(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let (dot, dot_style) = if app.connected {
        ("● online", Style::default().fg(Color::Green))
    } else {
        ("○ offline", Style::default().fg(Color::Red))
    };
    let mut spans = vec![
        Span::styled(" Natter ", Style::default().add_modifier(Modifier::BOLD)),
        Span::styled(dot, dot_style),
        Span::raw("  "),
        Span::raw(app.me_label.clone()),
    ];
    match &app.status {
        Some((text, true)) => {
            spans.push(Span::raw("  "));
            spans.push(Span::styled(
                text.clone(),
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        }
        Some((text, false)) => {
            spans.push(Span::raw("  "));
            spans.push(Span::styled(
                text.clone(),
                Style::default().fg(Color::Yellow),
            ));
        }
        None => spans.push(Span::styled(
            "  F1 help",
            Style::default().fg(Color::DarkGray),
        )),
    }
    frame.render_widget(
        Paragraph::new(TextLine::from(spans))
            .style(Style::default().bg(Color::Black))
            .wrap(Wrap { trim: true }),
        area,
    );
}

fn draw_list(frame: &mut Frame<'_>, app: &App, area: Rect, now: Instant) {
    // Pending invitations, short enough for the list's width.
    let title = match app.invitations.len() {
        0 => " Chats ".to_owned(),
        n => format!(" Chats · ✉ {n}: /invites "),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner_width = area.width.saturating_sub(2) as usize;
    if app.chats.is_empty() {
        frame.render_widget(
            Paragraph::new("No chats yet.\n\nStart one:\n/new +PHONE\n\nF1: help")
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    }
    let items: Vec<ListItem<'_>> = app
        .chats
        .iter()
        .map(|c| {
            let lock = if c.encrypted { "🔒" } else { "  " };
            let unread = if c.unread > 0 {
                format!(" {}", c.unread)
            } else {
                String::new()
            };
            let title_width = inner_width.saturating_sub(3 + unread.width());
            let title = fit(&c.title, title_width);
            let pad = title_width.saturating_sub(title.width());
            let first = TextLine::from(vec![
                Span::raw(format!("{lock} ")),
                Span::styled(title, Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(" ".repeat(pad)),
                Span::styled(
                    unread,
                    Style::default()
                        .fg(Color::Black)
                        .bg(Color::Cyan)
                        .add_modifier(Modifier::BOLD),
                ),
            ]);
            let typing = app.typing_in(c.id, now);
            let second = if typing.is_empty() {
                Span::styled(
                    format!(
                        "   {}",
                        fit(&one_line(&c.last), inner_width.saturating_sub(3))
                    ),
                    Style::default().fg(Color::Gray),
                )
            } else {
                Span::styled(
                    format!("   {}", fit("typing…", inner_width.saturating_sub(3))),
                    Style::default().fg(Color::Green),
                )
            };
            ListItem::new(vec![first, TextLine::from(second)])
        })
        .collect();
    let mut state = ListState::default();
    if app.open.is_some() || app.narrow() {
        state.select(Some(app.selected));
    }
    frame.render_stateful_widget(
        List::new(items)
            .block(block)
            .highlight_style(Style::default().bg(Color::DarkGray)),
        area,
        &mut state,
    );
}

fn header(app: &App, now: Instant) -> (String, String) {
    let Some(row) = app.open_row() else {
        return (String::new(), String::new());
    };
    let lock = if row.encrypted {
        "🔒 end-to-end encrypted"
    } else {
        "not end-to-end encrypted"
    };
    let typing = app.typing_in(row.id, now);
    let state = if !typing.is_empty() {
        format!("{} typing…", typing.join(", "))
    } else if let Some(other) = row.other {
        match app.presence.get(&other) {
            Some(p) if p.online => "online".to_owned(),
            Some(p) => match p.last_seen {
                Some(t) => format!("last seen {}", when(t.to_offset(app.offset), app)),
                None => String::new(),
            },
            None => String::new(),
        }
    } else {
        format!("{} members", row.people.len())
    };
    (format!(" {} ", row.title), format!("{lock}  {state}"))
}

fn when(t: time::OffsetDateTime, app: &App) -> String {
    let today = time::OffsetDateTime::now_utc().to_offset(app.offset).date();
    if t.date() == today {
        format!("{:02}:{:02}", t.hour(), t.minute())
    } else {
        format!("{} {:02}:{:02}", day(t.date()), t.hour(), t.minute())
    }
}

fn day(d: time::Date) -> String {
    format!(
        "{} {} {} {}",
        &d.weekday().to_string()[..3],
        d.day(),
        &d.month().to_string()[..3],
        d.year()
    )
}

fn draw_conversation(frame: &mut Frame<'_>, app: &App, area: Rect, now: Instant) {
    let Some(chat) = app.open else {
        let [hint, input] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(3)]).areas(area);
        frame.render_widget(
            Paragraph::new(
                "Tab / Ctrl-N opens the next chat, /new +PHONE starts one, F1 lists every key.",
            )
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL)),
            hint,
        );
        draw_input(frame, app, input);
        return;
    };
    let progress_rows = u16::from(app.progress.is_some());
    let warn_rows = u16::from(!app.identity_changed.is_empty()) * 2;
    let [head, warn, body, progress, input] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(warn_rows),
        Constraint::Min(1),
        Constraint::Length(progress_rows),
        Constraint::Length(3),
    ])
    .areas(area);
    let (title, sub) = header(app, now);
    frame.render_widget(
        Paragraph::new(vec![
            TextLine::from(Span::styled(
                title,
                Style::default().add_modifier(Modifier::BOLD),
            )),
            TextLine::from(Span::styled(sub, Style::default().fg(Color::Gray))),
        ]),
        head,
    );
    if warn_rows > 0 {
        let names: Vec<String> = app.identity_changed.iter().map(|u| app.name(*u)).collect();
        frame.render_widget(
            Paragraph::new(format!(
                "⚠ The safety number with {} changed (a new identity key). Compare it again \
                 before trusting new messages: /safety",
                names.join(", ")
            ))
            .style(Style::default().fg(Color::Black).bg(Color::Yellow))
            .wrap(Wrap { trim: true }),
            warn,
        );
    }
    let conv = app.conversations.get(&chat);
    let width = body.width.saturating_sub(1) as usize;
    let mut rows: Vec<TextLine<'static>> = Vec::new();
    let mut selected_rows = None;
    if let Some(conv) = conv {
        if conv.has_more {
            rows.push(TextLine::from(Span::styled(
                if conv.loading {
                    "loading older messages…"
                } else {
                    "PageUp: older messages"
                },
                Style::default().fg(Color::DarkGray),
            )));
        } else if conv.loading {
            rows.push(TextLine::from("loading…"));
        }
        let mut last_day = None;
        let mut file_no = 0;
        for (i, l) in conv.lines.iter().enumerate() {
            let at = l.at.to_offset(app.offset);
            if last_day != Some(at.date()) {
                last_day = Some(at.date());
                rows.push(separator(&day(at.date()), width));
            }
            if l.body.is_file() {
                file_no += 1;
            }
            let start = rows.len();
            let mut mine = message_rows(app, l, conv, width, file_no);
            if app.selecting == Some(i) {
                for r in &mut mine {
                    *r = r.clone().patch_style(Style::default().bg(Color::DarkGray));
                }
                selected_rows = Some((start, start + mine.len()));
            }
            rows.extend(mine);
            if let Some(thumb) = l.message_id.and_then(|m| app.thumbs.get(&m))
                && !l.deleted
            {
                rows.extend(thumb_rows(thumb, width.saturating_sub(6)));
            }
        }
    }
    let height = body.height as usize;
    let mut scroll = conv.map_or(0, |c| c.scroll);
    // The selected message stays in view.
    if let Some((first, end)) = selected_rows {
        let bottom = rows.len().saturating_sub(scroll);
        if end > bottom {
            scroll = rows.len() - end;
        } else if first < bottom.saturating_sub(height) {
            scroll = rows.len().saturating_sub(first + height);
        }
    }
    let scroll = scroll.min(rows.len().saturating_sub(height));
    let end = rows.len().saturating_sub(scroll);
    let start = end.saturating_sub(height);
    let visible: Vec<TextLine<'static>> = rows[start..end].to_vec();
    frame.render_widget(Paragraph::new(visible), body);
    if let Some((label, since)) = &app.progress {
        // A transfer's bytes once it has moved; until then (and for steps
        // of no known length) a bar that moves while it works.
        let tick = now.duration_since(*since).as_millis() / 100;
        let ratio = app
            .progress_ratio
            .unwrap_or(((tick % 20) as f64) / 20.0)
            .clamp(0.0, 1.0);
        frame.render_widget(
            Gauge::default()
                .ratio(ratio)
                .label(label.clone())
                .gauge_style(Style::default().fg(Color::Cyan)),
            progress,
        );
    }
    draw_input(frame, app, input);
}

fn separator(label: &str, width: usize) -> TextLine<'static> {
    let label = format!(" {label} ");
    let side = width.saturating_sub(label.width()) / 2;
    TextLine::from(Span::styled(
        format!("{}{label}{}", "─".repeat(side), "─".repeat(side)),
        Style::default().fg(Color::DarkGray),
    ))
}

fn message_rows(
    app: &App,
    l: &Line,
    conv: &crate::app::Conversation,
    width: usize,
    file_no: usize,
) -> Vec<TextLine<'static>> {
    let at = l.at.to_offset(app.offset);
    let time = format!("{:02}:{:02} ", at.hour(), at.minute());
    if let LineBody::System(text) = &l.body {
        return wrap(&format!("· {text}"), width.saturating_sub(6))
            .into_iter()
            .map(|r| {
                TextLine::from(Span::styled(
                    format!("      {r}"),
                    Style::default().fg(Color::DarkGray),
                ))
            })
            .collect();
    }
    let mine = Some(l.sender) == app.me;
    let who = app.name(l.sender);
    let text = match &l.body {
        _ if l.deleted => "(deleted)".to_owned(),
        LineBody::Text(t) => t.clone(),
        LineBody::PlainFile { name, .. } => {
            format!("📎 {name} [file {file_no}: /save {file_no}]")
        }
        LineBody::File { name, size, .. } => {
            format!(
                "📎 {name} ({}) [file {file_no}: /save {file_no}]",
                human_size(*size)
            )
        }
        LineBody::System(_) => String::new(),
    };
    let mut text = text;
    if l.edited && !l.deleted {
        text.push_str(" (edited)");
    }
    let mark = if mine {
        match (l.mark, l.seq) {
            (Mark::Queued, _) => " [queued]".to_owned(),
            (Mark::Sending, _) | (_, None) => " …".to_owned(),
            (_, Some(s)) if s <= conv.read => " ✓✓ read".to_owned(),
            (_, Some(s)) if s <= conv.delivered => " ✓✓".to_owned(),
            _ => " ✓".to_owned(),
        }
    } else {
        String::new()
    };
    let prefix = format!("{time}{who}: ");
    let indent = 6;
    let first_width = width.saturating_sub(prefix.width()).max(8);
    let mut out = Vec::new();
    if let Some(to) = l.reply_to {
        out.push(TextLine::from(Span::styled(
            format!("      ↱ {}", fit(&app.quote(to), width.saturating_sub(8))),
            Style::default().fg(Color::Gray),
        )));
    }
    let body = format!("{text}{mark}");
    let mut pieces = wrap(&body, first_width);
    if pieces.is_empty() {
        pieces.push(String::new());
    }
    let rest = pieces.split_off(1);
    let name_style = if mine {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
            .fg(Color::Magenta)
            .add_modifier(Modifier::BOLD)
    };
    out.push(TextLine::from(vec![
        Span::styled(time, Style::default().fg(Color::DarkGray)),
        Span::styled(format!("{who}: "), name_style),
        Span::raw(pieces.remove(0)),
    ]));
    if !rest.is_empty() {
        let joined = rest.join(" ");
        for r in wrap(&joined, width.saturating_sub(indent).max(8)) {
            out.push(TextLine::from(format!("{}{r}", " ".repeat(indent))));
        }
    }
    out
}

/// A thumbnail as rows of `▀`: the upper pixel's colour in front, the
/// lower one's behind, cut to `width` cells.
fn thumb_rows(thumb: &crate::thumb::Thumb, width: usize) -> Vec<TextLine<'static>> {
    thumb
        .cells
        .iter()
        .map(|row| {
            let mut spans = vec![Span::raw("      ")];
            spans.extend(row.iter().take(width).map(|(top, bottom)| {
                Span::styled(
                    "▀",
                    Style::default()
                        .fg(Color::Rgb(top[0], top[1], top[2]))
                        .bg(Color::Rgb(bottom[0], bottom[1], bottom[2])),
                )
            }));
            TextLine::from(spans)
        })
        .collect()
}

fn draw_input(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let inner = area.width.saturating_sub(2) as usize;
    let before: String = app.input.chars().take(app.cursor).collect();
    // Keep the cursor in view: drop whole characters from the left.
    let mut shown = app.input.clone();
    let mut cursor_col = before.width();
    while cursor_col >= inner && !shown.is_empty() {
        let c = shown.remove(0);
        cursor_col -= c.width().unwrap_or(0);
    }
    frame.render_widget(
        Paragraph::new(shown).block(Block::default().borders(Borders::ALL).title(
            match app.compose {
                Some(Compose::Reply(to)) => format!(
                    " Reply to {} (Esc cancels) ",
                    fit(&app.quote(to), inner.saturating_sub(22))
                ),
                Some(Compose::Edit(_)) => {
                    " Edit your message (Enter saves, Esc cancels) ".to_owned()
                }
                None => " Message (Enter sends, /help) ".to_owned(),
            },
        )),
        area,
    );
    if app.overlay.is_none() {
        frame.set_cursor_position((area.x + 1 + cursor_col as u16, area.y + 1));
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The help screen's lines.
pub const HELP: &[(&str, &str)] = &[
    ("Tab / Ctrl-N, Shift-Tab / Ctrl-P", "next / previous chat"),
    ("Up / Down", "previous / next chat"),
    (
        "Alt-Up (narrow: Up)",
        "select a message: Up/Down move, Esc leaves",
    ),
    (
        "  r, e, d, s",
        "reply; edit / delete (yours); save (a file)",
    ),
    ("Enter", "send the message (or run a /command)"),
    (
        "PageUp / PageDown",
        "scroll; older history loads at the top",
    ),
    (
        "Ctrl-F",
        "search (local in encrypted chats, server in others)",
    ),
    ("Esc", "clear the input; close a screen; the list (narrow)"),
    ("F1, ?", "this help"),
    ("Ctrl-C, Ctrl-Q, /quit", "quit"),
    ("/new +PHONE", "encrypted direct chat with a number"),
    ("/plain +PHONE", "direct chat without end-to-end encryption"),
    ("/group NAME +PHONE…", "new encrypted group"),
    ("/add +PHONE, /remove +PHONE", "change a group's members"),
    ("/leave, /rename NAME", "leave or rename a group"),
    ("/file PATH", "send a file (encrypted in encrypted chats)"),
    ("/save [N] [PATH]", "save file N (default: the latest)"),
    ("/edit TEXT, /delete", "change or delete your last message"),
    (
        "/contacts, /contact +PHONE",
        "your contacts (Enter chats, x removes); add one",
    ),
    ("/discover +PHONE…", "which numbers are on Natter"),
    ("/invites", "invitations to groups: a accepts, d declines"),
    (
        "/groups everyone|contacts|nobody",
        "who may add you to groups (others invite)",
    ),
    ("/safety", "safety number: compare, then v verifies"),
    ("/search WORDS", "search every chat"),
    ("/devices", "your devices; a approves a new one"),
];

fn draw_overlay(frame: &mut Frame<'_>, app: &App, overlay: &Overlay, area: Rect) {
    let (title, lines): (String, Vec<TextLine<'static>>) = match overlay {
        Overlay::Help => {
            let key_width = HELP.iter().map(|(k, _)| k.width()).max().unwrap_or(0);
            let mut lines: Vec<TextLine<'static>> = HELP
                .iter()
                .map(|(k, v)| {
                    TextLine::from(vec![
                        Span::styled(
                            format!("{k:key_width$}  "),
                            Style::default().add_modifier(Modifier::BOLD),
                        ),
                        Span::raw((*v).to_owned()),
                    ])
                })
                .collect();
            lines.push(TextLine::from(""));
            lines.push(TextLine::from("Marks: … sending, ✓ sent, ✓✓ delivered, ✓✓ read; [queued]: offline, sent on reconnect."));
            lines.push(TextLine::from(
                "Up/Down, PageUp/PageDown scroll (a short terminal); any other key closes this screen.",
            ));
            (" Help ".to_owned(), lines)
        }
        Overlay::Safety {
            user,
            digits,
            verified,
        } => {
            let name = app.name(*user);
            let mut lines = vec![
                TextLine::from(format!("Your safety number with {name}:")),
                TextLine::from(""),
            ];
            match digits {
                Some(d) => {
                    let groups: Vec<&str> = d.split_whitespace().collect();
                    for row in groups.chunks(4) {
                        lines.push(TextLine::from(Span::styled(
                            format!("    {}", row.join("  ")),
                            Style::default().add_modifier(Modifier::BOLD),
                        )));
                    }
                }
                None => lines.push(TextLine::from("    (asking the server for their keys…)")),
            }
            lines.push(TextLine::from(""));
            lines.push(if *verified {
                TextLine::from(Span::styled(
                    format!("✓ {name} is verified"),
                    Style::default().fg(Color::Green),
                ))
            } else {
                TextLine::from(Span::styled(
                    format!("{name} is not verified"),
                    Style::default().fg(Color::Yellow),
                ))
            });
            lines.push(TextLine::from(""));
            lines.push(TextLine::from(format!(
                "Compare these numbers with {name}'s screen, in person or on a call."
            )));
            lines.push(TextLine::from(
                "Same numbers: press v (verified). u removes the mark. Esc closes.",
            ));
            (" Safety number ".to_owned(), lines)
        }
        Overlay::Search {
            query,
            hits,
            selected,
        } => {
            let mut lines = vec![
                TextLine::from(format!("Search: {query}")),
                TextLine::from(""),
            ];
            match hits {
                None => lines.push(TextLine::from("searching…")),
                Some(h) if h.is_empty() => lines.push(TextLine::from("nothing found")),
                Some(h) => {
                    for (i, hit) in h.iter().enumerate() {
                        let chat = app
                            .chats
                            .iter()
                            .find(|c| c.id == hit.chat)
                            .map_or_else(|| "?".to_owned(), |c| c.title.clone());
                        let style = if i == *selected {
                            Style::default().bg(Color::DarkGray)
                        } else {
                            Style::default()
                        };
                        let place = if hit.local { "local" } else { "server" };
                        lines.push(TextLine::from(Span::styled(
                            format!(
                                "{chat} · {}: {} ({place})",
                                app.name(hit.sender),
                                one_line(&hit.text)
                            ),
                            style,
                        )));
                    }
                }
            }
            lines.push(TextLine::from(""));
            lines.push(TextLine::from(
                "Up/Down choose, Enter opens the chat, Esc closes.",
            ));
            (" Search ".to_owned(), lines)
        }
        Overlay::Devices { rows, selected } => {
            let mut lines = Vec::new();
            match rows {
                None => lines.push(TextLine::from("loading…")),
                Some(rows) => {
                    for (i, d) in rows.iter().enumerate() {
                        let style = if i == *selected {
                            Style::default().bg(Color::DarkGray)
                        } else {
                            Style::default()
                        };
                        let state = match (d.current, d.approved) {
                            (true, _) => "this device",
                            (false, true) => "approved",
                            (false, false) => "waiting for approval",
                        };
                        lines.push(TextLine::from(Span::styled(
                            format!(
                                "{}  [{state}]  key {}",
                                d.name,
                                d.fingerprint.as_deref().unwrap_or("(none yet)")
                            ),
                            style,
                        )));
                    }
                }
            }
            lines.push(TextLine::from(""));
            lines.push(TextLine::from(
                "a: approve the selected device (check that it shows the same key first);",
            ));
            lines.push(TextLine::from(
                "c: a one-time login code for a new device; Esc closes.",
            ));
            (" Devices ".to_owned(), lines)
        }
        Overlay::Invitations { selected } => {
            let mut lines = Vec::new();
            if app.invitations.is_empty() {
                lines.push(TextLine::from("no pending invitations"));
            }
            for (i, inv) in app.invitations.iter().enumerate() {
                lines.push(TextLine::from(Span::styled(
                    format!("✉ {} — invited by {}", inv.group, inv.inviter),
                    highlight(i == *selected),
                )));
            }
            lines.push(TextLine::from(""));
            lines.push(TextLine::from(
                "a / Enter: accept (join the group), d: decline, Esc closes.",
            ));
            (" Invitations ".to_owned(), lines)
        }
        Overlay::Contacts { rows, selected } => {
            let mut lines = Vec::new();
            match rows {
                None => lines.push(TextLine::from("loading…")),
                Some(r) if r.is_empty() => {
                    lines.push(TextLine::from("no contacts yet: /contact +PHONE adds one"));
                }
                Some(rows) => {
                    for (i, c) in rows.iter().enumerate() {
                        let presence = if c.online {
                            "● online".to_owned()
                        } else {
                            match c.last_seen {
                                Some(t) => {
                                    format!("last seen {}", when(t.to_offset(app.offset), app))
                                }
                                None => "○".to_owned(),
                            }
                        };
                        lines.push(TextLine::from(Span::styled(
                            format!(
                                "{}  {}  {presence}",
                                c.name,
                                c.phone.as_deref().unwrap_or("(number hidden)")
                            ),
                            highlight(i == *selected),
                        )));
                    }
                }
            }
            lines.push(TextLine::from(""));
            lines.push(TextLine::from(
                "Enter: encrypted chat, x: remove; /contact +PHONE adds, /discover +PHONE… finds; Esc closes.",
            ));
            (" Contacts ".to_owned(), lines)
        }
        Overlay::Info { title, lines } => {
            let mut out: Vec<TextLine<'static>> =
                lines.iter().map(|l| TextLine::from(l.clone())).collect();
            out.push(TextLine::from(""));
            out.push(TextLine::from("Any key closes this screen."));
            (title.clone(), out)
        }
    };
    let width = area.width.saturating_sub(4).min(90);
    // Rows as wrapped inside the borders.
    let inner = usize::from(width.saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let height = u16::try_from(rows).unwrap_or(u16::MAX).saturating_add(2);
    let rect = centered(area, width, height);
    // Only the help is long enough to scroll.
    let scroll = match overlay {
        Overlay::Help => app.help_scroll.min(height.saturating_sub(rect.height)),
        _ => 0,
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines)
            .scroll((scroll, 0))
            .wrap(Wrap { trim: false })
            .alignment(Alignment::Left)
            .block(Block::default().borders(Borders::ALL).title(title)),
        rect,
    );
}

/// The style of a row of a list screen.
fn highlight(selected: bool) -> Style {
    if selected {
        Style::default().bg(Color::DarkGray)
    } else {
        Style::default()
    }
}

/// Text on one line (newlines as spaces).
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `text` cut to `width` cells, with … when cut.
#[must_use]
pub fn fit(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// Wraps `text` into rows of at most `width` cells, at spaces where it
/// can, inside words where it must (a wide character is never split).
#[must_use]
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut rows = Vec::new();
    for para in text.split('\n') {
        let mut row = String::new();
        let mut used = 0;
        for word in para.split(' ') {
            let w = word.width();
            let space = usize::from(!row.is_empty());
            if used + space + w <= width {
                if space == 1 {
                    row.push(' ');
                }
                row.push_str(word);
                used += space + w;
                continue;
            }
            if !row.is_empty() {
                rows.push(std::mem::take(&mut row));
                used = 0;
            }
            if w <= width {
                row.push_str(word);
                used = w;
                continue;
            }
            for c in word.chars() {
                let cw = c.width().unwrap_or(0);
                if used + cw > width {
                    rows.push(std::mem::take(&mut row));
                    used = 0;
                }
                row.push(c);
                used += cw;
            }
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::driver::{ChatRow, Line, LineBody, Mark, Update};
    use natter_proto::chats::ChatKind;
    use natter_proto::{ChatId, MessageId, UserId};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn id<T: std::str::FromStr>() -> T {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .unwrap_or_else(|_| unreachable!())
    }

    /// Alice's client with one encrypted direct chat with Bob, open.
    fn alice_with_bob(width: u16) -> (App, ChatId, UserId, UserId) {
        let now = Instant::now();
        let mut app = App::new(time::UtcOffset::UTC);
        app.width = width;
        let (me, bob, chat): (UserId, UserId, ChatId) = (id(), id(), id());
        app.apply(
            Update::Me {
                user: me,
                name: "Alice".into(),
                phone: "+14155550101".into(),
            },
            now,
        );
        app.apply(Update::Connection(true), now);
        app.apply(
            Update::Chats(vec![ChatRow {
                id: chat,
                kind: ChatKind::Direct,
                title: "Bob".into(),
                encrypted: true,
                unread: 0,
                last: String::new(),
                other: Some(bob),
                people: vec![(me, "Alice".into()), (bob, "Bob".into())],
            }]),
            now,
        );
        (app, chat, me, bob)
    }

    fn line(chat: ChatId, sender: UserId, seq: i64, text: &str) -> Line {
        Line {
            chat,
            seq: Some(seq),
            message_id: Some(id::<MessageId>()),
            local_id: None,
            sender,
            at: time::macros::datetime!(2026-12-01 10:30 UTC),
            body: LineBody::Text(text.into()),
            edited: false,
            deleted: false,
            mark: Mark::None,
            reply_to: None,
        }
    }

    fn render(app: &App, w: u16, h: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| draw(f, app, Instant::now())).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            let mut x = 0;
            while x < w {
                // A wide character's second cell is blank: skip it.
                let symbol = buffer[(x, y)].symbol();
                out.push_str(symbol);
                x += u16::try_from(symbol.width().max(1)).unwrap_or(1);
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn wrapping_counts_cells_and_never_splits_a_wide_character() {
        assert_eq!(wrap("你好世界", 4), vec!["你好", "世界"]);
        assert_eq!(wrap("你好世界", 5), vec!["你好", "世界"]);
        assert_eq!(wrap("hello world", 5), vec!["hello", "world"]);
        assert_eq!(wrap("a verylongword", 4), vec!["a", "very", "long", "word"]);
        for text in [
            "👋👋👋 hi",
            "مرحبا بالعالم",
            "mixed 中文 and emoji 🎉🎉",
            "x",
        ] {
            for width in 2..12 {
                for row in wrap(text, width) {
                    assert!(row.width() <= width, "{row:?} wider than {width}");
                }
            }
        }
        assert_eq!(fit("你好世界", 5), "你好…");
        assert_eq!(fit("short", 10), "short");
    }

    #[test]
    fn a_conversation_shows_day_separators_marks_and_unicode() {
        let (mut app, chat, me, bob) = alice_with_bob(100);
        let now = Instant::now();
        app.key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Tab),
            now,
        );
        app.apply(
            Update::History {
                chat,
                lines: vec![
                    line(chat, bob, 1, "你好 Alice 👋"),
                    line(chat, me, 2, "مرحبا Bob"),
                ],
                has_more: true,
                older: false,
            },
            now,
        );
        app.apply(
            Update::Receipt {
                chat,
                delivered: 2,
                read: 2,
            },
            now,
        );
        let screen = render(&app, 100, 20);
        assert!(screen.contains("Tue 1 Dec 2026"), "{screen}");
        assert!(screen.contains("10:30 Bob: 你好 Alice 👋"), "{screen}");
        assert!(screen.contains("you: مرحبا Bob ✓✓ read"), "{screen}");
        assert!(screen.contains("PageUp: older messages"), "{screen}");
        assert!(screen.contains("end-to-end encrypted"), "{screen}");
        app.apply(Update::Typing { chat, user: bob }, now);
        assert!(render(&app, 100, 20).contains("Bob typing…"));
    }

    #[test]
    fn a_narrow_terminal_shows_the_list_or_the_conversation() {
        let (mut app, chat, _, bob) = alice_with_bob(40);
        let now = Instant::now();
        let screen = render(&app, 40, 12);
        assert!(screen.contains("Bob"), "{screen}");
        app.key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter),
            now,
        );
        app.apply(
            Update::History {
                chat,
                lines: vec![line(
                    chat,
                    bob,
                    1,
                    "a long message that must wrap on a narrow screen 中文中文中文",
                )],
                has_more: false,
                older: false,
            },
            now,
        );
        let screen = render(&app, 40, 12);
        assert!(!screen.contains("Chats"), "{screen}");
        assert!(screen.contains("Bob: a long"), "{screen}");
        app.key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Esc),
            now,
        );
        assert!(render(&app, 40, 12).contains("Chats"));
        // Tiny terminals draw without a panic.
        for (w, h) in [(1, 1), (10, 3), (20, 5), (69, 8), (70, 8)] {
            app.width = w;
            render(&app, w, h);
        }
    }

    #[test]
    fn help_and_the_identity_warning_are_shown() {
        let (mut app, _, _, bob) = alice_with_bob(100);
        let now = Instant::now();
        app.key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Tab),
            now,
        );
        app.apply(Update::IdentityChanged(bob), now);
        let screen = render(&app, 100, 24);
        assert!(
            screen.contains("safety number with Bob changed"),
            "{screen}"
        );
        app.key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::F(1)),
            now,
        );
        let screen = render(&app, 100, 40);
        assert!(screen.contains("Ctrl-F"), "{screen}");
        assert!(screen.contains("/safety"), "{screen}");
        assert!(screen.contains("Alt-Up"), "{screen}");
        assert!(screen.contains("/invites"), "{screen}");
        // A short terminal scrolls the help to its end.
        let screen = render(&app, 100, 20);
        assert!(!screen.contains("/groups everyone"), "{screen}");
        for _ in 0..3 {
            app.key(
                crossterm::event::KeyEvent::from(crossterm::event::KeyCode::PageDown),
                now,
            );
        }
        assert!(app.overlay.is_some());
        let screen = render(&app, 100, 20);
        assert!(screen.contains("/groups everyone"), "{screen}");
    }
}
