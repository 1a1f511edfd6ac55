// Search, the list of dialogs, one conversation.
import { api, fullName, profile, query, session } from "./api.js";
import { field, h, isId, statusLine, timeEl } from "./dom.js";

const SEARCH_PAGE = 20;

export function searchView(main, [raw]) {
  const params = new URLSearchParams(raw || "");
  const first = h("input", { name: "first_name", autocomplete: "off", maxlength: 100, value: params.get("first") || "" });
  const last = h("input", { name: "last_name", autocomplete: "off", maxlength: 100, value: params.get("last") || "" });
  const status = statusLine();
  const results = h("ul", { class: "people", "aria-label": "Search results" });
  const more = h("button", { type: "button", class: "more", hidden: true, text: "More results" });
  const form = h(
    "form",
    { class: "card search", role: "search" },
    field("First name starts with", first),
    field("Last name starts with", last),
    h("button", { type: "submit", text: "Search" }),
  );
  let after = null;
  let generation = 0;

  async function run(reset) {
    const mine = reset ? ++generation : generation;
    if (reset) {
      after = null;
      results.replaceChildren();
    }
    const args = { first_name: first.value.trim(), last_name: last.value.trim(), limit: SEARCH_PAGE };
    if (!args.first_name && !args.last_name) {
      status.show("Type the beginning of a first or last name (any alphabet).");
      more.hidden = true;
      return;
    }
    if (after) args.after = after;
    try {
      const users = await api("GET", `/user/search?${query(args)}`);
      if (mine !== generation) return; // a newer search started meanwhile
      for (const user of users) {
        results.append(
          h("li", {}, h("a", { href: `#/user/${user.id}`, text: fullName(user) }), h("span", { class: "muted", text: ` · ${user.city}` })),
        );
      }
      if (users.length) after = users[users.length - 1].id;
      more.hidden = users.length < SEARCH_PAGE;
      const count = results.children.length;
      status.show(count ? `${count} ${count === 1 ? "person" : "people"} found${more.hidden ? "" : " so far"}.` : "Nobody found.");
    } catch (error) {
      status.show(error.message, "error");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Kept in the address so Back returns to these results (names only: never a token).
    const next = `#/search?${new URLSearchParams({ first: first.value.trim(), last: last.value.trim() })}`;
    if (location.hash !== next) history.replaceState(null, "", next);
    run(true);
  });
  more.addEventListener("click", () => run(false));
  main.append(h("h1", { text: "Search people" }), form, status, results, more);
  if (first.value || last.value) run(true);
  else first.focus();
}

// The API has no "my conversations" call: the list is kept in this browser, per user.
const dialogsKey = () => `sn.dialogs.${session.userId}`;

function knownDialogs() {
  try {
    const list = JSON.parse(localStorage.getItem(dialogsKey()) || "[]");
    return Array.isArray(list) ? list.filter((item) => item && isId(item.id)) : [];
  } catch {
    return [];
  }
}

export function rememberDialog(user) {
  const list = knownDialogs().filter((item) => item.id !== user.id);
  list.unshift({ id: user.id, name: fullName(user), at: Date.now() });
  localStorage.setItem(dialogsKey(), JSON.stringify(list.slice(0, 200)));
}

export function dialogsView(main) {
  const list = knownDialogs();
  main.append(
    h("h1", { text: "Dialogs" }),
    h("p", {
      class: "note",
      text:
        "The API has no list of conversations, so this page lists the people you have written to or opened a conversation with in this browser. " +
        "To start one, find someone in Search and choose Message.",
    }),
  );
  if (!list.length) {
    main.append(h("p", { text: "No conversations yet." }));
    return;
  }
  main.append(
    h(
      "ul",
      { class: "people", "aria-label": "Conversations" },
      list.map((item) => h("li", {}, h("a", { href: `#/dialog/${item.id}`, text: item.name || `user ${item.id}` }), " ", h("time", { class: "muted", text: new Date(item.at).toLocaleString() }))),
    ),
  );
}

const POLL_MS = 3000;
const POLL_MAX_MS = 30000;

export function conversationView(main, [peerId]) {
  const heading = h("h1", { text: "Conversation" });
  const messages = h("ol", { class: "messages", "aria-label": "Messages", "aria-live": "polite" });
  const input = h("textarea", { rows: 2, maxlength: 10000, required: true, "aria-label": "Message" });
  const status = statusLine();
  const form = h("form", { class: "compose" }, input, h("div", { class: "actions" }, h("button", { type: "submit", text: "Send" })), status);
  main.append(
    heading,
    h("p", { class: "note", text: "The API has no live channel for dialogs: new messages are fetched every few seconds while this page is open." }),
    messages,
    form,
  );
  let lastId = null;
  let peer = null;
  let stopped = false;
  let timer = null;
  let delay = POLL_MS;
  const seen = new Set();

  profile(peerId).then(
    (user) => {
      peer = user;
      rememberDialog(user);
      heading.textContent = `Conversation with ${fullName(user)}`;
    },
    (error) => status.show(error.status === 404 ? "No such user." : error.message, "error"),
  );

  async function fetchNew() {
    // Oldest first, paged with the `after` cursor: each poll asks only for what is new.
    for (;;) {
      const args = { limit: 100 };
      if (lastId) args.after = lastId;
      const page = await api("GET", `/dialog/${encodeURIComponent(peerId)}/list?${query(args)}`);
      for (const message of page) {
        if (seen.has(message.id)) continue;
        seen.add(message.id);
        const mine = message.from === session.userId;
        messages.append(
          h("li", { class: mine ? "mine" : "theirs" }, h("span", { class: "who", text: mine ? "Me" : peer ? peer.first_name : "Them" }), h("p", { text: message.text }), timeEl(message.created_at)),
        );
        lastId = message.id;
      }
      if (page.length < 100) return page.length;
    }
  }

  async function poll() {
    if (stopped) return;
    if (document.visibilityState === "visible") {
      try {
        const got = await fetchNew();
        if (got) messages.lastElementChild?.scrollIntoView({ block: "nearest" });
        delay = POLL_MS;
      } catch (error) {
        delay = Math.min(POLL_MAX_MS, delay * 2); // politely further apart while failing
        status.show(`Could not fetch messages: ${error.message}`, "error");
      }
    }
    if (!stopped) timer = setTimeout(poll, delay);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.value.trim()) return;
    try {
      await api("POST", `/dialog/${encodeURIComponent(peerId)}/send`, { body: { text: input.value } });
      input.value = "";
      status.show("");
      if (peer) rememberDialog(peer);
      await fetchNew();
      input.focus();
    } catch (error) {
      status.show(error.message, "error");
    }
  });
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
