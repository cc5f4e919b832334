// Natter's service worker: Web Push only. A push says nothing but "New
// message" (the server's payload carries no content, and this worker shows
// none of it); a click opens the chat it came from.

// A chat id as the server writes it (anything else opens the chat list).
const CHAT_ID = /^[0-9A-Za-z-]{1,64}$/;

// The app's address of a chat (the app opens `#chat=<id>` when it starts).
function chatUrl(chat) {
  return chat && CHAT_ID.test(chat) ? `/#chat=${chat}` : "/";
}

// What a notification click does: an open window of the app is told which
// chat to open and focused; without one, a window opens at the chat.
async function openChat(chat) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const w of windows) {
    if (new URL(w.url).origin === self.location.origin) {
      if (chat && CHAT_ID.test(chat)) w.postMessage({ openChat: chat });
      // Focusing needs the click's user activation.
      try { await w.focus(); } catch { /* outside a click */ }
      return "focused";
    }
  }
  await self.clients.openWindow(chatUrl(chat));
  return "opened";
}

self.addEventListener("push", (event) => {
  let chat = null;
  try { chat = event.data ? event.data.json().chat_id : null; } catch { chat = null; }
  if (typeof chat !== "string" || !CHAT_ID.test(chat)) chat = null;
  event.waitUntil(self.registration.showNotification("New message", {
    tag: chat || "natter",
    data: { chat },
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const chat = event.notification.data && event.notification.data.chat;
  event.waitUntil(openChat(chat));
});
