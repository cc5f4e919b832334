// Natter in the browser: the UI over the SDK's Messenger (natter-web,
// WebAssembly). Everything that touches keys, messages or storage happens in
// the wasm; this file draws screens and keeps what the user typed.
import init, { Natter } from "/pkg/natter_web.js";

// The largest file the browser client sends: it is read into memory,
// encrypted and uploaded in one piece.
export const MAX_FILE_BYTES = 64 * 1024 * 1024;
// How often a typing notice is sent while typing, and how long one shows.
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWS_MS = 5000;

const $ = (id) => document.getElementById(id);
const state = {
  client: null,
  chats: [],
  current: null, // chat id
  names: new Map(), // user id -> name
  receipts: new Map(), // chat id -> {delivered, read}
  drafts: new Map(), // chat id -> text not yet sent
  pending: new Map(), // client message id -> {chat, li}
  sentIds: new Set(), // acknowledged before their send call returned
  changes: new Set(), // edits and deletions not yet acknowledged
  typingSentAt: 0,
  typingTimer: null,
  presence: new Map(), // user id -> {status, lastSeen}, live from the server
  editing: null, // {chatId, seq} while the composer edits a message
  replying: null, // {chatId, messageId, quote} while the composer answers one
  objectUrls: [],
};

function notice(text, kind = "error") {
  const n = $("notice");
  n.textContent = text;
  n.className = kind === "info" ? "info" : "";
  n.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { n.hidden = true; }, kind === "info" ? 4000 : 8000);
}

// A sentence for an error from the client.
function explain(e) {
  const code = e && e.code;
  if (code === "offline") return "The server cannot be reached. Nothing was lost: try again when it is back.";
  if (code === "invalid_verification_code") return "That code is wrong or expired. Check it, or ask for a new one.";
  if (code === "payload_too_large") return "That file is too large for this server.";
  if (code === "storage_quota_exceeded") return "Your storage on this server is full.";
  return (e && e.message) || String(e);
}

// Runs an action with its button disabled; errors become a notice.
async function busy(button, work) {
  if (button) button.disabled = true;
  try { return await work(); }
  catch (e) { notice(explain(e)); return undefined; }
  finally { if (button) button.disabled = false; }
}

// === Sign-in ===

function showSignIn() {
  $("signin").hidden = false;
  $("app").hidden = true;
}

$("code-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy($("send-code"), async () => {
    await Natter.requestCode(location.origin, $("phone").value.trim());
    $("verify-form").hidden = false;
    $("code").focus();
    notice("Code sent.", "info");
  });
});

async function signIn(button, how) {
  const phone = $("phone").value.trim();
  const code = $("code").value.trim();
  if (!/^\d{6}$/.test(code)) { notice("The code has 6 digits."); return; }
  await busy(button, async () => {
    let client;
    if (how === "up") {
      const name = $("name").value.trim();
      if (!name) { notice("Enter your name to create an account."); return; }
      client = await Natter.signUp(location.origin, phone, code, name);
    } else {
      client = await Natter.logIn(location.origin, phone, code);
    }
    await enter(client);
  });
}
$("sign-up").addEventListener("click", () => signIn($("sign-up"), "up"));
$("log-in").addEventListener("click", () => signIn($("log-in"), "in"));

// === The app ===

async function enter(client) {
  state.client = client;
  client.onEvent(onEvent);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("my-device-key").textContent = client.deviceKey;
  try {
    const me = await client.user(client.userId);
    state.names.set(client.userId, me.name);
    $("me-name").textContent = me.name;
  } catch (e) { notice(explain(e)); }
  await refreshApproval();
  await refreshChats();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("chat");
  if (wanted) openChat(wanted);
  navigator.serviceWorker?.addEventListener("message", (ev) => {
    if (ev.data && ev.data.openChat) openChat(ev.data.openChat);
  });
}

async function refreshApproval() {
  try {
    const holds = await state.client.holdsIdentity();
    $("pending-approval").hidden = holds;
  } catch (e) { /* shown elsewhere */ }
}

async function nameOf(userId) {
  if (state.names.has(userId)) return state.names.get(userId);
  try {
    const p = await state.client.user(userId);
    state.names.set(userId, p.name);
    return p.name;
  } catch { return "someone"; }
}

function chatTitle(chat) {
  if (chat.name) return chat.name;
  if (chat.other_user) return chat.other_user.name;
  return "Chat";
}

async function refreshChats() {
  try {
    const list = await state.client.chats();
    state.chats = list.chats;
  } catch (e) { notice(explain(e)); return; }
  for (const c of state.chats) {
    for (const p of c.participants || []) state.names.set(p.user_id, p.name);
    if (c.other_user) state.names.set(c.other_user.user_id, c.other_user.name);
  }
  const ul = $("chat-list");
  ul.replaceChildren();
  for (const c of state.chats) {
    const li = document.createElement("li");
    li.dataset.chat = c.id;
    li.textContent = chatTitle(c);
    if (c.unread_count > 0 && c.id !== state.current) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = c.unread_count;
      li.append(badge);
    }
    if (c.id === state.current) li.classList.add("active");
    li.addEventListener("click", () => openChat(c.id));
    ul.append(li);
  }
}

function keepDraft() {
  if (state.current && !state.editing) state.drafts.set(state.current, $("draft").value);
}

async function openChat(chatId) {
  keepDraft();
  if (state.editing && state.editing.chatId !== chatId) stopEditing();
  if (state.replying && state.replying.chatId !== chatId) stopReplying();
  state.current = chatId;
  location.hash = `chat=${chatId}`;
  const chat = state.chats.find((c) => c.id === chatId);
  $("chat-header").hidden = false;
  $("composer").hidden = false;
  $("safety").hidden = true;
  $("chat-title").textContent = chat ? chatTitle(chat) : "Chat";
  const group = chat && chat.type === "group";
  $("add-member").hidden = !group;
  $("add-member-phone").hidden = !group;
  $("show-safety").hidden = !!group;
  $("draft").value = state.drafts.get(chatId) || "";
  for (const li of $("chat-list").children) li.classList.toggle("active", li.dataset.chat === chatId);
  await renderHistory();
  await fetchPresence(chat);
  $("draft").focus();
}

function clearObjectUrls() {
  for (const u of state.objectUrls) URL.revokeObjectURL(u);
  state.objectUrls = [];
}

async function renderHistory() {
  const chatId = state.current;
  let entries;
  try { entries = state.client.history(chatId); } catch (e) { notice(explain(e)); return; }
  clearObjectUrls();
  const ol = $("messages");
  ol.replaceChildren();
  for (const e of entries) ol.append(await messageItem(e));
  ol.scrollTop = ol.scrollHeight;
  const last = entries[entries.length - 1];
  if (last) state.client.read(chatId, last.seq).catch(() => {});
}

function statusOf(chatId, seq) {
  const r = state.receipts.get(chatId);
  if (r && seq <= r.read) return "read";
  if (r && seq <= r.delivered) return "delivered";
  return "sent";
}

async function messageItem(e) {
  const li = document.createElement("li");
  li.dataset.seq = e.seq;
  const mine = e.senderId === state.client.userId;
  if (mine) li.classList.add("mine");
  const meta = document.createElement("span");
  meta.className = "meta";
  const who = mine ? "You" : await nameOf(e.senderId);
  const when = e.sentAt ? new Date(e.sentAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  meta.textContent = `${who} · ${when}`;
  if (e.edited && !e.deleted) {
    const edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = " · edited";
    meta.append(edited);
  }
  if (mine && !e.deleted) {
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = ` · ${statusOf(e.chatId, e.seq)}`;
    meta.append(status);
  }
  li.append(meta);
  if (e.deleted) {
    li.classList.add("deleted");
    li.append(document.createTextNode("This message was deleted."));
    return li;
  }
  if (e.replyTo) {
    const quote = document.createElement("span");
    quote.className = "quote";
    quote.textContent = `↱ ${await quoteLine(e.replyTo)}`;
    li.append(quote);
  }
  if (e.file) li.append(await fileView(e));
  else li.append(document.createTextNode(e.text));
  if (e.seq > 0) li.append(messageActions(e, mine));
  return li;
}

// A quote's line: who wrote the answered message and its first words
// (chosen by the client: natter-web's `quote`, the SDK's rule).
async function quoteLine(q) {
  if (!q.senderId) return "an earlier message";
  const who = q.senderId === state.client.userId ? "You" : await nameOf(q.senderId);
  return `${who}: ${q.deleted ? "(deleted)" : q.text}`;
}

// Reply on every message; edit (text messages) and delete on the user's own.
function messageActions(e, mine) {
  const box = document.createElement("span");
  box.className = "actions";
  const reply = document.createElement("button");
  reply.type = "button";
  reply.className = "link reply";
  reply.textContent = "Reply";
  reply.addEventListener("click", () => startReplying(e));
  box.append(reply);
  if (!mine) return box;
  box.append(" ");
  if (!e.file) {
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "link edit";
    edit.textContent = "Edit";
    edit.addEventListener("click", () => startEditing(e));
    box.append(edit, " ");
  }
  const del = document.createElement("button");
  del.type = "button";
  del.className = "link delete";
  del.textContent = "Delete";
  del.addEventListener("click", () => {
    if (!confirm("Delete this message for everyone?")) return;
    busy(del, async () => {
      expectAck(await state.client.sendDelete(e.chatId, e.seq));
      if (state.editing && state.editing.seq === e.seq) stopEditing();
    });
  });
  box.append(del);
  return box;
}

// An edit or deletion waits for the server (the history then changes).
function expectAck(id) {
  if (!state.sentIds.delete(id)) state.changes.add(id);
}

// The composer edits a message: its text in the box, Send saves it.
function startEditing(e) {
  stopReplying();
  if (!state.editing) keepDraft();
  state.editing = { chatId: e.chatId, seq: e.seq };
  $("editing").hidden = false;
  $("draft").value = e.text;
  $("draft").focus();
}

function stopEditing() {
  if (!state.editing) return;
  state.editing = null;
  $("editing").hidden = true;
  $("draft").value = state.drafts.get(state.current) || "";
}
$("cancel-edit").addEventListener("click", stopEditing);

// The composer answers a message: "Replying to NAME: first words", Cancel.
async function startReplying(e) {
  stopEditing();
  let quote;
  try { quote = state.client.quote(e.chatId, e.messageId); } catch (err) { notice(explain(err)); return; }
  state.replying = { chatId: e.chatId, messageId: e.messageId, quote };
  $("replying-to").textContent = `Replying to ${await quoteLine(quote)}`;
  $("replying").hidden = false;
  $("draft").focus();
}

function stopReplying() {
  state.replying = null;
  $("replying").hidden = true;
}
$("cancel-reply").addEventListener("click", stopReplying);

async function fileView(e) {
  const box = document.createElement("div");
  try {
    const f = await state.client.fileBytes(e.chatId, e.seq);
    const url = URL.createObjectURL(new Blob([f.bytes], { type: f.mime }));
    state.objectUrls.push(url);
    if (f.mime.startsWith("image/")) {
      const img = document.createElement("img");
      img.alt = f.name;
      img.src = url;
      box.append(img);
    }
    const a = document.createElement("a");
    a.href = url;
    a.download = f.name;
    a.textContent = f.name;
    box.append(a);
  } catch (err) {
    box.textContent = `${e.file.name} (${explain(err)})`;
  }
  return box;
}

function updateStatuses(chatId) {
  if (chatId !== state.current) return;
  for (const li of $("messages").querySelectorAll("li.mine")) {
    const s = li.querySelector(".status");
    if (s && li.dataset.seq) s.textContent = ` · ${statusOf(chatId, Number(li.dataset.seq))}`;
  }
}

// Presence in a direct chat's header: fetched once when the chat opens,
// then kept current by the server's live presence events.
async function fetchPresence(chat) {
  $("chat-presence").textContent = "";
  if (!chat || !chat.other_user) return;
  const user = chat.other_user.user_id;
  try {
    const p = await state.client.user(user);
    // A live event that came in meanwhile is newer.
    if (!state.presence.has(user)) state.presence.set(user, { status: p.status, lastSeen: p.last_seen });
  } catch { /* offline: the connection dot says so */ }
  showPresence();
}

function showPresence() {
  const chat = state.chats.find((c) => c.id === state.current);
  const p = chat && chat.other_user && state.presence.get(chat.other_user.user_id);
  if (!p) { $("chat-presence").textContent = ""; return; }
  const seen = p.lastSeen ? ` · last seen ${new Date(p.lastSeen).toLocaleString()}` : "";
  $("chat-presence").textContent = p.status === "offline" ? `offline${seen}` : p.status;
}

// Sending: the text stays in the box until the client has it.
$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const chatId = state.current;
  const text = $("draft").value;
  if (!chatId || !text.trim()) return;
  if (state.editing) {
    const { seq } = state.editing;
    busy($("send"), async () => {
      expectAck(await state.client.sendEdit(chatId, seq, text));
      if ($("draft").value === text) stopEditing();
    });
    return;
  }
  const replying = state.replying && state.replying.chatId === chatId ? state.replying : null;
  busy($("send"), async () => {
    const id = replying
      ? await state.client.sendReply(chatId, replying.messageId, text)
      : await state.client.sendText(chatId, text);
    if (replying && state.replying === replying) stopReplying();
    if ($("draft").value === text) $("draft").value = "";
    state.drafts.delete(chatId);
    state.typingSentAt = 0; // the next keystroke says "typing" again
    // The server may have answered already (the history then shows it).
    if (state.sentIds.delete(id)) return;
    const li = await messageItem({ chatId, seq: 0, senderId: state.client.userId, sentAt: new Date().toISOString(), text, replyTo: replying && replying.quote });
    li.querySelector(".status").textContent = " · sending";
    state.pending.set(id, { chatId, li });
    $("messages").append(li);
    $("messages").scrollTop = $("messages").scrollHeight;
  });
});

$("draft").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("draft").addEventListener("input", () => {
  keepDraft();
  const now = Date.now();
  if (state.current && now - state.typingSentAt > TYPING_EVERY_MS) {
    state.typingSentAt = now;
    state.client.typing(state.current).catch(() => {});
  }
});

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  $("file").value = "";
  if (!file || !state.current) return;
  if (file.size > MAX_FILE_BYTES) {
    notice(`"${file.name}" is ${(file.size / 1048576).toFixed(1)} MB; the browser sends files up to ${MAX_FILE_BYTES / 1048576} MB.`);
    return;
  }
  const chatId = state.current;
  busy($("send"), async () => {
    const bytes = new Uint8Array(await file.arrayBuffer());
    await state.client.sendFile(chatId, file.name, file.type || "application/octet-stream", bytes);
    notice(`Sent ${file.name}.`, "info");
  });
});

$("new-chat").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const phones = $("new-chat-phone").value.split(",").map((p) => p.trim()).filter(Boolean);
  const name = $("new-chat-name").value.trim();
  if (phones.length === 0) { notice("Enter a phone number."); return; }
  busy(ev.submitter, async () => {
    const users = [];
    for (const phone of phones) {
      const id = await state.client.findUser(phone);
      if (!id) { notice(`${phone} is not on this server.`); return; }
      users.push(id);
    }
    const chatId = await state.client.createChat(users, name || (users.length > 1 ? "Group" : undefined));
    $("new-chat-phone").value = "";
    $("new-chat-name").value = "";
    await refreshChats();
    await openChat(chatId);
  });
});

$("add-member").addEventListener("click", () => {
  const phone = $("add-member-phone").value.trim();
  if (!phone || !state.current) return;
  busy($("add-member"), async () => {
    const id = await state.client.findUser(phone);
    if (!id) { notice(`${phone} is not on this server.`); return; }
    await state.client.addMembers(state.current, [id]);
    $("add-member-phone").value = "";
    notice("Added.", "info");
    await refreshChats();
  });
});

$("show-safety").addEventListener("click", () => {
  const chat = state.chats.find((c) => c.id === state.current);
  if (!chat || !chat.other_user) return;
  const other = chat.other_user.user_id;
  busy($("show-safety"), async () => {
    const s = await state.client.safetyNumber(other);
    const box = $("safety");
    box.replaceChildren();
    const p = document.createElement("p");
    p.textContent = `Safety number with ${chat.other_user.name}: compare it with theirs.`;
    const code = document.createElement("code");
    code.id = "safety-number";
    code.textContent = s.number;
    const b = document.createElement("button");
    b.className = "link";
    b.textContent = s.verified ? "Verified ✓ (undo)" : "Mark as verified";
    b.addEventListener("click", async () => {
      await busy(b, () => state.client.setVerified(other, !s.verified));
      box.hidden = true;
    });
    box.append(p, code, b);
    box.hidden = false;
  });
});

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 150);
});
async function runSearch() {
  const q = $("search").value;
  const box = $("search-results");
  box.replaceChildren();
  if (!q.trim()) { box.hidden = true; return; }
  let hits = [];
  try { hits = state.client.search(q); } catch (e) { notice(explain(e)); }
  for (const h of hits) {
    const div = document.createElement("div");
    const chat = state.chats.find((c) => c.id === h.chatId);
    div.textContent = `${chat ? chatTitle(chat) : "Chat"}: ${h.text}`;
    div.addEventListener("click", () => openChat(h.chatId));
    box.append(div);
  }
  if (hits.length === 0) box.textContent = "No messages found.";
  box.hidden = false;
}

$("open-devices").addEventListener("click", () => busy($("open-devices"), showDevices));
async function showDevices() {
  const list = await state.client.devices();
  const ul = $("device-list");
  ul.replaceChildren();
  const holds = await state.client.holdsIdentity();
  for (const d of list) {
    const li = document.createElement("li");
    li.textContent = `${d.thisDevice ? "This device" : "Device"} · key ${d.key.slice(0, 16)}… · ${d.approved ? "approved" : "waiting for approval"}`;
    if (!d.approved && holds) {
      const b = document.createElement("button");
      b.textContent = "Approve";
      b.className = "approve";
      b.addEventListener("click", async () => {
        const shown = prompt("Enter the key the new device shows (under “waits for approval”):");
        if (!shown) return;
        await busy(b, async () => {
          await state.client.approveDevice(d.deviceId, shown.trim(), true);
          notice("Device approved.", "info");
          await showDevices();
        });
      });
      li.append(" ", b);
    }
    ul.append(li);
  }
  if (!$("devices").open) $("devices").showModal();
}

// Web Push: a content-free "New message" that opens the right chat.
$("enable-push").addEventListener("click", () => busy($("enable-push"), async () => {
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
    notice("This browser has no Web Push.");
    return;
  }
  const reg = await navigator.serviceWorker.register("/sw.js");
  if ((await Notification.requestPermission()) !== "granted") {
    notice("Notifications are blocked for this site.");
    return;
  }
  const { public_key: key } = await state.client.vapidKey();
  const raw = Uint8Array.from(atob(key.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  const sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: raw });
  const json = sub.toJSON();
  await state.client.setPush(json.endpoint, json.keys.p256dh, json.keys.auth);
  notice("Notifications are on.", "info");
}));

$("sign-out").addEventListener("click", () => busy($("sign-out"), async () => {
  if (!confirm("Sign out? This browser forgets this device's keys and history.")) return;
  await state.client.logOut();
  location.hash = "";
  location.reload();
}));

// === Events from the messenger ===

async function onEvent(ev) {
  switch (ev.type) {
    case "connected":
      $("conn").classList.add("online");
      $("conn").title = "connected";
      // Presence changed unseen while disconnected: fetch it again.
      state.presence.clear();
      refreshChats().then(() => fetchPresence(state.chats.find((c) => c.id === state.current)));
      break;
    case "disconnected":
      $("conn").classList.remove("online");
      $("conn").title = `reconnecting: ${ev.reason}`;
      break;
    case "message": {
      const e = ev.entry;
      if (e.chatId === state.current) {
        $("messages").append(await messageItem(e));
        $("messages").scrollTop = $("messages").scrollHeight;
        if (document.visibilityState === "visible") state.client.read(e.chatId, e.seq).catch(() => {});
        $("typing").textContent = "";
      }
      refreshChats();
      break;
    }
    case "sent": {
      const p = state.pending.get(ev.clientMessageId);
      state.pending.delete(ev.clientMessageId);
      if (!p && !state.changes.delete(ev.clientMessageId)) state.sentIds.add(ev.clientMessageId);
      if (p && p.chatId === state.current) await renderHistory();
      else if (!p && state.current) await renderHistory();
      break;
    }
    case "sendFailed":
      notice(`A message was refused by the server (${ev.code}).`);
      break;
    case "receipt":
      state.receipts.set(ev.chatId, { delivered: ev.deliveredSeq, read: ev.readSeq });
      updateStatuses(ev.chatId);
      break;
    case "presence":
      state.presence.set(ev.userId, { status: ev.status, lastSeen: ev.lastSeen });
      showPresence();
      break;
    case "typing":
      if (ev.chatId === state.current && ev.userId !== state.client.userId) {
        $("typing").textContent = `${await nameOf(ev.userId)} is typing…`;
        clearTimeout(state.typingTimer);
        state.typingTimer = setTimeout(() => { $("typing").textContent = ""; }, TYPING_SHOWS_MS);
      }
      break;
    case "joined":
    case "chatChanged":
    case "removed":
      await refreshChats();
      if (ev.chatId === state.current) await renderHistory();
      break;
    case "linked":
      await refreshApproval();
      notice(`This device is approved${ev.imported ? `; ${ev.imported} messages came with it` : ""}.`, "info");
      await refreshChats();
      break;
    case "identityChanged":
      notice(`${await nameOf(ev.userId)}'s safety number changed. Compare it again.`);
      break;
    case "undecryptable":
      notice("A message could not be decrypted on this device.");
      break;
    case "refused":
      notice(`Refused: ${ev.reason}`);
      break;
    case "storageFailed":
      notice(`This browser could not save: ${ev.reason}`);
      break;
    case "loggedOut":
      notice("This device was logged out.");
      showSignIn();
      break;
    default:
      break;
  }
}

// === Start ===

async function main() {
  try {
    await init();
  } catch (e) {
    notice(`This browser cannot run Natter (WebAssembly): ${explain(e)}`);
    return;
  }
  let client = null;
  try { client = await Natter.resume(); } catch (e) { notice(explain(e)); }
  if (client) await enter(client);
  else showSignIn();
  document.body.dataset.ready = "1";
}
main();
