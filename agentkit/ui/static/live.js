// Live pages: poll /api/version (it changes whenever any process commits to the store) and,
// when it changes, fetch this page again and swap its <main>, keeping open <details> and the
// scroll position. Plain JavaScript, no network beyond this server.
(function () {
  "use strict";
  const PERIOD_MS = 2000;
  const badge = document.getElementById("live");
  let seen = null;
  let busy = false;

  async function refresh() {
    const response = await fetch(location.href, { headers: { "X-Live": "1" } });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("main");
    const main = document.getElementById("main");
    if (!fresh || !main) return;
    const open = new Set([...main.querySelectorAll("details[open][id]")].map((d) => d.id));
    const closed = new Set([...main.querySelectorAll("details[id]:not([open])")].map((d) => d.id));
    main.replaceChildren(...fresh.childNodes);
    for (const d of main.querySelectorAll("details[id]")) {
      if (open.has(d.id)) d.open = true;
      else if (closed.has(d.id)) d.open = false;
    }
    if (badge) {
      badge.classList.add("flash");
      setTimeout(() => badge.classList.remove("flash"), 600);
    }
  }

  async function poll() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch("/api/version", { cache: "no-store" });
      const { version } = await response.json();
      if (seen !== null && version !== seen) await refresh();
      seen = version;
      if (badge) badge.classList.remove("off");
    } catch (err) {
      if (badge) badge.classList.add("off");
    } finally {
      busy = false;
    }
  }

  poll();
  setInterval(poll, PERIOD_MS);
})();
