//! The terminal: raw mode and the alternate screen (restored on exit and
//! on panic, by `ratatui::try_init`), and the loop between keys, the driver's
//! updates and a clock tick (typing indicators expire, the progress bar
//! moves).

use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt as _;
use natter_client::Messenger;
use tokio::sync::mpsc;

use crate::app::App;
use crate::driver::{self, COMMAND_QUEUE, Command, UPDATE_QUEUE};
use crate::error::ChatError;

/// How often the screen refreshes with nothing happening.
const TICK: Duration = Duration::from_millis(250);

/// Runs the interactive client until the user quits or the session ends.
///
/// # Errors
/// The terminal failed, or the session ended (the reason is returned).
pub async fn run(m: Messenger, base: String, offset: time::UtcOffset) -> Result<(), ChatError> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(ChatError::new(
            "the interactive client needs a terminal; scripts use `natter chat send` and \
             `natter chat tail`",
        ));
    }
    let mut terminal = ratatui::try_init()
        .map_err(|e| ChatError::new(format!("cannot use this terminal: {e}")))?;
    let (command_tx, command_rx) = mpsc::channel::<Command>(COMMAND_QUEUE);
    let (update_tx, mut update_rx) = mpsc::channel(UPDATE_QUEUE);
    let thumbs = crate::thumb::truecolor(std::env::var("COLORTERM").ok().as_deref());
    let driver = tokio::spawn(driver::run(m, base, thumbs, command_rx, update_tx));
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    let mut app = App::new(offset);
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    let outcome = loop {
        let now = Instant::now();
        if let Err(e) = terminal.draw(|f| {
            app.width = f.area().width;
            crate::ui::draw(f, &app, now);
        }) {
            break Err(ChatError::new(format!("the terminal failed: {e}")));
        }
        let commands = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(k))) => app.key(k, Instant::now()),
                Some(Ok(TermEvent::Paste(text))) => {
                    app.paste(&text);
                    Vec::new()
                }
                Some(Ok(TermEvent::Resize(w, _))) => {
                    app.width = w;
                    Vec::new()
                }
                Some(Ok(_)) => Vec::new(),
                Some(Err(e)) => break Err(ChatError::new(format!("the terminal failed: {e}"))),
                None => break Ok(()),
            },
            update = update_rx.recv() => match update {
                Some(u) => app.apply(u, Instant::now()),
                None => break Ok(()),
            },
            _ = tick.tick() => Vec::new(),
        };
        // Never wait for the driver here: it may be waiting for this loop
        // to take its updates. A full queue drops typing signals and says
        // so for anything else.
        for c in commands {
            match command_tx.try_send(c) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Command::Typing(_))) => {}
                Err(mpsc::error::TrySendError::Full(_)) => app.error(
                    "the client is still busy with earlier work: that was not done, try \
                     again in a moment",
                ),
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        if app.quit {
            break Ok(());
        }
    };
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    ratatui::restore();
    drop(command_tx);
    // The driver finishes the command it runs (a send is durable in the
    // outbox before it returns), then ends.
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    match (outcome, app.fatal) {
        (_, Some(fatal)) => Err(ChatError::new(fatal)),
        (outcome, None) => outcome,
    }
}
