// The browser client end to end: playwright-core drives Debian's chromium
// (headless) against a real `natter serve` on an ephemeral port with a
// temporary data directory. Two browser contexts (Alice and Bob) sign up,
// chat end-to-end encrypted, exchange an image shown as a preview, search,
// reload and find everything; a third party (Carol, an SDK client: the
// natter-client example `third_party`) joins a group with them. Bad input:
// a wrong code, a file over the limit, a server restart mid-session.
// Edits, deletions and replies (with their quote) show on the other side,
// also after a reload; presence changes live when
// Bob goes away and comes back; Web Push goes end to end through a push
// service run by this test (see PushService). Screenshots of the main
// screens go to docs/web/.
//
// Environment: NATTER_BIN (the server binary), THIRD_PARTY_BIN (the SDK
// client), CHROMIUM (default /usr/bin/chromium).
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import crypto from "node:crypto";
import { mkdtempSync, rmSync, mkdirSync, closeSync, openSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const BIN = process.env.NATTER_BIN || join(root, "target", "debug", "natter");
const THIRD = process.env.THIRD_PARTY_BIN || join(root, "target", "debug", "examples", "third_party");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = join(root, "docs", "web");
// Every wait is bounded.
const WAIT_MS = 30000;
// The page weight budget (1.5 MB, the one scripts/web-check holds the
// built files to): here, everything the first load actually transfers,
// compressed, headers and the wasm bundle included.
const PAGE_WEIGHT_BUDGET = 1536 * 1024;

const children = new Set();
const people = [];
const work = mkdtempSync(join(tmpdir(), "natter-web-e2e-"));
let browser = null;
let failed = false;

function cleanup() {
  for (const c of children) { try { c.kill("SIGKILL"); } catch { /* gone */ } }
  rmSync(work, { recursive: true, force: true });
}
process.on("exit", cleanup);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { cleanup(); process.exit(1); });

function step(text) { console.log(`e2e: ${text}`); }
function check(cond, text) { if (!cond) throw new Error(`check failed: ${text}`); }

// === The server ===

class Server {
  constructor(dataDir) { this.dataDir = dataDir; this.log = ""; this.base = null; this.listen = "127.0.0.1:0"; }
  async start() {
    this.log = "";
    const env = {
      PATH: process.env.PATH, HOME: process.env.HOME || "/", NO_COLOR: "1", NATTER_LOG: "info", NATTER_SIGNUP__MODE: "open",
      // The push service below runs on 127.0.0.1 over plain HTTP.
      NATTER_PUSH__ALLOW_PRIVATE_ENDPOINTS: "true", NATTER_PUSH__COALESCE_MS: "200",
    };
    const child = spawn(BIN, ["serve", "--listen", this.listen, "--data-dir", this.dataDir], { env, stdio: ["ignore", "ignore", "pipe"] });
    children.add(child);
    this.child = child;
    child.stderr.on("data", (d) => { this.log += d.toString(); });
    child.on("exit", () => children.delete(child));
    const addr = await until(() => {
      const m = this.log.match(/natter is serving.* listen=([0-9.:]+)/);
      return m && m[1];
    }, "the server reports its address");
    this.listen = addr; // a restart comes back on the same port
    this.base = `http://${addr}`;
  }
  async stop() {
    const child = this.child;
    const gone = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await Promise.race([gone, sleep(20000).then(() => child.kill("SIGKILL"))]);
  }
  codes(phone) {
    const re = new RegExp(`DEVELOPMENT SMS SINK.* phone=\\${phone} .*code=(\\d{6})`, "g");
    return [...this.log.matchAll(re)].map((m) => m[1]);
  }
  async nextCode(phone, before) {
    return until(() => { const c = this.codes(phone); return c.length > before ? c[c.length - 1] : null; }, `a code for ${phone}`);
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
async function within(promise, what, ms = WAIT_MS) {
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms); });
  try { return await Promise.race([promise, late]); } finally { clearTimeout(timer); }
}
async function until(probe, what, ms = WAIT_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// A small real PNG (a 48x32 gradient), made here.
function png() {
  const w = 48, h = 32;
  const crcTable = Array.from({ length: 256 }, (_, n) => { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c >>> 0; });
  const crc = (buf) => { let c = 0xffffffff; for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4); c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) { const o = y * (w * 3 + 1) + 1 + x * 3; raw[o] = x * 5; raw[o + 1] = y * 8; raw[o + 2] = 200; }
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

// === A Web Push service ===

// Headless chromium has no push service, so this test runs one: a real
// HTTP server that receives the server's Web Push requests (RFC 8030),
// checks their VAPID signature (RFC 8292) and decrypts them (RFC 8291,
// aes128gcm) with the subscription's private key, made here. The page's
// PushManager.subscribe is replaced (an init script) by one that returns
// this endpoint and these keys; the test then hands the decrypted push to
// the service worker with CDP's ServiceWorker.deliverPushMessage.
class PushService {
  constructor() { this.requests = []; }
  async start() {
    this.ecdh = crypto.createECDH("prime256v1");
    this.ecdh.generateKeys();
    this.auth = crypto.randomBytes(16);
    this.server = createServer((req, res) => {
      const chunks = [];
      let size = 0;
      req.on("data", (c) => { size += c.length; if (size <= 65536) chunks.push(c); });
      req.on("end", () => {
        this.requests.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(201);
        res.end();
      });
    });
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.origin = `http://127.0.0.1:${this.server.address().port}`;
    this.endpoint = `${this.origin}/push/bob`;
  }
  stop() { this.server.close(); this.server.closeAllConnections(); }
  subscription() {
    return { endpoint: this.endpoint, p256dh: this.ecdh.getPublicKey().toString("base64url"), auth: this.auth.toString("base64url") };
  }
  // The VAPID header: `vapid t=<ES256 JWT>, k=<the server's public key>`.
  checkVapid(header, vapidKey) {
    const m = /^vapid t=([\w-]+\.[\w-]+\.[\w-]+), ?k=([\w-]+)$/.exec(header || "");
    check(m, `a VAPID Authorization header: ${header}`);
    check(m[2] === vapidKey, "the push is signed with the key the server publishes");
    const pub = Buffer.from(m[2], "base64url");
    const key = crypto.createPublicKey({ format: "jwk", key: { kty: "EC", crv: "P-256", x: pub.subarray(1, 33).toString("base64url"), y: pub.subarray(33, 65).toString("base64url") } });
    const [h, p, sig] = m[1].split(".");
    check(crypto.verify("sha256", Buffer.from(`${h}.${p}`), { key, dsaEncoding: "ieee-p1363" }, Buffer.from(sig, "base64url")), "the VAPID signature verifies");
    const claims = JSON.parse(Buffer.from(p, "base64url"));
    check(claims.aud === this.origin, `the JWT's audience is the push service (${claims.aud})`);
  }
  // RFC 8291 with RFC 8188's aes128gcm, one record.
  decrypt(body) {
    const salt = body.subarray(0, 16);
    const rs = body.readUInt32BE(16);
    const idlen = body[20];
    const senderKey = body.subarray(21, 21 + idlen);
    const sealed = body.subarray(21 + idlen);
    check(idlen === 65 && sealed.length <= rs, "one aes128gcm record keyed by the sender's P-256 key");
    const shared = this.ecdh.computeSecret(senderKey);
    const info = Buffer.concat([Buffer.from("WebPush: info\0"), this.ecdh.getPublicKey(), senderKey]);
    const ikm = Buffer.from(crypto.hkdfSync("sha256", shared, this.auth, info, 32));
    const cek = Buffer.from(crypto.hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: aes128gcm\0"), 16));
    const nonce = Buffer.from(crypto.hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: nonce\0"), 12));
    const d = crypto.createDecipheriv("aes-128-gcm", cek, nonce);
    d.setAuthTag(sealed.subarray(sealed.length - 16));
    const padded = Buffer.concat([d.update(sealed.subarray(0, sealed.length - 16)), d.final()]);
    let end = padded.length - 1;
    while (end >= 0 && padded[end] === 0) end--;
    check(padded[end] === 2, "the last record's delimiter");
    return padded.subarray(0, end);
  }
}

// Replaces PushManager.prototype.subscribe in the page (Playwright init
// script): it checks the application server key is a P-256 point and
// returns the test's push service as the subscription.
function fakeSubscribe({ endpoint, p256dh, auth }) {
  PushManager.prototype.subscribe = async function subscribe(options) {
    const key = new Uint8Array(options.applicationServerKey);
    if (key.length !== 65 || key[0] !== 4) throw new DOMException("not a P-256 public key", "InvalidAccessError");
    const json = { endpoint, expirationTime: null, keys: { p256dh, auth } };
    return { endpoint, expirationTime: null, options, toJSON: () => json };
  };
}

// === A person in a browser ===

class Person {
  constructor(name, phone, context, server) { this.name = name; this.phone = phone; this.context = context; this.server = server; people.push(this); }
  async open() {
    this.page = await this.context.newPage();
    this.page.on("pageerror", (e) => console.error(`${this.name}'s page: ${e.message}`));
    this.page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console.error(`${this.name}'s console: ${m.text()}`); });
    await this.page.goto(this.server.base + "/");
    await this.page.waitForSelector("body[data-ready='1']", { timeout: WAIT_MS });
  }
  async requestCode() {
    const before = this.server.codes(this.phone).length;
    await this.page.fill("#phone", this.phone);
    await this.page.click("#send-code");
    await this.page.waitForSelector("#verify-form:not([hidden])", { timeout: WAIT_MS });
    return this.server.nextCode(this.phone, before);
  }
  async signUp() {
    const code = await this.requestCode();
    await this.page.fill("#code", code);
    await this.page.fill("#name", this.name);
    await this.page.click("#sign-up");
    await this.page.waitForSelector("#app:not([hidden])", { timeout: WAIT_MS });
    await this.connected();
  }
  async connected() {
    await this.page.waitForSelector("#conn.online", { state: "attached", timeout: WAIT_MS });
  }
  async startChat(phones, group) {
    await this.page.fill("#new-chat-phone", phones.join(", "));
    if (group) await this.page.fill("#new-chat-name", group);
    const before = this.page.url();
    await this.page.click("#new-chat button[type=submit]");
    // The new chat opens (its id in the address).
    await this.page.waitForFunction((b) => location.href !== b && location.hash.startsWith("#chat="), before, { timeout: WAIT_MS });
    if (group) await this.page.waitForSelector(`#chat-title:has-text("${group}")`, { timeout: WAIT_MS });
  }
  async openChat(title) {
    const item = this.page.locator("#chat-list li", { hasText: title });
    await item.first().waitFor({ timeout: WAIT_MS });
    await item.first().click();
    await this.page.waitForSelector("#composer:not([hidden])", { timeout: WAIT_MS });
  }
  async send(text) {
    await this.page.fill("#draft", text);
    await this.page.click("#send");
    await this.sees(text);
  }
  async sees(text) {
    await this.page.locator("#messages li", { hasText: text }).first().waitFor({ timeout: WAIT_MS });
  }
  async seesImage() {
    await this.page.waitForFunction(() => {
      const img = document.querySelector("#messages img");
      return img && img.complete && img.naturalWidth === 48;
    }, null, { timeout: WAIT_MS });
  }
  // The reply `text` shows the quote `quote` above it.
  async seesQuote(text, quote) {
    const q = this.page.locator("#messages li", { hasText: text }).first().locator(".quote");
    await q.waitFor({ timeout: WAIT_MS });
    const shown = await q.textContent();
    check(shown === quote, `${this.name} sees the quote "${quote}" above "${text}": "${shown}"`);
  }
  async shot(name) {
    mkdirSync(SHOTS, { recursive: true });
    await this.page.evaluate(() => { document.getElementById("notice").hidden = true; });
    await this.page.screenshot({ path: join(SHOTS, `${name}.png`) });
  }
  // Waits for a notice matching `re` (an earlier one may still show).
  async notice(re) {
    await this.page.waitForFunction((src) => {
      const n = document.getElementById("notice");
      return !n.hidden && new RegExp(src, "i").test(n.textContent);
    }, re.source, { timeout: WAIT_MS }).catch(() => {});
    return this.page.textContent("#notice");
  }
}

// === Carol, the SDK client ===

function thirdParty(server, phone) {
  const child = spawn(THIRD, [server.base, phone, "Carol"], { stdio: ["pipe", "pipe", "inherit"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  let out = "";
  child.stdout.on("data", (d) => { out += d.toString(); });
  return {
    child,
    lines: () => out.split("\n").filter(Boolean).map((l) => JSON.parse(l)),
    say: (line) => child.stdin.write(`${line}\n`),
  };
}

// === The story ===

async function main() {
  const server = new Server(join(work, "data"));
  await server.start();
  step(`server on ${server.base}`);
  const push = new PushService();
  await push.start();
  process.on("exit", () => push.stop());
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  const alice = new Person("Alice", "+14155550101", await browser.newContext({ viewport: { width: 1100, height: 700 } }), server);
  // Bob's browser may notify, and its push service is the test's.
  const bobContext = await browser.newContext({ viewport: { width: 1100, height: 700 }, permissions: ["notifications"] });
  await bobContext.addInitScript(fakeSubscribe, push.subscription());
  const bob = new Person("Bob", "+14155550102", bobContext, server);

  step("first usable screen");
  const t0 = Date.now();
  await alice.open();
  console.log(`e2e: measured: sign-in screen usable after ${Date.now() - t0} ms (cold, first load)`);
  const weight = await alice.page.evaluate(() => [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")]
    .map((e) => ({ name: e.name, bytes: e.transferSize })));
  const total = weight.reduce((sum, e) => sum + e.bytes, 0);
  console.log(`e2e: measured: first load transferred ${total} bytes (${weight.map((e) => `${new URL(e.name).pathname} ${e.bytes}`).join(", ")})`);
  check(weight.some((e) => e.name.endsWith(".wasm") && e.bytes > 0), "the wasm bundle is part of the first load");
  check(total < PAGE_WEIGHT_BUDGET, `the first load transfers under ${PAGE_WEIGHT_BUDGET} bytes (${total})`);
  await alice.shot("sign-in");

  step("a wrong code: a clear message, nothing typed is lost");
  await alice.requestCode();
  await alice.page.fill("#code", "000000");
  await alice.page.fill("#name", "Alice");
  await alice.page.click("#sign-up");
  const wrong = await alice.notice(/wrong|expired/);
  check(/wrong|expired/i.test(wrong), `the wrong-code message says so: ${wrong}`);
  check((await alice.page.inputValue("#phone")) === alice.phone, "the phone number is still there");
  check((await alice.page.inputValue("#name")) === "Alice", "the name is still there");

  step("both sign up");
  await alice.signUp();
  await bob.open();
  await bob.signUp();

  step("Alice starts an encrypted chat with Bob and writes");
  await alice.startChat([bob.phone]);
  await alice.send("Hello Bob, this is end-to-end encrypted");
  await bob.openChat("Alice");
  await bob.sees("Hello Bob, this is end-to-end encrypted");
  await bob.send("Hi Alice! Lunch at noon?");
  await alice.sees("Hi Alice! Lunch at noon?");
  check((await bob.page.locator("#messages li", { hasText: "Lunch at noon" }).count()) === 1, "Bob's own message shows once");

  step("typing, then an image shown as a preview on the other side");
  // Keystrokes until Alice sees it (the client sends one notice every few
  // seconds, and the server may coalesce them).
  await bob.page.click("#draft");
  await until(async () => {
    await bob.page.keyboard.type("x");
    return alice.page.locator("#typing", { hasText: "Bob is typing" }).isVisible();
  }, "Alice sees that Bob is typing");
  await bob.page.fill("#draft", "");
  await alice.page.setInputFiles("#file", { name: "gradient.png", mimeType: "image/png", buffer: png() });
  await bob.seesImage();
  await alice.seesImage();
  await bob.shot("conversation");

  step("receipts: Alice sees that Bob read her message");
  await alice.page.locator("#messages li.mine .status", { hasText: "read" }).first().waitFor({ timeout: WAIT_MS });

  step("Alice edits and deletes her messages; Bob sees the edit marked, and a placeholder");
  const mine = (text) => alice.page.locator("#messages li.mine", { hasText: text }).first();
  await alice.send("See you at the cafe");
  await bob.sees("See you at the cafe");
  await mine("See you at the cafe").locator("button.edit").click();
  await alice.page.waitForSelector("#editing:not([hidden])", { timeout: WAIT_MS });
  check((await alice.page.inputValue("#draft")) === "See you at the cafe", "the composer holds the text to edit");
  await alice.page.fill("#draft", "See you at the park");
  await alice.page.click("#send");
  await bob.page.locator("#messages li", { hasText: "See you at the park" }).locator(".edited").waitFor({ timeout: WAIT_MS });
  check((await bob.page.locator("#messages li", { hasText: "cafe" }).count()) === 0, "the old text is gone on Bob's side");
  await mine("See you at the park").locator(".edited").waitFor({ timeout: WAIT_MS });
  await alice.page.waitForSelector("#editing", { state: "hidden", timeout: WAIT_MS });
  check((await alice.page.inputValue("#draft")) === "", "the composer is empty after the edit");
  await alice.send("oops, not for you");
  await bob.sees("oops, not for you");
  alice.page.once("dialog", (d) => d.accept());
  await mine("oops, not for you").locator("button.delete").click();
  await bob.page.locator("#messages li.deleted", { hasText: "This message was deleted" }).waitFor({ timeout: WAIT_MS });
  await until(async () => (await bob.page.locator("#messages li", { hasText: "oops" }).count()) === 0, "the deleted text is gone on Bob's side");
  await alice.page.locator("#messages li.deleted").waitFor({ timeout: WAIT_MS });
  await bob.shot("edited-deleted");

  step("Alice replies to Bob's message; both see the quote");
  const bobs = alice.page.locator("#messages li:not(.mine)", { hasText: "Lunch at noon" }).first();
  await bobs.locator("button.reply").click();
  await alice.page.waitForSelector("#replying:not([hidden])", { timeout: WAIT_MS });
  const replying = await alice.page.textContent("#replying-to");
  check(replying === "Replying to Bob: Hi Alice! Lunch at noon?", `the composer says what it answers: ${replying}`);
  await alice.page.click("#cancel-reply");
  await alice.page.waitForSelector("#replying", { state: "hidden", timeout: WAIT_MS });
  await alice.send("a plain message after Cancel");
  check((await alice.page.locator("#messages li", { hasText: "after Cancel" }).locator(".quote").count()) === 0, "after Cancel the message is no reply");
  await bobs.locator("button.reply").click();
  await alice.page.waitForSelector("#replying:not([hidden])", { timeout: WAIT_MS });
  await alice.page.fill("#draft", "Noon works for me");
  await alice.page.click("#send");
  await alice.page.waitForSelector("#replying", { state: "hidden", timeout: WAIT_MS });
  await alice.seesQuote("Noon works for me", "↱ Bob: Hi Alice! Lunch at noon?");
  await bob.seesQuote("Noon works for me", "↱ You: Hi Alice! Lunch at noon?");
  await bob.sees("a plain message after Cancel");
  check((await bob.page.locator("#messages li", { hasText: "after Cancel" }).locator(".quote").count()) === 0, "Bob sees no quote on the message sent after Cancel");
  await alice.shot("reply");

  step("a file over the limit: a clear message, the draft stays");
  await alice.page.fill("#draft", "a draft that must survive");
  const limit = await alice.page.evaluate(async () => (await import("/app.js")).MAX_FILE_BYTES);
  const hugePath = join(work, "huge.bin");
  closeSync(openSync(hugePath, "w"));
  truncateSync(hugePath, limit + 1); // sparse: one byte over the limit
  await alice.page.setInputFiles("#file", hugePath);
  const huge = await alice.notice(/huge\.bin/);
  check(/huge\.bin.*up to/i.test(huge), `the huge-file message names the file and the limit: ${huge}`);
  check((await alice.page.inputValue("#draft")) === "a draft that must survive", "the draft survived");
  await alice.page.fill("#draft", "");

  step("search of the decrypted history, in the browser");
  await bob.page.fill("#search", "lunch");
  await bob.page.locator("#search-results div", { hasText: "Lunch at noon" }).waitFor({ timeout: WAIT_MS });
  await bob.shot("search");
  await bob.page.fill("#search", "");

  step("safety numbers match on both sides");
  await alice.page.click("#show-safety");
  await bob.page.click("#show-safety");
  const an = await alice.page.textContent("#safety-number", { timeout: WAIT_MS });
  const bn = await bob.page.textContent("#safety-number", { timeout: WAIT_MS });
  check(an && an === bn, `the safety numbers match (${an} / ${bn})`);
  await alice.shot("safety-number");

  step("reload: everything is still there (IndexedDB, encrypted)");
  for (const p of [alice, bob]) {
    await p.page.reload();
    await p.page.waitForSelector("#app:not([hidden])", { timeout: WAIT_MS });
    await p.openChat(p === alice ? "Bob" : "Alice");
    await p.sees("Hello Bob, this is end-to-end encrypted");
    await p.sees("Hi Alice! Lunch at noon?");
    await p.seesImage();
    await p.page.locator("#messages li", { hasText: "See you at the park" }).locator(".edited").waitFor({ timeout: WAIT_MS });
    await p.page.locator("#messages li.deleted").waitFor({ timeout: WAIT_MS });
    check((await p.page.locator("#messages li", { hasText: "oops" }).count()) === 0, `${p.name}'s history has no deleted text`);
    await p.seesQuote("Noon works for me", p === alice ? "↱ Bob: Hi Alice! Lunch at noon?" : "↱ You: Hi Alice! Lunch at noon?");
  }
  await bob.page.fill("#search", "encrypted");
  await bob.page.locator("#search-results div", { hasText: "Hello Bob" }).waitFor({ timeout: WAIT_MS });
  await bob.page.fill("#search", "");
  const stored = await alice.page.evaluate(() => new Promise((resolve, reject) => {
    const r = indexedDB.open("natter");
    r.onsuccess = () => {
      const tx = r.result.transaction("records");
      const all = tx.objectStore("records").getAll();
      all.onsuccess = () => resolve(all.result.map((v) => Array.from(v)));
      all.onerror = () => reject(all.error);
    };
    r.onerror = () => reject(r.error);
  }));
  const plain = new TextEncoder().encode("Lunch at noon");
  const hasPlain = stored.some((rec) => {
    for (let i = 0; i + plain.length <= rec.length; i++) if (plain.every((b, j) => rec[i + j] === b)) return true;
    return false;
  });
  check(stored.length > 0 && !hasPlain, "IndexedDB holds records, none of them in plaintext");

  step("Web Push: Bob turns notifications on; his device registers with the server's push API");
  const vapidKey = (await (await fetch(`${server.base}/api/v1/push/vapid`)).json()).public_key;
  await bob.page.click("#enable-push");
  const on = await bob.notice(/Notifications are on/);
  check(/Notifications are on/.test(on), `notifications are on: ${on}`);
  const bobChat = new URLSearchParams(new URL(alice.page.url()).hash.slice(1)).get("chat");
  check(bobChat, "Alice's chat with Bob is open");

  step("presence, live: Bob goes away and Alice's header says so");
  await alice.page.locator("#chat-presence", { hasText: /^online/ }).waitFor({ timeout: WAIT_MS });
  await bob.page.goto("about:blank");
  await alice.page.locator("#chat-presence", { hasText: /^offline · last seen/ }).waitFor({ timeout: WAIT_MS });

  step("Web Push: a message for Bob while he is away reaches the push service, content-free");
  const pushedBefore = push.requests.length;
  await alice.send("Are you there, Bob?");
  await until(() => push.requests.length > pushedBefore, "the server's push reaches the push service");
  const pushed = push.requests[push.requests.length - 1];
  check(pushed.method === "POST" && pushed.url === "/push/bob", `a POST to the subscription's endpoint (${pushed.method} ${pushed.url})`);
  check(pushed.headers["content-encoding"] === "aes128gcm", "an encrypted payload");
  push.checkVapid(pushed.headers.authorization, vapidKey);
  const payload = push.decrypt(pushed.body);
  const sync = JSON.parse(payload.toString());
  check(sync.kind === "sync" && sync.chat_id === bobChat, `the push names the chat, nothing else: ${payload}`);
  check(!payload.toString().includes("there"), "the push carries no message text");

  step("Web Push: the service worker shows \"New message\"");
  const cdp = await bobContext.newCDPSession(bob.page);
  const registered = new Promise((resolve) => cdp.on("ServiceWorker.workerRegistrationUpdated", ({ registrations }) => {
    const r = registrations.find((x) => x.scopeURL === `${server.base}/` && !x.isDeleted);
    if (r) resolve(r);
  }));
  await cdp.send("ServiceWorker.enable");
  const registration = await within(registered, "the service worker's registration");
  await cdp.send("ServiceWorker.deliverPushMessage", { origin: server.base, registrationId: registration.registrationId, data: payload.toString() });

  step("presence, live: Bob comes back and Alice's header says so");
  await bob.page.goto(server.base + "/");
  await bob.page.waitForSelector("#app:not([hidden])", { timeout: WAIT_MS });
  await bob.connected();
  await alice.page.locator("#chat-presence", { hasText: /^online/ }).waitFor({ timeout: WAIT_MS });
  const shown = await until(async () => {
    const n = await bob.page.evaluate(async () => (await (await navigator.serviceWorker.ready).getNotifications())
      .map((x) => ({ title: x.title, body: x.body, chat: x.data && x.data.chat })));
    return n.length > 0 && n;
  }, "Bob's notification");
  check(shown.length === 1 && shown[0].title === "New message" && shown[0].body === "", `one notification, "New message" and nothing else: ${JSON.stringify(shown)}`);
  check(shown[0].chat === bobChat, "the notification opens Alice's chat");

  step("Web Push: what a click on the notification does opens the right chat");
  // Headless chromium cannot click a notification: the test runs the
  // worker's click handler's own function (openChat) on the notification
  // shown, and checks the address a new window would open.
  const worker = bobContext.serviceWorkers()[0] || await bobContext.waitForEvent("serviceworker", { timeout: WAIT_MS });
  const [url, how] = await worker.evaluate(async () => {
    const [n] = await self.registration.getNotifications();
    return [chatUrl(n.data.chat), await openChat(n.data.chat)];
  });
  check(url === `/#chat=${bobChat}`, `a new window would open the chat (${url})`);
  check(how === "focused", `Bob's open window is used (${how})`);
  await bob.page.waitForFunction((c) => location.hash === `#chat=${c}`, bobChat, { timeout: WAIT_MS });
  await bob.page.locator("#chat-title", { hasText: "Alice" }).waitFor({ timeout: WAIT_MS });
  await bob.sees("Are you there, Bob?");

  step("a server restart mid-session: a clear message, the draft is kept, then it sends");
  await server.stop();
  await alice.page.waitForSelector("#conn:not(.online)", { state: "attached", timeout: WAIT_MS });
  await alice.page.fill("#draft", "sent across a restart");
  await alice.page.click("#send");
  const offline = await alice.notice(/cannot be reached/);
  check(/cannot be reached/i.test(offline), `the offline message says so: ${offline}`);
  check((await alice.page.inputValue("#draft")) === "sent across a restart", "the draft is kept while the server is down");
  await server.start();
  await alice.connected();
  await alice.page.click("#send");
  await bob.sees("sent across a restart");

  step("a third party (an SDK client) joins a group with them");
  const carolPhone = "+14155550103";
  const carol = thirdParty(server, carolPhone);
  await until(() => carol.lines().some((l) => l.type === "need_code"), "Carol asks for her code");
  carol.say(await server.nextCode(carolPhone, 0));
  await until(() => carol.lines().some((l) => l.type === "ready"), "Carol is ready");
  await alice.startChat([bob.phone, carolPhone], "Lunch club");
  await alice.send("Welcome to the lunch club");
  await until(() => carol.lines().some((l) => l.type === "message" && l.text === "Welcome to the lunch club"), "Carol reads Alice's group message");
  await bob.openChat("Lunch club");
  await bob.sees("Welcome to the lunch club");
  await alice.sees("Carol here, from the SDK"); // Carol answers every message she reads
  await bob.sees("Carol here, from the SDK");
  await alice.shot("group");

  step("a second device: Alice logs in from another browser, her first one approves it");
  const alice2 = new Person("Alice", alice.phone, await browser.newContext({ viewport: { width: 1100, height: 700 } }), server);
  await alice2.open();
  const code2 = await alice2.requestCode();
  await alice2.page.fill("#code", code2);
  await alice2.page.click("#log-in");
  await alice2.page.waitForSelector("#pending-approval:not([hidden])", { timeout: WAIT_MS });
  const key = (await alice2.page.textContent("#my-device-key")).trim();
  await alice2.shot("second-device");
  alice.page.once("dialog", (d) => d.accept(key));
  await alice.page.click("#open-devices");
  await alice.page.click("#device-list button.approve");
  await alice.page.waitForSelector("#notice:has-text('approved')", { timeout: WAIT_MS });
  await alice2.page.waitForSelector("#pending-approval", { state: "hidden", timeout: WAIT_MS });
  await alice.page.keyboard.press("Escape");
  await alice2.openChat("Bob");
  await alice2.sees("Hi Alice! Lunch at noon?"); // handed over with the history
  await alice.openChat("Bob");
  await bob.openChat("Alice");
  await bob.send("Hello to both of your devices");
  await alice2.sees("Hello to both of your devices");
  await alice.sees("Hello to both of your devices");

  carol.child.stdin.end();
  step("all passed");
}

main()
  .catch(async (e) => {
    failed = true;
    console.error(`e2e: FAILED: ${e.stack || e}`);
    for (const p of people) {
      if (!p.page) continue;
      const n = await p.page.textContent("#notice").catch(() => "?");
      console.error(`e2e: ${p.name}'s last notice: ${n}`);
      await p.page.screenshot({ path: join(work, "..", `natter-e2e-${p.name}.png`) }).catch(() => {});
    }
  })
  .finally(async () => {
    if (browser) await browser.close().catch(() => {});
    cleanup();
    process.exit(failed ? 1 : 0);
  });
