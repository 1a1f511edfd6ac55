// One post as an <article>, and the lists of posts the feed and a user's page show.
import { api, fullName, profile, query, session } from "./api.js";
import { h, isId, statusLine, timeEl } from "./dom.js";

const PAGE_SIZE = 20;

export const newestFirst = (a, b) => (BigInt(b.id) > BigInt(a.id) ? 1 : BigInt(b.id) < BigInt(a.id) ? -1 : 0);

function authorLink(userId) {
  const link = h("a", { class: "author", href: isId(userId) ? `#/user/${userId}` : "#/feed", text: `user ${userId}` });
  profile(userId).then(
    (user) => {
      link.textContent = fullName(user);
    },
    () => {},
  );
  return link;
}

export function renderPost(post) {
  const text = h("p", { class: "text", text: post.text });
  const article = h(
    "article",
    { class: "post", "data-post-id": post.id },
    h("header", {}, authorLink(post.author_user_id), " ", timeEl(post.created_at), h("span", { class: "edited" })),
    text,
  );
  if (post.author_user_id === session.userId) article.append(ownControls(article, post));
  return h("li", {}, article);
}

function ownControls(article, post) {
  const status = statusLine();
  const bar = h("div", { class: "actions" });
  const edit = h("button", { type: "button", text: "Edit", onclick: () => startEdit() });
  const remove = h("button", { type: "button", class: "danger", text: "Delete", onclick: () => confirmDelete() });
  bar.append(edit, remove);

  function startEdit() {
    const current = article.querySelector(".text").textContent;
    const input = h("textarea", { rows: 3, maxlength: 10000, "aria-label": "Post text" });
    input.value = current;
    const form = h(
      "form",
      { class: "edit" },
      input,
      h("div", { class: "actions" }, h("button", { type: "submit", text: "Save" }), h("button", { type: "button", text: "Cancel", onclick: () => form.replaceWith(bar) })),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api("PUT", "/post/update", { body: { id: post.id, text: input.value } });
        setPostText(post.id, input.value);
        form.replaceWith(bar);
        status.show("Saved.");
        edit.focus();
      } catch (error) {
        status.show(error.message, "error");
      }
    });
    bar.replaceWith(form);
    input.focus();
  }

  function confirmDelete() {
    const yes = h("button", { type: "button", class: "danger", text: "Yes, delete it" });
    const no = h("button", { type: "button", text: "Keep it" });
    const ask = h("div", { class: "actions", role: "group", "aria-label": "Delete this post?" }, h("span", { text: "Delete this post?" }), yes, no);
    no.addEventListener("click", () => {
      ask.replaceWith(bar);
      remove.focus();
    });
    yes.addEventListener("click", async () => {
      try {
        await api("PUT", `/post/delete/${encodeURIComponent(post.id)}`);
        removePost(post.id);
      } catch (error) {
        status.show(error.message, "error");
      }
    });
    bar.replaceWith(ask);
    no.focus();
  }

  return h("div", {}, bar, status);
}

// Live edits and deletions reach every copy of a post on the page, whichever view shows it.
export function setPostText(postId, text) {
  if (!isId(postId)) return;
  for (const article of document.querySelectorAll(`article[data-post-id="${postId}"]`)) {
    article.querySelector(".text").textContent = text;
    article.querySelector(".edited").textContent = " · edited";
  }
}

export function removePost(postId) {
  if (!isId(postId)) return;
  for (const article of document.querySelectorAll(`article[data-post-id="${postId}"]`)) {
    article.closest("li")?.remove();
  }
  document.dispatchEvent(new CustomEvent("sn:post-removed", { detail: postId }));
}

// A list paged with the `before` cursor, loading more when its end scrolls into view (and by
// its button, for keyboards). `load(before)` returns one page, newest first.
export function pagedList(label, load, emptyText) {
  const list = h("ol", { class: "posts", "aria-label": label });
  const more = h("button", { type: "button", class: "more", text: "Load older posts" });
  const status = statusLine();
  const state = { ids: new Set(), oldest: null, done: false, loading: false };

  async function loadOlder() {
    if (state.loading || state.done) return;
    state.loading = true;
    more.disabled = true;
    let failed = false;
    try {
      const page = await load(state.oldest);
      for (const post of page) {
        if (state.ids.has(post.id)) continue;
        state.ids.add(post.id);
        list.append(renderPost(post));
      }
      if (page.length) state.oldest = page[page.length - 1].id;
      // Only an empty page is the end: a post deleted a moment ago can make a page come back short.
      if (page.length === 0) {
        state.done = true;
        more.hidden = true;
        status.show(state.ids.size ? "No older posts." : emptyText);
      } else {
        status.show("");
      }
    } catch (error) {
      failed = true;
      status.show(`Could not load posts: ${error.message}`, "error");
    } finally {
      state.loading = false;
      more.disabled = false;
    }
    // The observer fires on changes only: if the end is still in view after this page was laid
    // out (a short page), keep going.
    if (!state.done && !failed) requestAnimationFrame(() => {
      if (more.isConnected && more.getBoundingClientRect().top < window.innerHeight) loadOlder();
    });
  }

  function reset() {
    state.ids.clear();
    state.oldest = null;
    state.done = false;
    more.hidden = false;
    list.replaceChildren();
    return loadOlder();
  }

  // Newer posts (live ones) go on top.
  function prepend(posts) {
    const fresh = posts.filter((post) => !state.ids.has(post.id)).sort(newestFirst);
    for (const post of fresh.reverse()) {
      state.ids.add(post.id);
      list.prepend(renderPost(post));
    }
    if (fresh.length) status.show("");
    return fresh.length;
  }

  const onRemoved = (event) => state.ids.delete(event.detail);
  document.addEventListener("sn:post-removed", onRemoved);
  more.addEventListener("click", loadOlder);
  const observer = new IntersectionObserver((entries) => {
    if (entries[entries.length - 1].isIntersecting) loadOlder();
  });
  observer.observe(more);
  const element = h("div", { class: "paged" }, list, more, status);
  return {
    element,
    state,
    loadOlder,
    reset,
    prepend,
    destroy() {
      observer.disconnect();
      document.removeEventListener("sn:post-removed", onRemoved);
    },
  };
}

export function feedPage(before) {
  const params = { limit: PAGE_SIZE };
  if (before) params.before = before;
  return api("GET", `/post/feed?${query(params)}`);
}

export function userPostsPage(userId) {
  return (before) => {
    const params = { limit: PAGE_SIZE };
    if (before) params.before = before;
    return api("GET", `/user/${encodeURIComponent(userId)}/posts?${query(params)}`);
  };
}

export function composer(onPosted) {
  const input = h("textarea", { rows: 3, maxlength: 10000, required: true, "aria-label": "What's new?", placeholder: "What's new?" });
  const status = statusLine();
  const form = h("form", { class: "compose" }, input, h("div", { class: "actions" }, h("button", { type: "submit", text: "Post" })), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.value.trim()) {
      status.show("Write something first.", "error");
      return;
    }
    try {
      const id = await api("POST", "/post/create", { body: { text: input.value } });
      const text = input.value;
      input.value = "";
      status.show("Posted.");
      onPosted({ id, text, author_user_id: session.userId, created_at: new Date().toISOString() });
    } catch (error) {
      status.show(error.message, "error");
    }
  });
  return form;
}
