// Natter's service worker: Web Push only. A push says nothing but "New
// message" (the server's payload carries no content, and this worker shows
// none of it); a click opens the chat it came from.
self.addEventListener("push", (event) => {
  let chat = null;
  try { chat = event.data ? event.data.json().chat_id : null; } catch { chat = null; }
  event.waitUntil(self.registration.showNotification("New message", {
    tag: chat || "natter",
    data: { chat },
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const chat = event.notification.data && event.notification.data.chat;
  const url = chat ? `/#chat=${chat}` : "/";
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const w of windows) {
      if (new URL(w.url).origin === self.location.origin) {
        await w.focus();
        if (chat) w.postMessage({ openChat: chat });
        return;
      }
    }
    await self.clients.openWindow(url);
  })());
});
