// The web client's shell: the router (#/… routes), the session, the live connection.
import { api, session } from "./api.js";
import { LiveFeed } from "./live.js";
import { operatorView } from "./operator.js";
import { conversationView, dialogsView, searchView } from "./people.js";
import { removePost, setPostText } from "./posts.js";
import { feedView, loginView, userView } from "./views.js";

const main = document.getElementById("main");
const conn = document.getElementById("conn");
const ctx = { live: null, flash: null };
let cleanup = null;
let firstRender = true;

const routes = [
  [/^#\/login$/, loginView, "guest"],
  [/^#\/feed$/, feedView, "auth"],
  [/^#\/user\/([0-9]{1,20})$/, userView, "auth"],
  [/^#\/search(?:\?(.*))?$/, searchView, "auth"],
  [/^#\/dialogs$/, dialogsView, "auth"],
  [/^#\/dialog\/([0-9]{1,20})$/, conversationView, "auth"],
  [/^#\/operator$/, operatorView, "any"],
];

function render() {
  let hash = location.hash || "#/feed";
  if (hash === "#/me" && session.loggedIn) hash = `#/user/${session.userId}`;
  let match = null;
  let view = null;
  let access = "auth";
  for (const [pattern, candidate, needs] of routes) {
    match = pattern.exec(hash);
    if (match) {
      view = candidate;
      access = needs;
      break;
    }
  }
  if (!view) {
    location.replace("#/feed");
    return;
  }
  if (access === "auth" && !session.loggedIn) {
    location.replace("#/login");
    return;
  }
  if (access === "guest" && session.loggedIn) {
    location.replace("#/feed");
    return;
  }
  if (cleanup) cleanup();
  cleanup = null;
  main.replaceChildren();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === hash.split("?")[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  cleanup = view(main, match.slice(1), ctx) || null;
  // Keyboard and screen-reader users land on the new view, not on the link they used.
  if (!firstRender) main.focus();
  firstRender = false;
}

function showConnection(detail) {
  const { state, retryAt } = detail;
  conn.dataset.state = state;
  clearInterval(showConnection.timer);
  if (state === "online") conn.textContent = "● Live";
  else if (state === "connecting") conn.textContent = "Connecting…";
  else {
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      conn.textContent = `Offline: reconnecting in ${seconds} s`;
    };
    tick();
    showConnection.timer = setInterval(tick, 1000);
  }
}

function startSession() {
  document.body.dataset.session = session.loggedIn ? "user" : "guest";
  if (!session.loggedIn || ctx.live) return;
  const live = new LiveFeed(session.userId, session.token);
  live.addEventListener("state", (event) => showConnection(event.detail));
  live.addEventListener("check-auth", () => api("GET", "/post/feed?limit=1").catch(() => {}));
  // Edits and deletions apply wherever the post is shown; new posts are each view's business.
  live.addEventListener("post", (event) => {
    const frame = event.detail;
    if (frame.type === "post_updated") setPostText(frame.data.post_id, frame.data.post_text);
    if (frame.type === "post_deleted") removePost(frame.data.post_id);
  });
  ctx.live = live;
  window.snLive = live; // for a look from the console: state, lastEventId
  live.start();
}

export function logIn(userId, token) {
  session.logIn(userId, token);
  startSession();
}

function logOut(reason) {
  if (ctx.live) ctx.live.stop();
  ctx.live = null;
  session.logOut();
  conn.textContent = "";
  delete conn.dataset.state;
  document.body.dataset.session = "guest";
  ctx.flash = reason || null;
  if (location.hash === "#/login") render();
  else location.hash = "#/login";
}

ctx.logIn = logIn;
document.getElementById("logout").addEventListener("click", () => logOut("Logged out."));
window.addEventListener("sn:unauthorized", () => logOut("Your session has expired: log in again."));
window.addEventListener("hashchange", render);
startSession();
render();
