// The operator's page: /stats, /celebrity-stats and /metrics polled every second, the celebrity
// settings (POST /celebrity-settings) and the cluster status (GET /admin/cluster/status). All of
// it with the admin token the operator pastes in (`sn admin-token`), sent as a Bearer header.
import { api, fullName, profile, session } from "./api.js";
import { LineChart, format } from "./chart.js";
import { field, h, isId, statusLine } from "./dom.js";

const POLL_MS = 1000;
const names = new Map(); // author id -> name, for the running fan-outs
const CLUSTER_POLL_MS = 10000;

function table(caption, headers, rows) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col", text: name })))),
      h("tbody", {}, rows.length ? rows.map((row) => h("tr", {}, row.map((cell) => h("td", {}, cell ?? "")))) : h("tr", {}, h("td", { colspan: headers.length, text: "none" }))),
    ),
  );
}

function tile(label, value) {
  return h("div", { class: "tile" }, h("span", { class: "tile-value", text: value }), h("span", { class: "tile-label", text: label }));
}

const userLink = (id) => (isId(id) ? h("a", { href: `#/user/${id}`, text: id }) : String(id));

// Sum of one sample family's value over every label set, from the Prometheus text format.
function metricSum(text, name) {
  let total = null;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (match && match[1] === name) total = (total ?? 0) + Number(match[3]);
  }
  return total;
}

export function operatorView(main) {
  const tokenInput = h("input", { type: "password", autocomplete: "off", spellcheck: "false", "aria-describedby": "token-hint" });
  const tokenForm = h(
    "form",
    { class: "card token" },
    field("Admin token", tokenInput),
    h("small", { id: "token-hint", text: "From `sn admin-token --user-id <id>` (signed with the server's SN_JWT_SECRET). Kept for this tab only." }),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Use token" }), h("button", { type: "button", class: "forget", text: "Forget token" })),
  );
  const status = statusLine();
  const connections = h("section", { "aria-labelledby": "conn-h" }, h("h2", { id: "conn-h", text: "Connections" }));
  const connBody = h("div");
  connections.append(connBody);

  const fanouts = h("section", { "aria-labelledby": "celeb-h" }, h("h2", { id: "celeb-h", text: "Celebrity fan-outs" }));
  const running = h("div", { class: "running", "aria-live": "polite" });
  const rateCanvas = h("canvas", { class: "chart" });
  const latencyCanvas = h("canvas", { class: "chart" });
  const rateChart = new LineChart(rateCanvas, { label: "Celebrity send rate", unit: "notifications/s", color: "#c2410c" });
  const latencyChart = new LineChart(latencyCanvas, { label: "Normal post latency", unit: "ms", color: "#2456a6" });
  const celebBody = h("div");
  fanouts.append(
    running,
    h(
      "div",
      { class: "charts" },
      h("figure", {}, h("figcaption", { text: "Celebrity fan-out: notifications sent per second" }), rateCanvas),
      h("figure", {}, h("figcaption", { text: "Normal posts: commit → routed to followers (mean per second)" }), latencyCanvas),
    ),
    celebBody,
  );

  const settingsInputs = {
    celebrity_threshold: h("input", { type: "number", min: 1, max: 100000000, step: 1, required: true }),
    batch_size: h("input", { type: "number", min: 1, max: 100000, step: 1, required: true }),
    batch_delay: h("input", { type: "number", min: 0, max: 60, step: "any", required: true }),
  };
  let settingsDirty = false;
  const settingsStatus = statusLine();
  const settingsForm = h(
    "form",
    { class: "card settings" },
    h("h2", { text: "Celebrity settings" }),
    field("Threshold (followers)", settingsInputs.celebrity_threshold),
    field("Batch size (notifications)", settingsInputs.batch_size),
    field("Delay between batches (s)", settingsInputs.batch_delay),
    h("button", { type: "submit", text: "Save settings" }),
    settingsStatus,
  );
  settingsForm.addEventListener("input", () => {
    settingsDirty = true;
  });
  settingsForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      celebrity_threshold: Number(settingsInputs.celebrity_threshold.value),
      batch_size: Number(settingsInputs.batch_size.value),
      batch_delay: Number(settingsInputs.batch_delay.value),
    };
    try {
      await api("POST", "/celebrity-settings", { body, token: session.adminToken });
      settingsDirty = false;
      settingsStatus.show("Saved: every worker applies it within a second.");
    } catch (error) {
      settingsStatus.show(error.message, "error");
    }
  });

  const cluster = h("section", { "aria-labelledby": "cluster-h" }, h("h2", { id: "cluster-h", text: "Cluster" }));
  const clusterBody = h("div", {}, h("p", { text: "Loading…" }));
  const clusterRefresh = h("button", { type: "button", text: "Refresh" });
  cluster.append(clusterRefresh, clusterBody);

  // The fan-outs first: during a celebrity post they are what the operator came to watch.
  const content = h("div", { class: "operator" }, fanouts, connections, settingsForm, cluster);
  main.append(h("h1", { text: "Operator" }), tokenForm, status, content);

  let stopped = false;
  let timer = null;
  let clusterTimer = null;
  let previous = null; // last poll: {at, delivered, sent: Map(job → sent), latencySum, latencyCount}

  function showContent() {
    content.hidden = !session.adminToken;
    tokenInput.value = "";
    tokenInput.placeholder = session.adminToken ? "a token is set for this tab" : "paste the token here";
  }
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!tokenInput.value.trim()) return;
    session.adminToken = tokenInput.value.trim();
    previous = null;
    showContent();
    restart();
  });
  tokenForm.querySelector(".forget").addEventListener("click", () => {
    session.adminToken = null;
    showContent();
    status.show("Token forgotten.");
  });
  clusterRefresh.addEventListener("click", () => pollCluster(false));

  function renderStats(stats, at) {
    const ws = stats.websocket;
    const deliveredPerSecond = previous ? Math.max(0, ws.messages_delivered - previous.delivered) / ((at - previous.at) / 1000) : null;
    const byNode = new Map();
    for (const worker of stats.workers) {
      const node = byNode.get(worker.node) || { workers: 0, connections: 0, users: 0 };
      node.workers += 1;
      node.connections += worker.connections;
      node.users += worker.users;
      byNode.set(worker.node, node);
    }
    const feed = stats.feed_processor;
    connBody.replaceChildren(
      h(
        "div",
        { class: "tiles" },
        tile("connections", String(ws.total_connections)),
        tile("users online", String(ws.active_users)),
        tile("deliveries/s", deliveredPerSecond === null ? "…" : format(deliveredPerSecond)),
        tile("delivered in all", String(ws.messages_delivered)),
        tile("slow-consumer closes", String(ws.slow_consumer_closes)),
        tile(`pipeline (${feed.bus})`, feed.is_running && feed.bus_connected ? "running" : "DOWN"),
        tile("outbox pending", String(feed.outbox_pending)),
      ),
      table(
        "Per node",
        ["Node", "Workers", "Connections", "Users"],
        [...byNode].map(([node, value]) => [node, String(value.workers), String(value.connections), String(value.users)]),
      ),
      table(
        "Per worker",
        ["Node", "Worker", "PID", "Connections", "Users", "Delivered", "Reported"],
        stats.workers.map((worker) => [
          worker.node,
          worker.worker,
          String(worker.pid),
          String(worker.connections),
          String(worker.users),
          String(worker.delivered),
          `${Math.max(0, Math.round(Date.now() / 1000 - worker.updated_at))} s ago`,
        ]),
      ),
    );
    return ws.messages_delivered;
  }

  function renderCelebrities(celeb, at) {
    const batchSize = celeb.settings.batch_size;
    const sent = new Map();
    let sentNow = 0;
    running.replaceChildren(h("h3", { text: celeb.fanouts_in_progress.length ? "Running now" : "No fan-out running" }));
    for (const job of celeb.fanouts_in_progress) {
      const key = `${job.type}:${job.post_id}`;
      sent.set(key, job.sent);
      sentNow += job.sent - (previous?.sent.get(key) ?? 0);
      const batches = Math.max(1, Math.ceil(job.online / batchSize));
      const done = Math.min(batches, Math.ceil(job.sent / batchSize));
      const author = names.get(job.author_id) || job.author_id;
      if (!names.has(job.author_id) && isId(job.author_id)) {
        names.set(job.author_id, null);
        profile(job.author_id).then((user) => names.set(job.author_id, fullName(user)), () => {});
      }
      const label = `Post ${job.post_id} (${job.type.replace("post_", "")}) by ${author}: batch ${done} of ${batches}, ${job.sent} of ${job.online} online followers notified`;
      running.append(
        h(
          "div",
          { class: "fanout", "data-post-id": job.post_id },
          h("label", { text: label }, h("progress", { max: batches, value: done, "aria-label": `batches sent for post ${job.post_id}` })),
          h("small", { text: `${job.followers ?? "?"} followers in all, running for ${format(Math.max(0, Date.now() / 1000 - job.started_at))} s` }),
        ),
      );
    }
    // Jobs that finished since the last poll: their last batches count too.
    for (const [key, before] of previous?.sent ?? []) {
      if (sent.has(key)) continue;
      const finished = celeb.recent_fanouts.find((job) => `${job.type}:${job.post_id}` === key);
      if (finished) sentNow += Math.max(0, finished.online - before);
    }
    if (previous) rateChart.push(sentNow / ((at - previous.at) / 1000));
    celebBody.replaceChildren(
      h("div", { class: "tiles" }, tile("batches sent", String(celeb.batches_sent)), tile("fan-outs completed", String(celeb.fanouts_completed)), tile("celebrities", String(celeb.celebrities.length))),
      table(
        "Recent fan-outs",
        ["Post", "Author", "Online", "Batches", "Seconds"],
        celeb.recent_fanouts.slice(0, 8).map((job) => [job.post_id, userLink(job.author_id), String(job.online), String(job.batches), format(job.duration_seconds)]),
      ),
      table(
        `Celebrities (≥ ${celeb.settings.celebrity_threshold} followers)`,
        ["User", "Followers"],
        celeb.celebrities.slice(0, 20).map((item) => [userLink(item.user_id), String(item.followers)]),
      ),
    );
    if (!settingsDirty) {
      for (const [key, input] of Object.entries(settingsInputs)) {
        if (document.activeElement !== input) input.value = String(celeb.settings[key]);
      }
    }
    return sent;
  }

  async function poll() {
    if (stopped || !session.adminToken) return;
    const token = session.adminToken;
    const at = Date.now();
    try {
      const [stats, celeb, metrics] = await Promise.all([
        api("GET", "/stats", { token }),
        api("GET", "/celebrity-stats", { token }),
        api("GET", "/metrics", { token, text: true }).catch(() => null),
      ]);
      if (stopped) return;
      const delivered = renderStats(stats, at);
      const sent = renderCelebrities(celeb, at);
      const latencySum = metrics === null ? null : metricSum(metrics, "sn_fanout_latency_seconds_sum");
      const latencyCount = metrics === null ? null : metricSum(metrics, "sn_fanout_latency_seconds_count");
      if (previous && latencyCount !== null && previous.latencyCount !== null) {
        const count = latencyCount - previous.latencyCount;
        latencyChart.push(count > 0 ? ((latencySum - previous.latencySum) / count) * 1000 : null);
      }
      previous = { at, delivered, sent, latencySum, latencyCount };
      status.show(`Updated ${new Date(at).toLocaleTimeString()}.`);
    } catch (error) {
      status.show(error.status === 401 || error.status === 403 ? `The token was refused: ${error.message}` : `Cannot read the stats: ${error.message}`, "error");
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  async function pollCluster(again = true) {
    if (stopped || !session.adminToken) return;
    try {
      const state = await api("GET", "/admin/cluster/status", { token: session.adminToken });
      renderCluster(state);
    } catch (error) {
      clusterBody.replaceChildren(h("p", { class: "status", "data-kind": "error", text: error.message }));
    }
    if (again && !stopped) clusterTimer = setTimeout(pollCluster, CLUSTER_POLL_MS);
  }

  function renderCluster(state) {
    const parts = [];
    if (state.mode === "single-node") {
      parts.push(h("p", { text: `Single-node PostgreSQL ${state.server_version}, no Citus${state.citus?.unavailable_reason ? `: ${state.citus.unavailable_reason}` : "."}` }));
    } else {
      parts.push(h("p", { text: `Citus cluster (${state.mode}).` }));
    }
    if (state.problems?.length) parts.push(h("ul", { class: "problems" }, state.problems.map((problem) => h("li", { text: problem }))));
    parts.push(
      table(
        "Nodes",
        ["Role", "Host", "Active", "Reachable", "Shards", "Bytes"],
        (state.nodes || []).map((node) => [node.role, `${node.host ?? "?"}:${node.port ?? "?"}`, node.active ? "yes" : "no", node.reachable ? "yes" : "NO", String(node.shard_count ?? ""), node.shard_bytes === null || node.shard_bytes === undefined ? "" : String(node.shard_bytes)]),
      ),
      table(
        "Tables",
        ["Table", "Type", "Distributed by", "Shards"],
        (state.tables || []).map((item) => [item.name, item.type, item.distribution_column ?? "", String(item.shard_count ?? "")]),
      ),
      table(
        "Hot users",
        ["User", "Hot", "Node", "On the hot worker", "Reason"],
        (state.hot_users || []).map((user) => [userLink(user.user_id), user.hot ? "yes" : "no", user.node ?? "", user.on_hot_worker === null || user.on_hot_worker === undefined ? "" : user.on_hot_worker ? "yes" : "no", user.reason ?? ""]),
      ),
    );
    clusterBody.replaceChildren(...parts);
  }

  function restart() {
    clearTimeout(timer);
    clearTimeout(clusterTimer);
    if (!session.adminToken) return;
    poll();
    pollCluster();
  }

  showContent();
  if (!session.adminToken) {
    status.show("Paste an admin token to see the live statistics.");
    tokenInput.focus();
  }
  restart();
  return () => {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(clusterTimer);
  };
}
