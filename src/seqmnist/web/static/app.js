// seqmnist's draw-a-digit page. Draw with any pointer (mouse, pen, finger); when a stroke ends the
// canvas is sent to POST /api/predict, and the answer's trace is replayed step by step: the input's
// pixels appear as the model reads them, the heatmap fills in one step (a row, for the rows task) at a
// time, and the bars follow the model's belief until they settle on its answer.
"use strict";

const SIDE = 28;
const PEN = 36; // on the 448-pixel pad: about MNIST's pen once the digit is scaled to 20 pixels
const WAIT_MS = 350; // after the last stroke, before predicting
const REPLAY_MS = 2200; // the whole reading, however many steps
const VIRIDIS = [[34, 32, 43], [59, 63, 143], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const padContext = pad.getContext("2d");
const inputCanvas = $("input");
const heatmap = $("heatmap");

let model = null; // GET /api/model
let result = null; // the latest POST /api/predict answer
let sent = 0; // requests sent: an answer to an older one is dropped
let timer = null;
let drawing = null; // the pointer drawing now, and its last point
let inked = false; // anything drawn or loaded since the last clear
let photo = false; // the pad shows an uploaded photo: a new stroke clears it first
let animation = null;

// --- the model's settings -------------------------------------------------------------------------

async function loadModel() {
  const response = await fetch("/api/model");
  model = await response.json();
  document.body.dataset.steps = model.steps;
  $("run").textContent = `run ${model.run}`;
  $("accuracy").textContent = model.test_acc == null ? "" : `test accuracy ${(100 * model.test_acc).toFixed(2)}%`;
  $("description").textContent = model.description;
  const unit = model.step_unit;
  $("heatmap-caption").textContent = `its belief, ${unit} by ${unit}`;
  $("view-step").textContent = `each ${unit} alone`;
  $("view").hidden = model.one_view; // the readout's belief after a step is that step's own: the two views are the same
  $("explain").textContent = explanation(model);
  sizeHeatmap();
  buildClasses();
  buildBars();
  setState("idle", "Draw a digit on the black square.");
}

function explanation(m) {
  const reads = m.task === "rows"
    ? `The network reads the image one row at a time, top to bottom (${m.steps} rows of 28 pixels).`
    : m.task === "pixel"
      ? `The network reads the image ${m.pixels_per_step} pixel${m.pixels_per_step > 1 ? "s" : ""} at a time, in reading order (${m.steps} steps).`
      : `The network reads the pixels ${m.pixels_per_step} at a time in a fixed shuffled order (${m.steps} steps): watch them appear.`;
  const answer = {
    "mean-softmax": "Its answer is the average of the guesses it makes after every step.",
    "mean-logits": "Its answer comes from the average of the scores it gives after every step.",
    "last": "Its answer is the guess it makes after the last step.",
  }[m.readout] || "";
  return `${reads} After each ${m.step_unit} it guesses which digit it is; the heatmap shows those guesses, ` +
    `one line per ${m.step_unit} and one column per digit, brighter where it is surer. ${answer} ` +
    "Your drawing is turned into an MNIST-like input first: cropped, scaled into a 20×20 box and centred by its mass.";
}

function sizeHeatmap() {
  // Rows read line up with the input's rows: K rows of 28 take K/28 of the input's height.
  const fraction = model.task === "rows" ? model.steps / SIDE : 1;
  heatmap.height = Math.max(10, Math.round(280 * fraction));
  heatmap.style.height = `${Math.round(196 * fraction)}px`;
}

function buildClasses() {
  $("classes").replaceChildren(...Array.from({ length: 10 }, (_, d) => {
    const span = document.createElement("span");
    span.textContent = d;
    return span;
  }));
}

function buildBars() {
  $("bars").replaceChildren(...Array.from({ length: 10 }, (_, d) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="digit">${d}</span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    return li;
  }));
}

// --- drawing -------------------------------------------------------------------------------------------

function clearPad() {
  padContext.fillStyle = "#000";
  padContext.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  photo = false;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}

function dot([x, y], width) {
  padContext.beginPath();
  padContext.arc(x, y, width / 2, 0, 2 * Math.PI);
  padContext.fill();
}

function penWidth(event) {
  // A pen's pressure makes the line a little thinner or thicker; mouse and finger draw at PEN.
  return event.pointerType === "pen" && event.pressure > 0 ? PEN * (0.7 + 0.6 * event.pressure) : PEN;
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || !model) return;
  event.preventDefault();
  clearTimeout(timer);
  if (photo) clearPad();
  pad.setPointerCapture(event.pointerId);
  padContext.fillStyle = padContext.strokeStyle = "#fff";
  padContext.lineCap = padContext.lineJoin = "round";
  drawing = { id: event.pointerId, last: point(event) };
  dot(drawing.last, penWidth(event));
  inked = true;
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing || event.pointerId !== drawing.id) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const next = point(e);
    padContext.lineWidth = penWidth(e);
    padContext.beginPath();
    padContext.moveTo(...drawing.last);
    padContext.lineTo(...next);
    padContext.stroke();
    drawing.last = next;
  }
});

function endStroke(event) {
  if (!drawing || event.pointerId !== drawing.id) return;
  drawing = null;
  clearTimeout(timer);
  timer = setTimeout(predictPad, WAIT_MS);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  clearTimeout(timer);
  sent += 1; // an answer still on its way is for a drawing that is gone
  clearPad();
  resetResult();
  setState("idle", "Draw a digit on the black square.");
});

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  $("upload").value = "";
  if (!file) return;
  clearTimeout(timer);
  showPhoto(file);
  await predict(file, file.name);
});

function showPhoto(file) {
  const image = new Image();
  image.onload = () => {
    clearPad();
    const scale = Math.min(pad.width / image.width, pad.height / image.height);
    const w = image.width * scale, h = image.height * scale;
    padContext.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(image.src);
    photo = inked = true;
  };
  image.src = URL.createObjectURL(file);
}

// --- predicting -------------------------------------------------------------------------------------

function predictPad() {
  if (!inked) return;
  pad.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
}

async function predict(blob, name) {
  const mine = ++sent;
  setState("reading", "Reading…");
  const form = new FormData();
  form.append("image", blob, name);
  let answer;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  } catch (error) {
    if (mine === sent) {
      resetResult();
      setState("error", error.message);
    }
    return;
  }
  if (mine !== sent) return;
  result = answer;
  $("replay").disabled = false;
  replay();
}

function resetResult() {
  cancelAnimationFrame(animation);
  result = null;
  $("replay").disabled = true;
  inputCanvas.getContext("2d").clearRect(0, 0, inputCanvas.width, inputCanvas.height);
  heatmap.getContext("2d").clearRect(0, 0, heatmap.width, heatmap.height);
  heatmap.dataset.stepsPainted = "0";
  $("label").textContent = "?";
  $("label").dataset.label = "";
  $("confidence").textContent = "";
  $("running").innerHTML = "&nbsp;";
  $("settled").textContent = "";
  showBars(new Array(10).fill(0), -1);
}

// --- replaying the reading ------------------------------------------------------------------------

function replay() {
  cancelAnimationFrame(animation);
  const total = result.steps;
  const start = performance.now();
  setState("animating", "");
  const frame = (now) => {
    const done = Math.min(total, Math.max(1, Math.ceil(((now - start) / REPLAY_MS) * total)));
    paint(done);
    if (done < total) animation = requestAnimationFrame(frame);
    else finish();
  };
  animation = requestAnimationFrame(frame);
}

function paint(done) {
  const step = result.trace[done - 1];
  paintInput(done);
  paintHeatmap(done);
  const top = argmax(step.running);
  $("label").textContent = step.prediction;
  $("confidence").textContent = `${percent(step.running[top])} after ${model.step_unit} ${done}`;
  $("running").innerHTML = `after ${model.step_unit} <b>${done}</b> of ${result.steps}: ` +
    `running prediction <b>${step.prediction}</b> (${percent(step.running[step.prediction])})`;
  showBars(step.running, step.prediction);
}

function finish() {
  const label = result.label;
  $("label").textContent = label;
  $("label").dataset.label = String(label);
  $("confidence").textContent = `${percent(result.probabilities[label])} sure`;
  showBars(result.probabilities, label);
  const unit = model.step_unit;
  $("settled").textContent = result.settled === 1
    ? `It guessed ${label} from the first ${unit} on and never changed its mind.`
    : `It settled on ${label} at ${unit} ${result.settled} of ${result.steps}, and kept it to the end.`;
  setState("done", `${result.file}: ${label}`);
}

function paintInput(done) {
  // The pixels read so far at full brightness, the rest faint: what the model has seen by now.
  const context = inputCanvas.getContext("2d");
  const cell = inputCanvas.width / SIDE;
  const seen = readMask(done);
  context.fillStyle = "#000";
  context.fillRect(0, 0, inputCanvas.width, inputCanvas.height);
  for (let y = 0; y < SIDE; y += 1) {
    for (let x = 0; x < SIDE; x += 1) {
      const v = result.input[y][x];
      const shown = seen[y * SIDE + x] ? v : Math.round(v * 0.28);
      if (shown === 0) continue;
      context.fillStyle = `rgb(${shown},${shown},${shown})`;
      context.fillRect(x * cell, y * cell, cell, cell);
    }
  }
  if (model.task === "rows" && done < result.steps) { // the row being read
    context.strokeStyle = "#f5a524";
    context.lineWidth = 2;
    context.strokeRect(1, (done - 1) * cell + 1, inputCanvas.width - 2, cell - 2);
  }
}

function readMask(done) {
  const mask = new Uint8Array(SIDE * SIDE);
  const count = Math.min(SIDE * SIDE, done * model.pixels_per_step);
  for (let i = 0; i < count; i += 1) mask[model.order ? model.order[i] : i] = 1;
  return mask;
}

function paintHeatmap(done) {
  const context = heatmap.getContext("2d");
  const values = $("view").querySelector("input:checked").value === "step" ? "probabilities" : "running";
  const width = heatmap.width / 10;
  const band = heatmap.height / result.steps;
  context.clearRect(0, 0, heatmap.width, heatmap.height);
  for (let t = 0; t < done; t += 1) {
    const row = result.trace[t][values];
    const y0 = Math.floor(t * band), y1 = Math.floor((t + 1) * band);
    if (y1 <= y0 && t < done - 1) continue; // many steps to a pixel: the last of them shows
    for (let d = 0; d < 10; d += 1) {
      context.fillStyle = colour(row[d]);
      context.fillRect(d * width, y0, width, Math.max(1, y1 - y0));
    }
  }
  if (band >= 5) markPredictions(context, done, width, band);
  context.strokeStyle = "rgba(255,255,255,0.08)";
  for (let d = 1; d < 10; d += 1) {
    context.beginPath();
    context.moveTo(d * width, 0);
    context.lineTo(d * width, heatmap.height);
    context.stroke();
  }
  heatmap.dataset.stepsPainted = String(done);
  const top = result.trace[done - 1].prediction;
  $("classes").querySelectorAll("span").forEach((span, d) => span.classList.toggle("top", d === top));
}

function markPredictions(context, done, width, band) {
  // A white frame on each step's running prediction: where the belief goes, and when it stops moving.
  context.strokeStyle = "rgba(255,255,255,0.9)";
  context.lineWidth = 1.5;
  for (let t = 0; t < done; t += 1) {
    const d = result.trace[t].prediction;
    context.strokeRect(d * width + 1.5, t * band + 1, width - 3, band - 2);
  }
}

function showBars(probabilities, top) {
  $("bars").querySelectorAll("li").forEach((li, d) => {
    li.classList.toggle("top", d === top);
    li.querySelector(".fill").style.width = `${(100 * probabilities[d]).toFixed(1)}%`;
    li.querySelector(".value").textContent = top < 0 ? "" : percent(probabilities[d]);
  });
}

$("replay").addEventListener("click", () => result && replay());
$("view").addEventListener("change", () => result && paintHeatmap(Number(heatmap.dataset.stepsPainted) || result.steps));

// --- small things ------------------------------------------------------------------------------------

function colour(p) {
  const x = Math.min(1, Math.max(0, p)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const [r, g, b] = VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  return `rgb(${r},${g},${b})`;
}

function argmax(values) {
  return values.reduce((best, v, i) => (v > values[best] ? i : best), 0);
}

function percent(p) {
  return p >= 0.999 ? ">99.9%" : p < 0.001 ? "<0.1%" : `${(100 * p).toFixed(1)}%`;
}

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message || "\u00a0";
}

clearPad();
loadModel().catch((error) => setState("error", `cannot load the model's settings: ${error.message}`));
