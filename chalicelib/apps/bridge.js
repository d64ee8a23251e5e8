  // MCP Apps: JSON-RPC 2.0 with the host over postMessage, shared by the views (the server writes this file
  // into each view's script in place of its bridge marker: chalicelib/apps/__init__.py).
  const textOf = (result) => (result.content || []).filter((item) => item.type === "text").map((item) => item.text).join("\n");
  function dataOf(result) {
    if (result.structuredContent) return result.structuredContent;
    try { return JSON.parse(textOf(result)); } catch { return null; }
  }
  // The host's theme and style variables, onto the document; the host's locale (canonical), if it gives one.
  function applyHostContext(context) {
    const root = document.documentElement;
    if (context.theme === "light" || context.theme === "dark") {
      root.dataset.theme = context.theme;
      root.style.colorScheme = context.theme;
    }
    for (const [name, value] of Object.entries((context.styles || {}).variables || {})) {
      if (value && name.startsWith("--")) root.style.setProperty(name, value);
    }
    if (!context.locale) return undefined;
    try { return Intl.getCanonicalLocales(context.locale.replace(/_/g, "-"))[0]; } catch { return undefined; }
  }
  // Start the view with its host: answer the host's requests, hand its notifications to `handlers`, report the
  // view's size. `started(init)` runs once the host initialized the view, `failed(error)` if it did not.
  // Answers request(method, params), a promise of the host's result.
  function connectHost(name, handlers, started, failed) {
    const host = window.parent, pending = new Map();
    let nextId = 1;
    const post = (message) => host.postMessage({ jsonrpc: "2.0", ...message }, "*");
    const notify = (method, params = {}) => post({ method, params });
    const request = (method, params = {}) => new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      post({ id, method, params });
    });
    window.addEventListener("message", (event) => {
      if (event.source !== host) return;
      const message = event.data;
      if (!message || message.jsonrpc !== "2.0") return;
      if (message.method === undefined) {
        const waiting = pending.get(message.id);
        if (!waiting) return;
        pending.delete(message.id);
        if (message.error) waiting.reject(Object.assign(new Error(message.error.message), { code: message.error.code }));
        else waiting.resolve(message.result);
      } else if (message.id !== undefined) {
        if (message.method === "ui/resource-teardown" || message.method === "ping") post({ id: message.id, result: {} });
        else post({ id: message.id, error: { code: -32601, message: "Method not found" } });
      } else {
        const handle = handlers[message.method];
        if (handle) handle(message.params || {});
      }
    });
    let reported = "";
    const reportSize = () => {
      const height = Math.ceil(document.documentElement.getBoundingClientRect().height), width = Math.ceil(window.innerWidth);
      if (`${width}x${height}` === reported) return;
      reported = `${width}x${height}`;
      notify("ui/notifications/size-changed", { width, height });
    };
    request("ui/initialize", { protocolVersion: "2026-01-26", appInfo: { name, version: "1" },
                               appCapabilities: { availableDisplayModes: ["inline"] } })
      .then((init) => {
        started(init);
        notify("ui/notifications/initialized");
        new ResizeObserver(reportSize).observe(document.body);
        reportSize();
      })
      .catch(failed);
    return request;
  }
