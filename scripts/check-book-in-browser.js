// The browser half of scripts/check-book-in-browser (run that, not this):
// open every chapter of a built book in headless Chromium and measure each
// table and image against the text column.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

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
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: args.width, height: 900 },
  });
  let failures = 0;
  try {
    const page = await context.newPage();
    // Nothing but the book's own files: a page that reaches out is a fault
    // of its own, and the network here is closed anyway.
    await page.route(/^(?!file:)/, (route) => route.abort());
    for (const file of pages) {
      const name = path.relative(args.dir, file);
      await page.goto("file://" + path.resolve(file), { waitUntil: "load", timeout: 30000 });
      const { column, problems, notes } = await page.evaluate(measure);
      for (const p of problems) console.log(`${name}: ${p}`);
      for (const n of notes) console.log(`${name}: note: ${n}`);
      failures += problems.length;
      if (args.screenshots) {
        const png = path.join(args.screenshots, name.replace(/[\\/]/g, "_").replace(/\.html$/, `-${args.width}.png`));
        await page.screenshot({ path: png, fullPage: true });
      }
      if (column !== null && problems.length === 0) console.log(`${name}: ok (text column ${Math.round(column)} px)`);
    }
  } finally {
    await context.close();
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
