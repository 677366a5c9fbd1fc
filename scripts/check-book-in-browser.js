// The browser half of scripts/check-book-in-browser (run that, not this):
// open every chapter of a built book in headless Chromium and measure each
// table and image against the text column.
//
// It drives Chromium through the DevTools protocol over a pipe
// (--remote-debugging-pipe: JSON messages ended by a NUL byte, Chromium
// reading descriptor 3 and writing descriptor 4), so it needs Node.js alone:
// no driver package, no npm.
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const USAGE = "usage: check-book-in-browser BOOK_HTML_DIR [--width PX] [--screenshots DIR]";

function parseArgs(argv) {
  const args = { dir: null, width: 1280, screenshots: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--width") args.width = Number(argv[++i]);
    else if (a === "--screenshots") args.screenshots = argv[++i];
    else if (!a.startsWith("-") && args.dir === null) args.dir = a;
    else usage(`unexpected argument ${JSON.stringify(a)}`);
  }
  if (args.dir === null) usage("no BOOK_HTML_DIR");
  if (!Number.isInteger(args.width) || args.width < 200) usage("--width needs a number of pixels");
  if (args.screenshots === undefined) usage("--screenshots needs a folder");
  return args;
}

function usage(msg) {
  console.error(`error: ${msg}\n${USAGE}`);
  process.exit(2);
}

// The chapters: every page mdBook rendered, except its own extra pages.
function chapters(dir) {
  const found = [];
  const walk = (d) => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) {
        if (!["css", "fonts", "FontAwesome", "fonts", "theme"].includes(entry.name)) walk(p);
      } else if (entry.name.endsWith(".html") && !["print.html", "404.html", "toc.html"].includes(entry.name)) {
        found.push(p);
      }
    }
  };
  walk(dir);
  return found.sort();
}

// Runs in the page: the text column, then every table and image in it.
function measure() {
  const main = document.querySelector(".content main") || document.querySelector("main");
  if (!main) return { column: null, problems: ["no <main> element"], notes: [] };
  const style = getComputedStyle(main);
  const box = main.getBoundingClientRect();
  const column = box.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const problems = [];
  const notes = [];
  const describe = (el, i, kind) => {
    if (kind === "table") {
      const head = [...el.querySelectorAll("th")].slice(0, 3).map((th) => th.textContent.trim());
      return `table ${i + 1} (${head.join(" | ") || "no header"})`;
    }
    return `image ${i + 1} (${el.getAttribute("src")})`;
  };
  // Allow a pixel for rounding.
  const slack = 1;
  main.querySelectorAll("table").forEach((table, i) => {
    const width = table.getBoundingClientRect().width;
    if (width > column + slack) {
      problems.push(`${describe(table, i, "table")} is ${Math.round(width)} px wide, the text column ${Math.round(column)} px`);
    }
  });
  const unlinked = new Set();
  const broken = new Set();
  main.querySelectorAll("img").forEach((img, i) => {
    if (!img.complete || img.naturalWidth === 0) {
      // Once per picture: mdBook renders each one twice (see below).
      if (!broken.has(img.src)) problems.push(`${describe(img, i, "img")} does not load`);
      broken.add(img.src);
      return;
    }
    // mdBook renders a second copy for its zoom overlay, hidden until tapped.
    if (img.getClientRects().length === 0) return;
    const width = img.getBoundingClientRect().width;
    if (width > column + slack) {
      problems.push(`${describe(img, i, "img")} is ${Math.round(width)} px wide, the text column ${Math.round(column)} px`);
    }
    const link = img.closest("a");
    if ((!link || link.href !== img.src) && !unlinked.has(img.src)) {
      unlinked.add(img.src);
      notes.push(`${describe(img, i, "img")} is not a link to itself (a phone cannot open it full size)`);
    }
  });
  return { column, problems, notes };
}

// One Chromium, spoken to over its DevTools pipe. `send` resolves with a
// command's result; `once` waits for an event of the page's session.
class Browser {
  constructor(executable, profile) {
    this.child = spawn(
      executable,
      [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // A phone's scrollbars overlay the page: the page gets the whole width.
        "--hide-scrollbars",
        "--remote-debugging-pipe",
        `--user-data-dir=${profile}`,
        "about:blank",
      ],
      { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] },
    );
    this.nextId = 1;
    this.pending = new Map();
    this.waiters = [];
    this.stderr = "";
    this.child.stdio[2].on("data", (d) => (this.stderr = (this.stderr + d).slice(-4000)));
    // Bytes, not text, until a whole message is in: a chunk may end inside
    // a UTF-8 sequence.
    let buffered = Buffer.alloc(0);
    this.child.stdio[4].on("data", (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      let end;
      while ((end = buffered.indexOf(0)) >= 0) {
        this.dispatch(JSON.parse(buffered.subarray(0, end).toString("utf8")));
        buffered = buffered.subarray(end + 1);
      }
    });
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
    this.exited.then(() => {
      const err = new Error(`chromium exited; its last words:\n${this.stderr}`);
      for (const { reject } of this.pending.values()) reject(err);
      for (const w of this.waiters) w.reject(err);
    });
  }

  dispatch(msg) {
    if (msg.id !== undefined) {
      const call = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.error) call.reject(new Error(`${call.method}: ${msg.error.message}`));
      else call.resolve(msg.result);
      return;
    }
    if (msg.method === "Fetch.requestPaused") {
      // Nothing but the book's own files: a page that reaches out is a fault
      // of its own, and the network here is closed anyway.
      this.send("Fetch.failRequest", { requestId: msg.params.requestId, errorReason: "BlockedByClient" }, msg.sessionId);
      return;
    }
    this.waiters = this.waiters.filter((w) => {
      if (w.method !== msg.method) return true;
      w.resolve(msg.params);
      return false;
    });
  }

  send(method, params = {}, sessionId = this.session) {
    const id = this.nextId++;
    const message = { id, method, params };
    if (sessionId) message.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { method, resolve, reject });
      this.child.stdio[3].write(JSON.stringify(message) + "\0");
    });
  }

  once(method, ms) {
    return new Promise((resolve, reject) => {
      const waiter = { method, resolve, reject };
      this.waiters.push(waiter);
      setTimeout(() => reject(new Error(`no ${method} within ${ms / 1000} s`)), ms).unref();
    });
  }

  // A page of its own, `width` CSS pixels wide, with remote requests refused.
  async open(width) {
    const { targetId } = await this.send("Target.createTarget", { url: "about:blank" }, null);
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true }, null);
    this.session = sessionId;
    await this.send("Page.enable");
    await this.send("Emulation.setDeviceMetricsOverride", { width, height: 900, deviceScaleFactor: 1, mobile: false });
    await this.send("Fetch.enable", { patterns: [{ urlPattern: "http*" }, { urlPattern: "ws*" }] });
  }

  async goto(url) {
    const loaded = this.once("Page.loadEventFired", 30000);
    const { errorText } = await this.send("Page.navigate", { url });
    if (errorText) throw new Error(`cannot open ${url}: ${errorText}`);
    await loaded;
  }

  async evaluate(fn) {
    const { result, exceptionDetails } = await this.send("Runtime.evaluate", {
      expression: `(${fn.toString()})()`,
      returnByValue: true,
    });
    if (exceptionDetails) throw new Error(`in the page: ${exceptionDetails.text}`);
    return result.value;
  }

  async screenshot(file) {
    const { cssContentSize } = await this.send("Page.getLayoutMetrics");
    const { data } = await this.send("Page.captureScreenshot", {
      format: "png",
      captureBeyondViewport: true,
      clip: { x: 0, y: 0, width: cssContentSize.width, height: cssContentSize.height, scale: 1 },
    });
    fs.writeFileSync(file, Buffer.from(data, "base64"));
  }

  async close() {
    const closed = this.send("Browser.close", {}, null).catch(() => {});
    const timeout = new Promise((resolve) => setTimeout(resolve, 5000).unref());
    await Promise.race([closed.then(() => this.exited), timeout]);
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const pages = chapters(args.dir);
  if (pages.length === 0) {
    console.error(`error: no chapters (*.html) in ${args.dir}: build the book first (mdbook build book -d DIR)`);
    process.exit(1);
  }
  if (args.screenshots) fs.mkdirSync(args.screenshots, { recursive: true });
  // A new, empty profile every run; no network, no background services.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "book-check-"));
  const browser = new Browser(process.env.CHROMIUM || "/usr/bin/chromium", profile);
  let failures = 0;
  try {
    await browser.open(args.width);
    for (const file of pages) {
      const name = path.relative(args.dir, file);
      await browser.goto("file://" + path.resolve(file));
      const { column, problems, notes } = await browser.evaluate(measure);
      for (const p of problems) console.log(`${name}: ${p}`);
      for (const n of notes) console.log(`${name}: note: ${n}`);
      failures += problems.length;
      if (args.screenshots) {
        await browser.screenshot(path.join(args.screenshots, name.replace(/[\\/]/g, "_").replace(/\.html$/, `-${args.width}.png`)));
      }
      if (column !== null && problems.length === 0) console.log(`${name}: ok (text column ${Math.round(column)} px)`);
    }
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  if (failures > 0) {
    console.error(`error: ${failures} problem(s) at ${args.width} px in ${args.dir}`);
    process.exit(1);
  }
  console.log(`every chapter fits at ${args.width} px: ${pages.length} pages`);
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
