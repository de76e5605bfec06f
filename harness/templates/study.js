// The rating page of a user-study pack. The pack's data is inlined as JSON (#pack-data) because a page
// opened from disk may not fetch files. A rater is chosen by ?rater=r1; answers live in this browser under
// the pack id and rater, and leave as a downloaded JSON/CSV file (or window.studyExport()).
// Saving: every change is written to IndexedDB and the page acknowledges it (the new places, the status line,
// the progress) only once the write has committed, so a reload right after an acknowledged change never loses
// it. localStorage alone is not enough: Chromium hands its writes to the browser process asynchronously, and a
// reload under load could read the old value. localStorage keeps a mirror for browsers without IndexedDB
// (e.g. Firefox on file://). While a save is pending the controls are disabled; body[data-saved] tells
// scripts (and the browser test) that everything shown is stored.
(function () {
  "use strict";

  const PACK = JSON.parse(document.getElementById("pack-data").textContent);
  const rater = new URLSearchParams(window.location.search).get("rater");
  const questions = PACK.raters[rater] || null;
  const storageKey = "user-study:" + PACK.pack_id + ":" + rater;
  let answers = {}; // question -> criterion -> option token -> place (1 = best)
  let current = 0;

  const $ = (id) => document.getElementById(id);
  const letter = (i) => String.fromCharCode(65 + i);
  const ordinal = (n) => n + (n % 10 === 1 && n !== 11 ? "st" : n % 10 === 2 && n !== 12 ? "nd" :
                              n % 10 === 3 && n !== 13 ? "rd" : "th");

  const DB_NAME = "user-study-answers", DB_STORE = "answers";
  let database = null; // an open IndexedDB, or null when the browser offers none (then localStorage only)
  let pending = Promise.resolve(); // saves run one after another, so the last change is the one stored

  function openDatabase() {
    return new Promise((resolve) => {
      try {
        const request = window.indexedDB.open(DB_NAME, 1);
        request.onupgradeneeded = () => request.result.createObjectStore(DB_STORE);
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => resolve(null);
        request.onblocked = () => resolve(null);
      } catch (error) {
        resolve(null);
      }
    });
  }

  function readStored() {
    let mirrored = null;
    try {
      mirrored = window.localStorage.getItem(storageKey);
    } catch (error) {
      mirrored = null; // storage unavailable (private mode): the answers still export at the end
    }
    if (!database) return Promise.resolve(mirrored);
    return new Promise((resolve) => {
      const request = database.transaction(DB_STORE, "readonly").objectStore(DB_STORE).get(storageKey);
      request.onsuccess = () => resolve(typeof request.result === "string" ? request.result : mirrored);
      request.onerror = () => resolve(mirrored);
    });
  }

  async function load() {
    database = await openDatabase();
    try {
      answers = JSON.parse(await readStored()) || {};
    } catch (error) {
      answers = {};
    }
  }

  function write(text) {
    try {
      window.localStorage.setItem(storageKey, text);
    } catch (error) {
      // Keep going: IndexedDB (or at worst the export) still holds everything.
    }
    if (!database) return Promise.resolve();
    return new Promise((resolve) => {
      const transaction = database.transaction(DB_STORE, "readwrite", { durability: "strict" });
      transaction.objectStore(DB_STORE).put(text, storageKey);
      transaction.oncomplete = () => resolve();
      transaction.onerror = () => resolve();
      transaction.onabort = () => resolve();
    });
  }

  function setBusy(busy) {
    document.body.dataset.saved = busy ? "no" : "yes";
    document.querySelectorAll("#question select, #question button").forEach((control) => {
      control.disabled = busy || (control.id === "previous" && current === 0);
    });
  }

  // Store the answers as they are now; `then` runs (the change is acknowledged) only after the write committed.
  function save(then) {
    const text = JSON.stringify(answers);
    setBusy(true);
    pending = pending.then(() => write(text)).then(() => {
      if (then) then();
      setBusy(false);
      refreshExport();
    });
    return pending;
  }

  function places(qid, criterion) {
    return ((answers[qid] || {})[criterion]) || {};
  }

  function isRanked(entry, criterion) {
    const given = places(entry.question, criterion);
    return entry.options.every((token) => Number.isInteger(given[token]));
  }

  function isComplete(entry) {
    return PACK.criteria.every((criterion) => isRanked(entry, criterion.id));
  }

  function setPlace(entry, criterion, token, place) {
    const byCriterion = (answers[entry.question] = answers[entry.question] || {});
    const given = (byCriterion[criterion] = byCriterion[criterion] || {});
    if (place === null) {
      delete given[token];
    } else {
      // A place belongs to one option: whoever held it gives it up.
      Object.keys(given).forEach((other) => { if (given[other] === place) delete given[other]; });
      given[token] = place;
    }
  }

  function element(tag, attributes, children) {
    const node = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([name, value]) => node.setAttribute(name, value));
    (children || []).forEach((child) => node.append(child));
    return node;
  }

  function figure(src, caption, alt) {
    return element("figure", {}, [element("img", { src: src, alt: alt }), element("figcaption", {}, [caption])]);
  }

  function showQuestion(index) {
    current = Math.max(0, Math.min(index, questions.length - 1));
    const entry = questions[current];
    const data = PACK.questions[entry.question];
    const section = $("question");
    section.replaceChildren();
    section.append(element("h2", {}, ["Question " + (current + 1) + " of " + questions.length]));
    section.append(element("div", { class: "references" }, [
      figure(data.source, "Source: the concept is inside the red outline", "source"),
      figure(data.target, "Target: the region to edit is outlined in red", "target"),
    ]));
    section.append(element("div", { class: "options" },
      entry.options.map((token, i) => figure(data.options[token], "Result " + letter(i), "result " + letter(i)))));

    const table = element("table", { class: "ranking" });
    table.append(element("tr", {}, [element("th", {}, ["Rank (1st = best)"])].concat(
      entry.options.map((_, i) => element("th", {}, ["Result " + letter(i)])))));
    PACK.criteria.forEach((criterion) => {
      const row = element("tr", { "data-criterion": criterion.id }, [
        element("th", { class: "criterion" }, [element("b", {}, [criterion.name]), criterion.question]),
      ]);
      entry.options.forEach((token, i) => {
        const select = element("select", {
          "data-criterion": criterion.id, "data-option": token,
          "aria-label": criterion.name + ", result " + letter(i),
        }, [element("option", { value: "" }, ["–"])]);
        entry.options.forEach((_, place) => {
          const label = ordinal(place + 1) + (place === 0 ? " (best)" : place === entry.options.length - 1 ? " (worst)" : "");
          select.append(element("option", { value: String(place + 1) }, [label]));
        });
        select.addEventListener("change", () => {
          setPlace(entry, criterion.id, token, select.value ? Number(select.value) : null);
          save(() => showQuestion(current));
        });
        row.append(element("td", {}, [select]));
      });
      table.append(row);
    });
    section.append(table);
    // Show the stored places (after the selects exist, so a swapped place is shown where it now is).
    section.querySelectorAll("select").forEach((select) => {
      const place = places(entry.question, select.dataset.criterion)[select.dataset.option];
      select.value = Number.isInteger(place) ? String(place) : "";
      select.parentElement.classList.toggle("missing", !Number.isInteger(place));
    });

    const done = isComplete(entry);
    section.append(element("p", { id: "status", class: "status " + (done ? "done" : "todo") },
      [done ? "Ranked on both criteria." : "Give every result a different place on each criterion."]));
    const previous = element("button", { type: "button", id: "previous" }, ["Previous"]);
    const next = element("button", { type: "button", id: "next" },
      [current === questions.length - 1 ? "Finish" : "Next"]);
    previous.disabled = current === 0;
    previous.addEventListener("click", () => showQuestion(current - 1));
    next.addEventListener("click", () => {
      if (current === questions.length - 1) showFinish(); else showQuestion(current + 1);
    });
    section.append(element("p", { class: "buttons" }, [previous, next]));
    section.hidden = false;
    $("finish").hidden = true;
    updateProgress();
  }

  function answeredCount() {
    return questions.filter(isComplete).length;
  }

  function updateProgress() {
    $("progress").textContent = "Rater " + rater + ": " + answeredCount() + " of " + questions.length +
      " questions ranked.";
  }

  function exportData() {
    const ranked = [];
    questions.forEach((entry) => {
      PACK.criteria.forEach((criterion) => {
        if (!isRanked(entry, criterion.id)) return;
        const given = places(entry.question, criterion.id);
        const ranking = entry.options.slice().sort((a, b) => given[a] - given[b]);
        ranked.push({ question: entry.question, criterion: criterion.id, ranking: ranking });
      });
    });
    return {
      pack_id: PACK.pack_id, rater: rater, exported_at: new Date().toISOString(),
      complete: answeredCount() === questions.length, answers: ranked,
    };
  }

  function exportCsv() {
    const lines = ["pack_id,rater,question,criterion,place,option"];
    exportData().answers.forEach((answer) => answer.ranking.forEach((token, i) => {
      lines.push([PACK.pack_id, rater, answer.question, answer.criterion, i + 1, token].join(","));
    }));
    return lines.join("\n") + "\n";
  }

  function refreshExport() {
    $("export").value = JSON.stringify(exportData(), null, 1);
  }

  function download(text, type, extension) {
    const link = element("a", {
      href: URL.createObjectURL(new Blob([text], { type: type })),
      download: "answers-" + PACK.pack_id + "-" + rater + "." + extension,
    });
    document.body.append(link);
    link.click();
    link.remove();
  }

  function showFinish() {
    const missing = questions.map((entry, i) => (isComplete(entry) ? null : i + 1)).filter((i) => i !== null);
    $("finish-status").textContent = missing.length === 0 ? "All questions are ranked. Thank you!" :
      "Not ranked yet: question(s) " + missing.join(", ") + ". You can still export what you have.";
    refreshExport();
    $("question").hidden = true;
    $("finish").hidden = false;
    updateProgress();
  }

  function chooseRater() {
    const list = $("rater-links");
    Object.keys(PACK.raters).forEach((id) => {
      list.append(element("li", {}, [element("a", { href: "?rater=" + encodeURIComponent(id) }, ["Rater " + id])]));
    });
    $("choose-rater").hidden = false;
  }

  if (PACK.notice) {
    $("notice").textContent = PACK.notice;
    $("notice").hidden = false;
  }
  if (!questions) {
    chooseRater();
    return;
  }
  window.studyExport = () => JSON.stringify(exportData());
  window.studyExportCsv = exportCsv;
  $("download-json").addEventListener("click", () =>
    download(JSON.stringify(exportData(), null, 1), "application/json", "json"));
  $("download-csv").addEventListener("click", () => download(exportCsv(), "text/csv", "csv"));
  $("back").addEventListener("click", () => showQuestion(current));
  document.body.dataset.saved = "no";
  load().then(() => {
    refreshExport();
    showQuestion(0);
    document.body.dataset.saved = "yes";
  });
})();
