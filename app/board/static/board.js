/*
 * The live board page: shows every board the View Board Service streams on
 * /events, marks the rows whose score changed, slides rows to their new rank
 * (FLIP, skipped under prefers-reduced-motion) and says whether the stream is
 * connected. Plain JavaScript, no build step.
 *
 * Connection states (the status line, and <html data-state> for CSS):
 *   connecting    the page has not reached the stream yet
 *   live          the stream is open
 *   reconnecting  the stream broke or ended; the browser reopens it by itself
 *                 after the server's `retry:` interval
 *   offline       the browser is offline, or gave up on the stream (it does on
 *                 any non-200 answer, say a proxy's 502), or connecting has
 *                 failed for OFFLINE_AFTER_MS. The page keeps trying on its own.
 * The server's `: ping` heartbeats are invisible to EventSource, so a stream
 * that died without the browser noticing is found another way: after
 * QUIET_CHECK_MS without a frame the page asks /leaderboard whether the board
 * moved on (a 304 when it has not), and reopens the stream if it did.
 *
 * A board with resets (daily, weekly, ...) names its period and counts down
 * to its end; at the reset the stream brings the new, empty period by itself.
 *
 * With ?recent=N the page also lists the board's N latest changes from its
 * change log (/changes): "alice +250" on a board that adds, "alice 61,234"
 * on one that keeps the best or the latest. The browser resumes that stream
 * with Last-Event-ID by itself.
 */

const OFFLINE_AFTER_MS = 30_000;
const QUIET_CHECK_MS = 60_000;
const WATCH_INTERVAL_MS = 5_000;
const REOPEN_FIRST_MS = 2_000; // after the browser gave up; doubles up to REOPEN_MAX_MS
const REOPEN_MAX_MS = 60_000;
const HIGHLIGHT_MS = 3_000; // as long as the fade in board.css
const MOVE_MS = 450;
const ANNOUNCED_CHANGES = 3; // a screen reader hears the first few changes of a frame, not a list

const LABELS = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", offline: "Offline" };

const root = document.documentElement;
const table = document.getElementById("board");
const tbody = table.tBodies[0];
const note = document.getElementById("note");
const stateLabel = document.getElementById("state");
const updated = document.getElementById("updated");
const updatedAt = document.getElementById("updated-at");
const changes = document.getElementById("changes");

const rowsShown = Number(table.dataset.rows) || Infinity;
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");
const numbers = new Intl.NumberFormat();

const periodLine = document.getElementById("period");
const periodId = document.getElementById("period-id");
const periodLeft = document.getElementById("period-left");
let periodEnds = null; // when the period shown ends (a Date), on a board with resets
let countdownTimer = 0;

const recent = document.getElementById("recent");
const knownNames = new Map(); // display names seen in frames, for the list of changes

const rowsByUser = new Map(); // a user keeps their <tr>, so it can slide to its new place
const highlightTimers = new WeakMap();
let version = 0; // the newest board shown: an older one is never shown after it
let stream = null;
let lastHeard = Date.now(); // the last sign that the stream is alive
let troubleSince = Date.now(); // when the stream stopped being live (or the page loaded)
let reopenDelay = REOPEN_FIRST_MS;
let reopenTimer = 0;

function setState(state) {
  if (state === "live") troubleSince = null;
  else troubleSince ??= Date.now();
  if (root.dataset.state === state) return;
  root.dataset.state = state;
  stateLabel.textContent = LABELS[state];
}

function troubleState() {
  const tooLong = troubleSince !== null && Date.now() - troubleSince > OFFLINE_AFTER_MS;
  return !navigator.onLine || tooLong ? "offline" : "reconnecting";
}

function connect() {
  clearTimeout(reopenTimer);
  stream?.close();
  const source = new EventSource(table.dataset.eventsUrl);
  stream = source;
  source.addEventListener("open", () => {
    reopenDelay = REOPEN_FIRST_MS;
    lastHeard = Date.now();
    setState("live");
  });
  source.addEventListener("message", (event) => {
    lastHeard = Date.now();
    setState("live");
    showBoard(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) reopenLater();
    else setState(troubleState());
  });
}

function reopenLater() {
  setState("offline");
  // Jittered, so a wall of dashboards does not come back in the same instant.
  reopenTimer = setTimeout(connect, reopenDelay * (0.5 + Math.random()));
  reopenDelay = Math.min(reopenDelay * 2, REOPEN_MAX_MS);
}

async function checkQuietStream() {
  lastHeard = Date.now(); // one check per quiet period
  try {
    const response = await fetch(table.dataset.snapshotUrl, { headers: { "If-None-Match": `"${version}"` } });
    if (response.ok && (await response.json()).version > version) connect(); // the stream missed a board
  } catch {
    setState("reconnecting"); // the server is out of reach, so the stream is too
    connect();
  }
}

function watchConnection() {
  const state = root.dataset.state;
  if (state === "live") {
    if (Date.now() - lastHeard > QUIET_CHECK_MS) checkQuietStream();
  } else if (state !== "offline" && troubleState() === "offline") {
    setState("offline");
  }
}

function showBoard(board) {
  if (board.version <= version) return; // after a reconnect, a worker one message behind
  const isFirst = version === 0;
  version = board.version;
  const entries = board.top.slice(0, rowsShown);
  const before = new Map();
  for (const [user, row] of rowsByUser) {
    before.set(user, { top: row.getBoundingClientRect().top, rank: row.dataset.rank, score: row.dataset.score });
  }

  const names = board.names ?? {};
  for (const [user, name] of Object.entries(names)) knownNames.set(user, name);
  const announcements = [];
  const shown = new Set();
  entries.forEach(([user, score], index) => {
    const rank = String(index + 1);
    const row = rowsByUser.get(user) ?? makeRow(user);
    rowsByUser.set(user, row);
    shown.add(user);
    fillRow(row, rank, score, names[user] ?? user);
    tbody.append(row); // appended in rank order: the rows end up sorted
    const old = before.get(user);
    if (isFirst) return;
    const marks = [];
    if (old?.score !== score) {
      marks.push("changed");
      announcements.push(`${names[user] ?? user} ${formatScore(score)}, rank ${rank}`);
    }
    if (old && old.rank !== rank) marks.push(Number(rank) < Number(old.rank) ? "moved-up" : "moved-down");
    if (marks.length) highlight(row, marks);
  });
  for (const [user, row] of rowsByUser) {
    if (!shown.has(user)) {
      row.remove();
      rowsByUser.delete(user);
    }
  }
  if (!isFirst && !reducedMotion.matches) slideIntoPlace(before);

  note.textContent = board.period ? "No scores yet in this period." : "No scores yet.";
  note.hidden = entries.length > 0;
  showUpdatedAt(board.ts);
  showPeriod(board.period, board.periodEnds);
  if (announcements.length) changes.textContent = announcements.slice(0, ANNOUNCED_CHANGES).join("; ");
}

function makeRow(user) {
  const row = document.createElement("tr");
  row.dataset.user = user;
  const rank = row.insertCell();
  rank.className = "rank";
  const name = document.createElement("th"); // the user names the row
  name.scope = "row";
  name.className = "user";
  name.title = user; // the user's id, on hover: a display name is anyone's to choose
  row.append(name);
  row.insertCell().className = "score";
  return row;
}

function fillRow(row, rank, score, shownAs) {
  row.dataset.rank = rank;
  row.dataset.score = score;
  row.cells[0].textContent = rank;
  row.cells[1].textContent = shownAs; // text, never markup
  row.cells[2].textContent = formatScore(score);
}

function formatScore(score) {
  // Scores arrive as strings of up to 2^53 - 1: BigInt formats them exactly.
  return /^\d+$/.test(score) ? numbers.format(BigInt(score)) : score;
}

function highlight(row, marks) {
  clearTimeout(highlightTimers.get(row));
  row.classList.remove("changed", "moved-up", "moved-down");
  void row.offsetWidth; // restarts the fade when the same row changes again
  row.classList.add(...marks);
  highlightTimers.set(row, setTimeout(() => row.classList.remove(...marks), HIGHLIGHT_MS));
}

// FLIP: each row starts where it was drawn before the update and slides to its new place.
function slideIntoPlace(before) {
  for (const row of rowsByUser.values()) row.getAnimations().forEach((animation) => animation.cancel());
  for (const [user, row] of rowsByUser) {
    const old = before.get(user);
    const options = { duration: MOVE_MS, easing: "ease-out" };
    if (!old) {
      row.animate([{ opacity: 0 }, { opacity: 1 }], options);
      continue;
    }
    const offset = old.top - row.getBoundingClientRect().top;
    if (Math.abs(offset) >= 1) row.animate([{ transform: `translateY(${offset}px)` }, { transform: "none" }], options);
  }
}

function showPeriod(period, ends) {
  periodLine.hidden = !period;
  if (!period) return;
  periodId.textContent = period;
  periodEnds = new Date(ends);
  periodLeft.dateTime = periodEnds.toISOString();
  periodLeft.title = periodEnds.toLocaleString();
  showTimeLeft();
  if (!countdownTimer) countdownTimer = setInterval(showTimeLeft, 1000);
}

function showTimeLeft() {
  const seconds = Math.max(0, Math.ceil((periodEnds - Date.now()) / 1000));
  const days = Math.floor(seconds / 86_400);
  const clock = [Math.floor(seconds / 3600) % 24, Math.floor(seconds / 60) % 60, seconds % 60];
  const [hours, minutes, secs] = clock.map((part) => String(part).padStart(2, "0"));
  periodLeft.textContent = days ? `${days}d ${hours}:${minutes}:${secs}` : `${hours}:${minutes}:${secs}`;
}

function showUpdatedAt(ts) {
  if (!Number.isFinite(ts)) return;
  const when = new Date(ts * 1000);
  const today = when.toDateString() === new Date().toDateString();
  updatedAt.dateTime = when.toISOString();
  updatedAt.textContent = today ? when.toLocaleTimeString() : when.toLocaleString();
  updated.hidden = false;
}

function followChanges() {
  const size = Number(recent.dataset.size) || 5;
  const adds = recent.dataset.operator === "incr";
  const source = new EventSource(recent.dataset.changesUrl);
  source.addEventListener("open", () => (recent.dataset.state = "live"));
  source.addEventListener("error", () => (recent.dataset.state = "reconnecting"));
  source.addEventListener("message", (event) => {
    const change = JSON.parse(event.data);
    if (change.type !== "score") return; // a gap: older entries are gone, the newest still come
    const item = document.createElement("li");
    const who = document.createElement("span");
    who.className = "user";
    who.textContent = knownNames.get(change.userId) ?? change.userId; // text, never markup
    who.title = change.userId;
    const what = document.createElement("span");
    what.className = "score";
    const added = change.previous === null ? change.score : change.score - change.previous;
    what.textContent = adds ? `+${numbers.format(added)}` : numbers.format(change.score);
    item.append(who, " ", what);
    recent.prepend(item);
    while (recent.children.length > size) recent.lastElementChild.remove();
  });
}

addEventListener("offline", () => setState("offline"));
addEventListener("online", () => {
  setState("reconnecting");
  connect(); // a fresh stream at once, rather than after the browser's retry interval
});
setInterval(watchConnection, WATCH_INTERVAL_MS);
connect();
if (recent) followChanges();
