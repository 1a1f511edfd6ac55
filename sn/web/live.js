// The real-time feed over /ws/{user_id} (see README, "Real-time feed"). Browsers cannot send an
// Authorization header on a WebSocket, so the token goes in ?token= as that API requires.
//
// Every event carries an event_id; after a dropped connection we reconnect (with backoff) with
// ?since=<the last one seen>, and the server replays what was missed or says "resync", after
// which the feed is fetched again. Without a last id (nothing arrived yet) a reconnect cannot
// ask for a replay, so it is treated like a resync too.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const PING_EVERY_MS = 25_000; // below the server's 20 s idle ping + 20 s timeout, and proxies' idle limits
const PONG_WITHIN_MS = 10_000;

export class LiveFeed extends EventTarget {
  constructor(userId, token) {
    super();
    this.userId = userId;
    this.token = token;
    this.lastEventId = null;
    this.attempt = 0;
    this.connectedOnce = false;
    this.stopped = false;
    this.ws = null;
    this.state = "connecting";
    this.retryAt = 0;
    this.timers = new Set();
    this.onOnline = () => this.reconnectNow();
    this.onVisible = () => {
      if (document.visibilityState === "visible" && this.state === "offline") this.reconnectNow();
    };
  }

  start() {
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.ws) this.ws.close(1000, "logged out");
    this.ws = null;
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams({ token: this.token });
    if (this.lastEventId !== null) params.set("since", String(this.lastEventId));
    return `${scheme}//${location.host}/ws/${encodeURIComponent(this.userId)}?${params}`;
  }

  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  connect() {
    if (this.stopped) return;
    this.setState("connecting");
    const replaying = this.lastEventId !== null;
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let pongTimer = null;
    let pingTimer = null;
    const keepalive = () => {
      pingTimer = this.later(() => {
        if (ws.readyState !== WebSocket.OPEN) return;
        ws.send(JSON.stringify({ type: "ping" }));
        pongTimer = this.later(() => ws.close(4000, "no pong"), PONG_WITHIN_MS);
      }, PING_EVERY_MS);
    };
    ws.addEventListener("open", () => {
      const wasConnected = this.connectedOnce;
      this.connectedOnce = true;
      this.attempt = 0;
      this.setState("online");
      keepalive();
      // Reconnected without a replay: posts may have been missed while away.
      if (wasConnected && !replaying) this.dispatchEvent(new Event("resync"));
    });
    ws.addEventListener("message", (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === "pong") {
        clearTimeout(pongTimer);
        this.timers.delete(pongTimer);
        keepalive();
      } else if (frame.type === "resync") {
        // The server's log no longer reaches back to our last id: start over from a fresh feed.
        this.lastEventId = null;
        this.dispatchEvent(new Event("resync"));
      } else if (frame.type === "post_created" || frame.type === "post_updated" || frame.type === "post_deleted") {
        if (typeof frame.event_id === "number" && (this.lastEventId === null || frame.event_id > this.lastEventId)) {
          this.lastEventId = frame.event_id;
        }
        this.dispatchEvent(new CustomEvent("post", { detail: frame }));
      }
    });
    ws.addEventListener("close", (event) => {
      clearTimeout(pingTimer);
      clearTimeout(pongTimer);
      if (this.ws === ws) this.ws = null;
      if (this.stopped) return;
      this.scheduleReconnect(event.code);
    });
  }

  scheduleReconnect(code) {
    // Exponential backoff with jitter, so a restarted server is not hit by every tab at once.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = Math.round(base / 2 + (Math.random() * base) / 2);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState("offline", { retryAt: this.retryAt, code });
    // A handshake refused for an expired token looks like any failure from here: ask the REST
    // API, whose 401 logs the tab out (api.js).
    if (this.attempt >= 2) this.dispatchEvent(new Event("check-auth"));
    clearTimeout(this.retryTimer);
    this.retryTimer = this.later(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped || this.state !== "offline") return;
    clearTimeout(this.retryTimer);
    this.timers.delete(this.retryTimer);
    this.connect();
  }
}
