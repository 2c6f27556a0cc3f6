// isocache's admin page: origins as trees, images, prewarm jobs. Plain DOM, no build step.
//
// Rules kept throughout: every name from the service or an origin reaches the page through
// textContent or an attribute, never as markup; every URL is relative to the service root
// (so a reverse proxy's path prefix is kept); the admin token lives in sessionStorage and
// only ever travels in an Authorization header.
"use strict";

(() => {
  const TOKEN_KEY = "isocache.token";
  const VIEWS = ["origins", "images", "jobs"];
  // The page is served at <root>/ui/, so the service's root is one level up.
  const ROOT = new URL("../", document.baseURI);
  // Paths per GET api/origins/NAME/cached (the API takes up to 100) and a bound on its URL.
  const CACHED_BATCH = 50;
  const CACHED_URL_MAX = 6000;

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers -------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // strings: text nodes
    }
    return node;
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function percent(part, whole) {
    if (whole === null || whole === undefined) return null;
    if (whole === 0) return 100;
    return Math.floor((part * 100) / whole); // 100 only when every byte is there
  }

  function formatSeconds(s) {
    if (s === null || s === undefined) return "–";
    const total = Math.round(s);
    const minutes = Math.floor(total / 60);
    return minutes ? `${minutes}m ${String(total % 60).padStart(2, "0")}s` : `${total}s`;
  }

  function cachedCell(cached, size) {
    const pct = percent(cached, size);
    const bar = el("progress", { max: size || 1, value: size ? cached : 0 });
    const text = pct === null ? formatBytes(cached) : `${formatBytes(cached)} (${pct} %)`;
    return el("span", { class: "cached" }, bar, el("span", { class: "cached-text", text }));
  }

  // -- token and messages ------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function updateMode() {
    const has = token() !== "";
    const mode = $("mode");
    mode.textContent = has
      ? "Admin token set for this browser tab: changes are allowed."
      : "Read-only: enter the admin token to prewarm, evict, pin, verify or register images.";
    mode.className = has ? "banner ok" : "banner readonly";
    for (const button of document.querySelectorAll(".mutate")) button.disabled = !has;
  }

  function showMessage(text, kind) {
    $("message-text").textContent = text;
    $("message").className = kind;
    $("message").hidden = false;
  }

  function showError(err) {
    if (err instanceof ApiError) showMessage(`${err.status} ${err.error}: ${err.detail}`, "error");
    else showMessage(String(err), "error");
  }

  // -- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, error, detail) {
      super(`${status} ${error}: ${detail}`);
      this.status = status;
      this.error = error;
      this.detail = detail;
    }
  }

  async function request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && token()) headers.Authorization = `Bearer ${token()}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, ROOT), init);
    } catch (exc) {
      throw new ApiError(0, "unreachable", `the service did not answer (${exc.message})`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data && typeof data.error === "string" ? data.error : `http_${response.status}`;
      const detail = data && typeof data.detail === "string" ? data.detail : text.slice(0, 200);
      throw new ApiError(response.status, error, detail);
    }
    return data;
  }

  // A mutation: disabled without a token; its outcome (or the API's error) is shown.
  async function mutate(action, describe) {
    try {
      const result = await action();
      if (describe) showMessage(describe(result), "info");
    } catch (err) {
      showError(err);
    }
    refresh();
  }

  function actionButton(label, handler, extra) {
    return el("button", {
      type: "button",
      class: `mutate ${extra || ""}`.trim(),
      disabled: !token(),
      text: label,
      onclick: handler,
    });
  }

  const encodePath = (segments) => segments.map(encodeURIComponent).join("/");

  async function startPrewarm(target, label) {
    await mutate(
      () => request("POST", "api/prewarm", target),
      (job) => `Prewarm of ${label} queued as job ${job.id}; see Prewarm jobs.`,
    );
  }

  // -- attach snippets ---------------------------------------------------------------------

  const shellQuote = (s) => `'${s.replaceAll("'", "'\\''")}'`;
  const xmlEscape = (s) =>
    s.replace(/[&<>'"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;" })[c]);

  function deviceFor(type) {
    if (type === "iso") return { device: "cdrom", format: "raw" };
    if (type === "vfd") return { device: "floppy", format: "raw" };
    if (type === "qcow2") return { device: "disk", format: "qcow2" };
    return { device: "disk", format: "raw" };
  }

  function showAttach(title, path, type) {
    const url = new URL(path, ROOT);
    const { device, format } = deviceFor(type);
    const file = url.href.replaceAll(",", ",,"); // qemu's option syntax doubles commas
    let qemu;
    if (device === "cdrom") {
      qemu = `-drive ${shellQuote(`if=none,id=cd0,media=cdrom,readonly=on,format=raw,file=${file}`)} -device ide-cd,drive=cd0`;
    } else if (device === "floppy") {
      qemu = `-drive ${shellQuote(`if=floppy,readonly=on,format=raw,file=${file}`)}`;
    } else {
      qemu = `-drive ${shellQuote(`if=virtio,readonly=on,format=${format},file=${file}`)}`;
    }
    const https = url.protocol === "https:";
    const port = url.port || (https ? "443" : "80");
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const target = {
      cdrom: "<target dev='sda' bus='sata'/>",
      floppy: "<target dev='fda' bus='fdc'/>",
      disk: "<target dev='vdb' bus='virtio'/>",
    }[device];
    const libvirt = [
      `<disk type='network' device='${device}'>`,
      `  <driver name='qemu' type='${format}'/>`,
      `  <source protocol='${https ? "https" : "http"}' name='${xmlEscape(url.pathname)}'>`,
      `    <host name='${xmlEscape(host)}' port='${port}'/>`,
      "    <readahead size='1048576'/>",
      "    <timeout seconds='30'/>",
      "  </source>",
      `  ${target}`,
      "  <readonly/>",
      "</disk>",
    ].join("\n");
    $("attach-title").textContent = title;
    $("attach-url").value = url.href;
    $("attach-qemu").value = qemu;
    $("attach-libvirt").value = libvirt;
    $("attach").hidden = false;
    $("attach").scrollIntoView({ block: "nearest" });
  }

  async function copyField(id) {
    const field = $(id);
    try {
      // The Clipboard API needs a secure context (https or loopback); elsewhere, select.
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(field.value);
      } else {
        field.select();
        document.execCommand("copy");
      }
      showMessage("Copied.", "info");
    } catch {
      field.select();
      showMessage("Press Ctrl+C to copy the selected text.", "info");
    }
  }

  // -- origins -----------------------------------------------------------------------------

  // One entry per open directory: {origin, segments, list (the <ul>), files: Map path -> row}.
  const openDirs = new Map();
  let originsLoaded = false;

  function selectedTypes() {
    const boxes = [...document.querySelectorAll("#type-filter input")];
    const all = boxes.find((b) => b.value === "all");
    if (all.checked) return null;
    const chosen = boxes.filter((b) => b.checked && b.value !== "all").map((b) => b.value);
    return chosen.length ? chosen : null;
  }

  function onFilterChange(event) {
    const boxes = [...document.querySelectorAll("#type-filter input")];
    const all = boxes.find((b) => b.value === "all");
    if (event.target === all) {
      if (all.checked) for (const b of boxes) if (b !== all) b.checked = false;
    } else {
      all.checked = !boxes.some((b) => b !== all && b.checked);
    }
    // Listing an origin's root again re-opens the directories that were open below it.
    for (const dir of [...openDirs.values()]) if (!dir.segments.length) loadDir(dir);
  }

  function dirKey(origin, segments) {
    return JSON.stringify([origin, ...segments]);
  }

  function dirNode(origin, segments, label, extra) {
    const list = el("ul", { class: "tree", hidden: true });
    const toggle = el("button", { type: "button", class: "toggle", "aria-expanded": "false", text: "▸" });
    const node = el(
      "li",
      { class: segments.length ? "dir" : "dir origin", dataset: { origin, path: segments.join("/") } },
      toggle,
      el("span", { class: "dirname", text: label }),
      extra || null,
      list,
    );
    const key = dirKey(origin, segments);
    const open = () => {
      const dir = { origin, segments, list, files: new Map() };
      openDirs.set(key, dir);
      list.hidden = false;
      toggle.textContent = "▾";
      toggle.setAttribute("aria-expanded", "true");
      loadDir(dir);
    };
    toggle.addEventListener("click", () => {
      if (openDirs.get(key)?.list === list) {
        // Closing forgets the open directories below too.
        for (const [other, dir] of openDirs) {
          if (dir.origin === origin && segments.every((s, i) => dir.segments[i] === s)) {
            openDirs.delete(other);
          }
        }
        list.hidden = true;
        list.replaceChildren();
        toggle.textContent = "▸";
        toggle.setAttribute("aria-expanded", "false");
      } else {
        open();
      }
    });
    // A directory that was open before its parent was listed again (the type filter
    // changed) opens again.
    if (openDirs.has(key)) open();
    return node;
  }

  async function loadOrigins() {
    const origins = await request("GET", "api/origins");
    const tree = $("origins-tree");
    tree.replaceChildren();
    if (!origins.length) tree.append(el("li", { class: "muted", text: "No origins are configured." }));
    for (const origin of origins) {
      const about = el("span", { class: "muted", text: ` ${origin.kind} · ${origin.url}` });
      tree.append(dirNode(origin.name, [], origin.name, about));
    }
    originsLoaded = true;
  }

  async function loadDir(dir) {
    const types = selectedTypes();
    let path = `origins/${encodeURIComponent(dir.origin)}/`;
    if (dir.segments.length) path += `${encodePath(dir.segments)}/`;
    if (types) path += `?type=${types.join(",")}`;
    dir.list.replaceChildren(el("li", { class: "muted", text: "loading…" }));
    let entries;
    try {
      entries = await request("GET", path);
    } catch (err) {
      dir.list.replaceChildren(el("li", { class: "error", text: `${err.message}` }));
      return;
    }
    if (openDirs.get(dirKey(dir.origin, dir.segments)) !== dir) return; // closed meanwhile
    dir.files = new Map();
    const items = entries.map((entry) =>
      entry.type === "dir"
        ? dirNode(dir.origin, [...dir.segments, entry.name], `${entry.name}/`)
        : fileNode(dir, entry),
    );
    if (!items.length) items.push(el("li", { class: "muted", text: "(nothing of these types)" }));
    dir.list.replaceChildren(...items);
    try {
      await loadCached(dir.origin, [...dir.files.keys()]);
    } catch (err) {
      showError(err);
    }
  }

  function fileNode(dir, entry) {
    const segments = [...dir.segments, entry.name];
    const path = segments.join("/");
    const servicePath = `origins/${encodeURIComponent(dir.origin)}/${encodePath(segments)}`;
    const cached = el("span", { class: "cached-slot muted", text: "not cached yet" });
    const row = el(
      "li",
      { class: "file", dataset: { name: entry.name, size: entry.size ?? "", type: entry.type } },
      el("span", { class: "name", text: entry.name }),
      el("span", { class: "type", text: entry.type || "–" }),
      el("span", { class: "size", title: entry.size === null ? "" : `${entry.size} bytes`, text: formatBytes(entry.size) }),
      cached,
      el("button", {
        type: "button",
        class: "attach",
        text: "Attach",
        onclick: () => showAttach(`${dir.origin}/${path}`, servicePath, entry.type),
      }),
      actionButton("Prewarm", () => startPrewarm({ path: `/${servicePath}` }, `${dir.origin}/${path}`), "prewarm"),
    );
    dir.files.set(path, cached);
    return row;
  }

  // What is cached of `paths` under `origin`, in batches that keep each URL short.
  async function loadCached(origin, paths) {
    const slots = new Map();
    for (const dir of openDirs.values()) {
      if (dir.origin !== origin) continue;
      for (const [path, slot] of dir.files) slots.set(path, slot);
    }
    let batch = [];
    let length = 0;
    const flush = async () => {
      if (!batch.length) return;
      const query = batch.map((p) => `path=${encodeURIComponent(p)}`).join("&");
      const found = await request("GET", `api/origins/${encodeURIComponent(origin)}/cached?${query}`);
      for (const item of found) {
        const slot = slots.get(item.path);
        if (slot) {
          slot.className = "cached-slot";
          slot.replaceChildren(cachedCell(item.cached_bytes, item.size));
        }
      }
      batch = [];
      length = 0;
    };
    for (const path of paths) {
      const cost = encodeURIComponent(path).length + 6;
      if (batch.length >= CACHED_BATCH || length + cost > CACHED_URL_MAX) await flush();
      batch.push(path);
      length += cost;
    }
    await flush();
  }

  async function refreshCached() {
    if (!originsLoaded) {
      await loadOrigins();
      return;
    }
    const byOrigin = new Map();
    for (const dir of openDirs.values()) {
      const paths = byOrigin.get(dir.origin) || [];
      paths.push(...dir.files.keys());
      byOrigin.set(dir.origin, paths);
    }
    for (const [origin, paths] of byOrigin) await loadCached(origin, paths);
  }

  // -- images ------------------------------------------------------------------------------

  const imageRows = new Map(); // name -> {row, key}

  function extensionOf(url) {
    const match = /\.([A-Za-z0-9]+)(?:[?#].*)?$/.exec(url);
    return match ? match[1].toLowerCase() : "";
  }

  function imageRow(image) {
    const name = image.name;
    const enc = encodeURIComponent(name);
    const verified = image.verified === null ? "–" : image.verified ? "yes" : "MISMATCH";
    const lastAccess = image.last_access ? new Date(image.last_access).toLocaleString() : "–";
    const remove = actionButton("Remove", (event) => {
      const button = event.currentTarget;
      // Two clicks rather than a confirm() dialog: removing forgets a run-time image.
      if (button.dataset.armed !== "yes") {
        button.dataset.armed = "yes";
        button.textContent = "Really remove?";
        setTimeout(() => {
          button.dataset.armed = "";
          button.textContent = "Remove";
        }, 4000);
        return;
      }
      mutate(() => request("DELETE", `api/images/${enc}`), () => `Removed image ${name}.`);
    }, "remove");
    return el(
      "tr",
      { dataset: { name } },
      el("td", { class: "name", text: name, title: image.url }),
      el("td", { class: "size", text: formatBytes(image.size) }),
      el("td", {}, cachedCell(image.cached_bytes, image.size)),
      el("td", { class: "pinned", text: image.pinned ? "yes" : "no" }),
      el("td", { class: "verified", text: verified }),
      el("td", { class: "last-access", text: lastAccess }),
      el(
        "td",
        { class: "actions" },
        actionButton("Prewarm", () => startPrewarm({ image: name }, name), "prewarm"),
        actionButton(
          "Evict",
          () => mutate(() => request("DELETE", `api/images/${enc}/cache`), (r) => `Evicted ${r.evicted_chunks} chunks of ${name}.`),
          "evict",
        ),
        image.pinned
          ? actionButton("Unpin", () => mutate(() => request("DELETE", `api/images/${enc}/pin`), () => `Unpinned ${name}.`), "unpin")
          : actionButton("Pin", () => mutate(() => request("PUT", `api/images/${enc}/pin`), () => `Pinned ${name}.`), "pin"),
        actionButton(
          "Verify",
          () =>
            mutate(
              () => request("POST", `api/images/${enc}/verify`),
              (r) =>
                `Verified ${name}: ${r.chunks_ok} chunks good, ${r.chunks_dropped} dropped; whole image ` +
                (r.verified === null ? "has no expected sha256 or is not complete." : r.verified ? "matches its sha256." : "does NOT match its sha256."),
            ),
          "verify",
        ),
        el("button", {
          type: "button",
          class: "attach",
          text: "Attach",
          onclick: () => showAttach(name, `images/${enc}`, extensionOf(image.url)),
        }),
        remove,
      ),
    );
  }

  async function loadImages() {
    const images = await request("GET", "api/images");
    const body = $("images-table").tBodies[0];
    const seen = new Set();
    const canMutate = token() !== "";
    images.forEach((image, index) => {
      seen.add(image.name);
      // Rows are rebuilt only when their data changed, so buttons stay put between polls.
      const key = JSON.stringify([image, canMutate]);
      let entry = imageRows.get(image.name);
      if (!entry || entry.key !== key) {
        const row = imageRow(image);
        if (entry) entry.row.replaceWith(row);
        entry = { row, key };
        imageRows.set(image.name, entry);
      }
      if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
    });
    for (const [name, entry] of imageRows) {
      if (!seen.has(name)) {
        entry.row.remove();
        imageRows.delete(name);
      }
    }
  }

  async function register(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const name = form.elements.name.value.trim();
    const body = { url: form.elements.url.value.trim(), pin: form.elements.pin.checked };
    const sha256 = form.elements.sha256.value.trim();
    if (sha256) body.sha256 = sha256;
    await mutate(
      () => request("PUT", `api/images/${encodeURIComponent(name)}`, body),
      (image) => `Registered ${image.name}.`,
    );
  }

  // -- prewarm jobs ------------------------------------------------------------------------

  const jobRows = new Map(); // id -> {row, key}

  function jobRow(job) {
    const target = job.target.image !== undefined ? `image ${job.target.image}` : job.target.path || "?";
    const pct = job.state === "done" ? 100 : percent(job.bytes_done, job.bytes_total);
    const progress = el("progress", { max: 100, value: pct ?? 0 });
    const active = job.state === "queued" || job.state === "running";
    return el(
      "tr",
      { dataset: { id: job.id, state: job.state } },
      el("td", { class: "id", text: job.id }),
      el("td", { class: "target", text: target + (job.range ? ` (${job.range})` : "") }),
      el("td", { class: "state", text: job.state }),
      el("td", { class: "progress" }, progress, el("span", { class: "pct", text: pct === null ? "–" : `${pct} %` })),
      el("td", { class: "bytes", text: `${formatBytes(job.bytes_done)} / ${formatBytes(job.bytes_total)}` }),
      el("td", { class: "rate", text: job.rate ? `${formatBytes(job.rate)}/s` : "–" }),
      el("td", { class: "eta", text: formatSeconds(job.eta) }),
      el("td", { class: "error", text: job.error || "" }),
      el(
        "td",
        {},
        active
          ? actionButton("Cancel", () => mutate(() => request("DELETE", `api/prewarm/${encodeURIComponent(job.id)}`), () => `Cancelled job ${job.id}.`), "cancel")
          : null,
      ),
    );
  }

  async function loadJobs() {
    const jobs = (await request("GET", "api/prewarm")).reverse(); // newest first
    const body = $("jobs-table").tBodies[0];
    const canMutate = token() !== "";
    const seen = new Set();
    jobs.forEach((job, index) => {
      seen.add(job.id);
      const key = JSON.stringify([job, canMutate]);
      let entry = jobRows.get(job.id);
      if (!entry || entry.key !== key) {
        const row = jobRow(job);
        if (entry) entry.row.replaceWith(row);
        entry = { row, key };
        jobRows.set(job.id, entry);
      }
      if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
    });
    for (const [id, entry] of jobRows) {
      if (!seen.has(id)) {
        entry.row.remove();
        jobRows.delete(id);
      }
    }
    $("jobs-empty").hidden = jobs.length > 0;
  }

  // -- views and the refresh loop ----------------------------------------------------------

  function currentView() {
    const name = location.hash.slice(1);
    return VIEWS.includes(name) ? name : "origins";
  }

  function showView() {
    const view = currentView();
    for (const name of VIEWS) {
      $(`view-${name}`).hidden = name !== view;
      const link = $(`nav-${name}`);
      if (name === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    refresh();
  }

  // One refresh at a time; a request for another while one runs is folded into one more.
  let timer = 0;
  let busy = false;
  let again = false;

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    clearTimeout(timer);
    const view = currentView();
    try {
      if (!document.hidden) {
        if (view === "images") await loadImages();
        else if (view === "jobs") await loadJobs();
        else await refreshCached();
      }
    } catch (err) {
      showError(err);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      refresh();
      return;
    }
    // Jobs and images move by themselves; origin listings cost the origin, so only the
    // cached amounts of open directories are polled, and less often.
    timer = setTimeout(refresh, view === "origins" ? 5000 : 1000);
  }

  function init() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      updateMode();
      refresh();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      updateMode();
      refresh();
    });
    $("message-close").addEventListener("click", () => {
      $("message").hidden = true;
    });
    $("attach-close").addEventListener("click", () => {
      $("attach").hidden = true;
    });
    for (const button of document.querySelectorAll("button.copy")) {
      button.addEventListener("click", () => copyField(button.dataset.target));
    }
    for (const box of document.querySelectorAll("#type-filter input")) {
      box.addEventListener("change", onFilterChange);
    }
    $("register-form").addEventListener("submit", register);
    window.addEventListener("hashchange", showView);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    updateMode();
    showView();
  }

  init();
})();
