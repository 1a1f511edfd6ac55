// Log in / register, the home feed, a user's page.
import { api, fullName, profile, session } from "./api.js";
import { field, h, statusLine } from "./dom.js";
import { composer, feedPage, pagedList, userPostsPage } from "./posts.js";
import { rememberDialog } from "./people.js";

export function loginView(main, _params, ctx) {
  const flash = statusLine();
  if (ctx.flash) flash.show(ctx.flash);
  ctx.flash = null;

  const id = h("input", { name: "id", required: true, inputmode: "numeric", autocomplete: "username", pattern: "[0-9]{1,20}" });
  const password = h("input", { name: "password", type: "password", required: true, autocomplete: "current-password" });
  const loginStatus = statusLine();
  const login = h("form", { class: "card", "aria-labelledby": "login-h" }, h("h2", { id: "login-h", text: "Log in" }), field("User id", id, "The number you got when you registered."), field("Password", password), h("button", { type: "submit", text: "Log in" }), loginStatus);
  login.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const { token } = await api("POST", "/login", { body: { id: id.value.trim(), password: password.value }, token: null });
      ctx.logIn(id.value.trim(), token);
      location.hash = "#/feed";
    } catch (error) {
      loginStatus.show(error.message, "error");
    }
  });

  const inputs = {
    first_name: h("input", { required: true, autocomplete: "given-name", maxlength: 100 }),
    second_name: h("input", { required: true, autocomplete: "family-name", maxlength: 100 }),
    birthdate: h("input", { type: "date", required: true, min: "1900-01-01" }),
    city: h("input", { required: true, autocomplete: "address-level2", maxlength: 100 }),
    password: h("input", { type: "password", required: true, minlength: 8, autocomplete: "new-password" }),
    biography: h("textarea", { rows: 2, maxlength: 2000 }),
  };
  const registerStatus = statusLine();
  const register = h(
    "form",
    { class: "card", "aria-labelledby": "register-h" },
    h("h2", { id: "register-h", text: "Register" }),
    field("First name", inputs.first_name),
    field("Last name", inputs.second_name),
    field("Birth date", inputs.birthdate),
    field("City", inputs.city),
    field("Password", inputs.password, "At least 8 characters."),
    field("About you (optional)", inputs.biography),
    h("button", { type: "submit", text: "Register" }),
    registerStatus,
  );
  register.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(Object.entries(inputs).map(([key, input]) => [key, input.value]));
    if (!body.biography) delete body.biography;
    try {
      const { user_id: userId } = await api("POST", "/user/register", { body, token: null });
      const { token } = await api("POST", "/login", { body: { id: userId, password: body.password }, token: null });
      ctx.flash = `Welcome! Your user id is ${userId}: you log in with it, so keep it.`;
      ctx.logIn(userId, token);
      location.hash = `#/user/${userId}`;
    } catch (error) {
      registerStatus.show(error.message, "error");
    }
  });
  main.append(h("h1", { text: "Welcome to sn" }), flash, h("div", { class: "columns" }, login, register));
}

export function feedView(main, _params, ctx) {
  const paged = pagedList("Your feed", feedPage, "Nothing here yet: follow people (Search) and their posts show up here.");
  const pending = new Map(); // live posts not shown yet, by id
  const banner = h("button", { type: "button", class: "banner", hidden: true });
  const posted = statusLine();

  function updateBanner() {
    const count = pending.size;
    banner.hidden = count === 0;
    banner.textContent = count === 1 ? "1 new post: show it" : `${count} new posts: show them`;
  }
  banner.addEventListener("click", () => {
    paged.prepend([...pending.values()]);
    pending.clear();
    updateBanner();
    paged.element.querySelector("li a, li button")?.focus();
  });

  const onPost = (event) => {
    const { type, data } = event.detail;
    if (type === "post_created" && !paged.state.ids.has(data.post_id)) {
      pending.set(data.post_id, { id: data.post_id, text: data.post_text, author_user_id: data.author_user_id, created_at: data.created_at });
    } else if (type === "post_updated" && pending.has(data.post_id)) {
      pending.get(data.post_id).text = data.post_text;
    } else if (type === "post_deleted") {
      pending.delete(data.post_id);
    }
    updateBanner();
  };
  const onResync = () => {
    pending.clear();
    updateBanner();
    paged.reset();
  };
  ctx.live?.addEventListener("post", onPost);
  ctx.live?.addEventListener("resync", onResync);

  const compose = composer((post) => {
    posted.show("Posted: your own posts are on your page, not in your feed.");
    posted.append(" ", h("a", { href: `#/user/${session.userId}`, text: "Go to my page" }));
    void post;
  });
  main.append(h("h1", { text: "Feed" }), compose, posted, banner, paged.element);
  paged.loadOlder();
  return () => {
    ctx.live?.removeEventListener("post", onPost);
    ctx.live?.removeEventListener("resync", onResync);
    paged.destroy();
  };
}

function profileCard(user, isMe) {
  const rows = [
    ["City", user.city],
    ["Born", user.birthdate],
    ["Gender", user.gender],
    ["Interests", user.interests?.length ? user.interests.join(", ") : null],
    ["About", user.biography],
  ].filter(([, value]) => value);
  if (isMe) rows.unshift(["User id", user.id]);
  return h("dl", { class: "profile" }, rows.map(([term, value]) => [h("dt", { text: term }), h("dd", { text: value })]));
}

export function userView(main, [userId], ctx) {
  const isMe = userId === session.userId;
  const heading = h("h1", { text: isMe ? "My page" : "User" });
  const flash = statusLine();
  if (ctx.flash) flash.show(ctx.flash);
  ctx.flash = null;
  const details = h("div", {}, h("p", { text: "Loading…" }));
  const paged = pagedList(isMe ? "My posts" : "Posts", userPostsPage(userId), isMe ? "You have not posted yet." : "No posts yet.");
  const followStatus = statusLine();
  main.append(heading, flash, details);

  profile(userId).then(
    (user) => {
      heading.textContent = isMe ? `${fullName(user)} (me)` : fullName(user);
      details.replaceChildren(profileCard(user, isMe));
      if (isMe) {
        details.append(composer((post) => paged.prepend([post])));
      } else {
        const follow = h("button", { type: "button", text: "Follow" });
        const unfollow = h("button", { type: "button", text: "Unfollow" });
        const message = h("a", { class: "button", href: `#/dialog/${userId}`, text: "Message" });
        follow.addEventListener("click", async () => {
          try {
            await api("PUT", `/friend/set/${encodeURIComponent(userId)}`);
            followStatus.show(`You follow ${fullName(user)}: their new posts appear in your feed.`);
          } catch (error) {
            followStatus.show(error.message, "error");
          }
        });
        unfollow.addEventListener("click", async () => {
          try {
            await api("PUT", `/friend/delete/${encodeURIComponent(userId)}`);
            followStatus.show(`You no longer follow ${fullName(user)}.`);
          } catch (error) {
            followStatus.show(error.message, "error");
          }
        });
        message.addEventListener("click", () => rememberDialog(user));
        details.append(
          h("div", { class: "actions" }, follow, unfollow, message),
          h("small", { class: "hint", text: "The API does not say whether you already follow someone; both buttons are safe to press again." }),
          followStatus,
        );
      }
      details.append(h("h2", { text: isMe ? "My posts" : "Posts" }), paged.element);
      paged.loadOlder();
    },
    (error) => details.replaceChildren(h("p", { class: "status", "data-kind": "error", text: error.status === 404 ? "No such user." : error.message })),
  );
  return () => paged.destroy();
}

