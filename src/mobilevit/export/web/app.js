// The page: loads config.json and model.onnx into onnxruntime-web (WebGPU where the browser has an adapter,
// else WASM), then predicts on a chosen photo or a camera picture and shows the result, its latency, and
// the same as JSON in #result. URL options: ?runs=N also times N more runs and reports their median,
// ?ep=wasm or ?ep=webgpu picks the backend, ?threads=N the WASM threads.
import * as pipeline from "./pipeline.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const MAX_VIEW_SIDE = 1024; // the shown photo's longer side, in canvas pixels
const LISTED_DETECTIONS = 20; // beside the photo; the JSON has every detection

// An error whose message says what happened and what to do; any other error is unexpected.
class PageError extends Error {}

function setState(state) {
  document.body.dataset.state = state;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

function messageOf(err) {
  return err instanceof PageError ? err.message : `Unexpected error: ${err?.message ?? err}`;
}

window.addEventListener("error", (event) => showError(messageOf(event.error ?? event.message)));
window.addEventListener("unhandledrejection", (event) => showError(messageOf(event.reason)));

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new PageError(`${what} could not be fetched (${err.message}).`);
  }
  if (!response.ok) throw new PageError(`${what} could not be fetched: ${url} answered HTTP ${response.status}.`);
  return response;
}

async function webgpuAdapter() {
  if (!("gpu" in navigator)) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
}

async function importRuntime(path) {
  try {
    return await import(`./${path}`);
  } catch (err) {
    throw new PageError(
      `onnxruntime-web could not be loaded from ${path} (${err.message}). ` +
        "Export the page again with `mobilevit export --format web`: its ort/ folder is incomplete.",
    );
  }
}

function configure(ort) {
  const threads = Number.parseInt(params.get("threads") ?? "", 10);
  if (threads > 0) ort.env.wasm.numThreads = threads;
  ort.env.logLevel = "error";
}

async function createSession(ort, bytes, providers) {
  try {
    return await ort.InferenceSession.create(bytes, { executionProviders: providers, graphOptimizationLevel: "all" });
  } catch (err) {
    throw new PageError(
      `The model could not be loaded (${err.message ?? err}). ` +
        "model.onnx may be damaged or incomplete: export the page again with `mobilevit export --format web`.",
    );
  }
}

// The session on WebGPU when asked for or available, else (or when WebGPU fails) on WASM.
async function startSession(config, bytes) {
  const wanted = params.get("ep");
  const notes = [];
  if (wanted !== "wasm" && (wanted === "webgpu" || (await webgpuAdapter()))) {
    try {
      const ort = await importRuntime(config.runtime.webgpu);
      configure(ort);
      const session = await createSession(ort, bytes.slice(), ["webgpu", "wasm"]);
      return { ort, session, backend: "webgpu", notes };
    } catch (err) {
      if (wanted === "webgpu") throw err;
      notes.push(`WebGPU failed (${err.message}), so the model runs on WASM.`);
    }
  }
  const ort = await importRuntime(config.runtime.wasm);
  configure(ort);
  const session = await createSession(ort, bytes, ["wasm"]);
  return { ort, session, backend: "wasm", notes };
}

function backendName(backend, threads) {
  return backend === "webgpu" ? "WebGPU" : `WASM, ${threads} thread${threads === 1 ? "" : "s"}`;
}

async function load() {
  const config = await (await fetchOk("config.json", "The page's config.json")).json();
  $("title").textContent = `${config.model} in the browser`;
  $("model-info").textContent =
    `${config.task}, ${config.input.width}x${config.input.height} input, ${config.labels.length} classes`;
  setStatus("Loading the model…");
  let bytes;
  try {
    bytes = new Uint8Array(await (await fetchOk(config.model_file, "The model")).arrayBuffer());
  } catch (err) {
    throw new PageError(
      `${err.message} Export the page again with \`mobilevit export --format web\`: ${config.model_file} belongs next to index.html.`,
    );
  }
  const runtime = await startSession(config, bytes);
  const threads = runtime.backend === "wasm" ? runtime.ort.env.wasm.numThreads ?? 1 : null;
  const isolation = crossOriginIsolated
    ? ""
    : " The page is not cross-origin isolated (its server sends no COOP/COEP headers, as `python -m http.server` " +
      "does not), so WASM runs on one thread; `mobilevit serve DIR` sends them.";
  setStatus(`Ready: ${backendName(runtime.backend, threads)}.${isolation} ${runtime.notes.join(" ")}`.trimEnd());
  $("runtime").textContent = `onnxruntime-web ${config.runtime.version} (${runtime.backend})`;
  setState("ready");
  return { config, ...runtime, threads };
}

const ready = load();
ready.catch((err) => {
  setStatus("The page cannot predict.");
  showError(messageOf(err));
});

// An <img> reads the size from the file's header before anything is decoded, so a huge image is refused
// before its pixels take memory; a file no browser can decode fails here.
function imageSize(blob, name) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => {
      URL.revokeObjectURL(url);
      resolve([img.naturalWidth, img.naturalHeight]);
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new PageError(`${name} is not an image this browser can read: choose a JPEG, PNG, WebP or GIF file.`));
    };
    img.src = url;
  });
}

async function fileImage(file, config) {
  const [width, height] = await imageSize(file, file.name);
  const megapixels = (width * height) / 1e6;
  if (megapixels > config.max_megapixels) {
    throw new PageError(
      `${file.name} is ${width}x${height} pixels (${megapixels.toFixed(1)} megapixels); the page takes images of ` +
        `up to ${config.max_megapixels} megapixels. Scale it down and choose it again.`,
    );
  }
  // the file's own pixel values, as Python reads them: no colour-profile conversion
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  return { source: bitmap, width: bitmap.width, height: bitmap.height, name: file.name };
}

// RGB pixels of the image, transparent ones laid on white (as mobilevit.data.images.to_rgb does).
function pixelsOf(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "white";
  context.fillRect(0, 0, image.width, image.height);
  context.drawImage(image.source, 0, 0);
  return pipeline.rgbOf(context.getImageData(0, 0, image.width, image.height).data);
}

async function timeRun(session, feeds) {
  const start = performance.now();
  const outputs = await session.run(feeds);
  return { outputs, ms: performance.now() - start };
}

async function infer(runtime, input) {
  const { config, ort, session } = runtime;
  const tensor = new ort.Tensor("float32", input, [1, 3, config.input.height, config.input.width]);
  const feeds = { [config.input.name]: tensor };
  const first = await timeRun(session, feeds);
  const latency = { run_ms: first.ms };
  const runs = Number.parseInt(params.get("runs") ?? "0", 10);
  if (runs > 0) {
    setStatus(`Timing ${runs} runs…`);
    const times = [];
    for (let i = 0; i < runs; i++) times.push((await timeRun(session, feeds)).ms);
    Object.assign(latency, {
      runs,
      median_ms: pipeline.median(times),
      min_ms: Math.min(...times),
      max_ms: Math.max(...times),
    });
  }
  return { outputs: first.outputs, latency };
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function swatch(colour) {
  const box = element("span", undefined, "swatch");
  box.style.background = `rgb(${colour.join(",")})`;
  return box;
}

const percent = (x) => `${(100 * x).toFixed(1)}%`;

// Per task: the result from the outputs, and how it is drawn over the photo and listed beside it.
const TASKS = {
  classification: {
    result(outputs, config) {
      return { predictions: pipeline.topK(outputs[config.outputs[0]].data, config.top_k, config.labels) };
    },
    draw() {},
    list(result) {
      const list = element("ol", undefined, "top");
      for (const p of result.predictions) {
        const row = element("li");
        row.append(element("span", p.label, "label"), element("span", percent(p.prob), "value"));
        const bar = element("span", undefined, "bar");
        bar.style.width = percent(p.prob);
        row.append(bar);
        list.append(row);
      }
      return list;
    },
  },
  segmentation: {
    result(outputs, config) {
      const logits = outputs[config.outputs[0]];
      const [, classes, height, width] = logits.dims;
      const ids = pipeline.argmaxMask(logits.data, classes, height, width);
      const mask = { height, width, runs: pipeline.runLengths(ids) };
      return { mask, classes: pipeline.classFractions(ids, config.labels), ids };
    },
    draw(context, result, config) {
      const { height, width } = result.mask;
      const overlay = new ImageData(width, height);
      const alpha = Math.round(255 * config.overlay_alpha);
      result.ids.forEach((id, p) => {
        if (id === 0) return; // the background keeps the photo's colours
        overlay.data.set([...config.palette[id], alpha], p * 4);
      });
      const layer = document.createElement("canvas");
      layer.width = width;
      layer.height = height;
      layer.getContext("2d").putImageData(overlay, 0, 0);
      context.drawImage(layer, 0, 0, context.canvas.width, context.canvas.height);
    },
    list(result, config) {
      const legend = element("ul", undefined, "legend");
      for (const c of result.classes) {
        const row = element("li");
        row.append(swatch(config.palette[c.index]), element("span", c.label, "label"));
        row.append(element("span", percent(c.fraction), "value"));
        legend.append(row);
      }
      return legend;
    },
  },
  detection: {
    result(outputs, config, image) {
      const [boxes, scores] = config.outputs.map((name) => outputs[name]);
      const classes = scores.dims[2];
      const sx = image.width / config.input.width;
      const sy = image.height / config.input.height;
      return {
        detections: pipeline.detect(boxes.data, scores.data, classes, config.detection, config.labels, sx, sy),
      };
    },
    draw(context, result, config, image) {
      const scale = context.canvas.width / image.width;
      const line = Math.max(2, Math.round(Math.max(context.canvas.width, context.canvas.height) / 320));
      context.lineWidth = line;
      context.font = `${6 * line + 2}px sans-serif`;
      context.textBaseline = "top";
      for (const d of [...result.detections].reverse()) {
        const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
        const colour = `rgb(${config.palette[d.index].join(",")})`;
        const caption = `${d.label} ${d.score.toFixed(2)}`;
        context.strokeStyle = colour;
        context.strokeRect(x1, y1, x2 - x1, y2 - y1);
        const textHeight = 6 * line + 6;
        context.fillStyle = colour;
        context.fillRect(x1, y1, context.measureText(caption).width + 6, textHeight);
        context.fillStyle = "white";
        context.fillText(caption, x1 + 3, y1 + 2);
      }
    },
    list(result, config) {
      const list = element("ul", undefined, "legend");
      if (!result.detections.length) list.append(element("li", "Nothing found above the score threshold."));
      for (const d of result.detections.slice(0, LISTED_DETECTIONS)) {
        const row = element("li");
        row.append(swatch(config.palette[d.index]), element("span", d.label, "label"));
        row.append(element("span", d.score.toFixed(2), "value"));
        list.append(row);
      }
      const more = result.detections.length - LISTED_DETECTIONS;
      if (more > 0) list.append(element("li", `and ${more} more (all are in the JSON below)`));
      return list;
    },
  },
};

function show(image, result, runtime) {
  const { config } = runtime;
  const task = TASKS[config.task];
  const canvas = $("view");
  const scale = Math.min(1, MAX_VIEW_SIDE / Math.max(image.width, image.height));
  canvas.width = Math.round(image.width * scale);
  canvas.height = Math.round(image.height * scale);
  const context = canvas.getContext("2d");
  context.drawImage(image.source, 0, 0, canvas.width, canvas.height);
  task.draw(context, result, config, image);
  $("summary").replaceChildren(task.list(result, config));
  const { latency } = result;
  let text = `Model run: ${latency.run_ms.toFixed(1)} ms`;
  if (latency.median_ms !== undefined) text += `; median of ${latency.runs} more runs: ${latency.median_ms.toFixed(1)} ms`;
  $("latency").textContent = `${text} (${backendName(result.backend, result.threads)}).`;
  $("output").hidden = false;
}

async function predict(getImage) {
  $("error").hidden = true;
  setState("busy");
  try {
    const runtime = await ready;
    const { config } = runtime;
    const image = await getImage(config);
    setStatus(`Running on ${image.name}…`);
    const { outputs, latency } = await infer(runtime, pipeline.preprocess(pixelsOf(image), image.width, image.height, config));
    const { ids, ...found } = TASKS[config.task].result(outputs, config, image);
    const result = {
      task: config.task,
      model: config.model,
      image: { name: image.name, width: image.width, height: image.height },
      ...found,
      latency,
      backend: runtime.backend,
      threads: runtime.threads,
      cross_origin_isolated: crossOriginIsolated,
      onnxruntime_web: runtime.ort.env.versions?.web ?? config.runtime.version,
    };
    show(image, { ...result, ids }, runtime);
    $("result").textContent = JSON.stringify(result, null, 1);
    setStatus(`Done: ${image.name}.`);
    setState("done");
  } catch (err) {
    showError(messageOf(err));
  }
}

$("image").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) predict((config) => fileImage(file, config));
});

const CAMERA_ERRORS = {
  NotAllowedError: "the camera was refused; allow it in the browser's site settings and try again",
  NotFoundError: "no camera was found",
  NotReadableError: "the camera is in use by another program",
  OverconstrainedError: "no camera fits the request",
};

$("camera-start").addEventListener("click", async () => {
  $("error").hidden = true;
  if (!navigator.mediaDevices?.getUserMedia) {
    showError(
      "This browser gives the page no camera: cameras need a secure context (https, or http://localhost or " +
        "127.0.0.1). You can still choose a photo.",
    );
    return;
  }
  try {
    const video = $("camera");
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    await video.play();
    video.hidden = false;
    $("camera-capture").hidden = false;
  } catch (err) {
    showError(`Camera: ${CAMERA_ERRORS[err.name] ?? err.message}. You can still choose a photo.`);
  }
});

$("camera-capture").addEventListener("click", () =>
  predict(async () => {
    const bitmap = await createImageBitmap($("camera"));
    return { source: bitmap, width: bitmap.width, height: bitmap.height, name: "camera" };
  }),
);
