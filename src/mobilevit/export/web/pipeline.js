// What the page computes around the model, as `mobilevit predict` computes it in Python: the resize that
// torchvision runs on uint8 images, the centre crop, the scaling to the model's input, and each task's
// post-processing. No DOM here: a test imports this module in the browser and checks each function.

// torchvision resizes uint8 images with PIL's algorithm: per output pixel, weights of the filter stretched
// over the input pixels it covers (antialiasing), normalised, turned into integers of `precision` bits,
// one pass along the width and then one along the height, each rounded to uint8.
const FILTERS = {
  bilinear: { support: 1, weight: (x) => Math.max(0, 1 - Math.abs(x)) },
  bicubic: { support: 2, weight: cubic },
};
const CUBIC_A = -0.5; // Keys' kernel as PIL and torch's antialiased resize use it

function cubic(x) {
  const a = CUBIC_A;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

// For each of `outSize` outputs: the first input index, the number of inputs and their integer weights.
export function resampleWeights(inSize, outSize, interpolation) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`unknown interpolation ${interpolation}`);
  const scale = inSize / outSize;
  const support = scale >= 1 ? filter.support * scale : filter.support;
  const taps = Math.ceil(support) * 2 + 1;
  const invScale = scale >= 1 ? 1 / scale : 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const real = new Float64Array(outSize * taps);
  let largest = 0;
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.max(Math.min(Math.trunc(center + support + 0.5), inSize) - first, 0), taps);
    let total = 0;
    for (let j = 0; j < n; j++) {
      const w = filter.weight((j + first - center + 0.5) * invScale);
      real[i * taps + j] = w;
      total += w;
    }
    if (total !== 0) {
      for (let j = 0; j < n; j++) {
        real[i * taps + j] /= total;
        largest = Math.max(largest, real[i * taps + j]);
      }
    }
    start[i] = first;
    count[i] = n;
  }
  let precision = 0; // the most bits that keep every weight within int16
  for (; precision < 22; precision++) {
    if (Math.trunc(0.5 + largest * 2 ** (precision + 1)) >= 1 << 15) break;
  }
  const weights = new Int32Array(real.length);
  for (let k = 0; k < real.length; k++) {
    const v = real[k] * 2 ** precision;
    weights[k] = v < 0 ? Math.trunc(v - 0.5) : Math.trunc(v + 0.5);
  }
  return { start, count, taps, weights, precision };
}

// One pass over interleaved RGB: `along` the width (step 3) or the height (step 3 * width).
function resamplePass(src, width, height, outSize, interpolation, alongWidth) {
  const inSize = alongWidth ? width : height;
  const { start, count, taps, weights, precision } = resampleWeights(inSize, outSize, interpolation);
  const outWidth = alongWidth ? outSize : width;
  const outHeight = alongWidth ? height : outSize;
  const out = new Uint8ClampedArray(outWidth * outHeight * 3); // clamps to 0..255 as torch's saturation does
  const half = 1 << (precision - 1);
  const step = alongWidth ? 3 : 3 * width;
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const i = alongWidth ? x : y;
      const base = alongWidth ? (y * width + start[i]) * 3 : (start[i] * width + x) * 3;
      let r = half;
      let g = half;
      let b = half;
      for (let j = 0; j < count[i]; j++) {
        const w = weights[i * taps + j];
        const p = base + j * step;
        r += src[p] * w;
        g += src[p + 1] * w;
        b += src[p + 2] * w;
      }
      const o = (y * outWidth + x) * 3;
      out[o] = r >> precision;
      out[o + 1] = g >> precision;
      out[o + 2] = b >> precision;
    }
  }
  return out;
}

// Interleaved RGB uint8 `width` x `height` resized to `outWidth` x `outHeight`, antialiased.
export function resize(rgb, width, height, outWidth, outHeight, interpolation) {
  let pixels = rgb;
  if (outWidth !== width) pixels = resamplePass(pixels, width, height, outWidth, interpolation, true);
  if (outHeight !== height) pixels = resamplePass(pixels, outWidth, height, outHeight, interpolation, false);
  return pixels;
}

// The size the image is resized to before any crop: the shorter side to `shorter_side` and the longer in
// proportion, truncated (torchvision's Resize(int)), or the model's input size for the whole image.
export function resizedSize(width, height, preprocess, inputWidth, inputHeight) {
  if (preprocess.resize === "whole") return [inputWidth, inputHeight];
  const side = preprocess.shorter_side;
  return width <= height ? [side, Math.trunc((side * height) / width)] : [Math.trunc((side * width) / height), side];
}

function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// The first input row (column) of a centre crop of `crop` from `size`; negative where the crop is larger
// and torchvision pads with zeros.
export function cropStart(size, crop) {
  return crop > size ? -Math.floor((crop - size) / 2) : roundHalfEven((size - crop) / 2);
}

const f32 = Math.fround;
const UINT8_SCALE = f32(1 / 255); // torchvision multiplies by the float32 reciprocal

// The model input [1, 3, H, W] (float32) from interleaved RGB uint8: the centre crop, values scaled to [0, 1],
// the model's channel order, then its mean and std (given in the model's channel order). Each step is
// rounded to float32 as torchvision's tensors are.
export function toInput(rgb, width, height, preprocess, inputWidth, inputHeight) {
  const top = cropStart(height, inputHeight);
  const left = cropStart(width, inputWidth);
  const order = preprocess.channel_order === "BGR" ? [2, 1, 0] : [0, 1, 2];
  const mean = (preprocess.mean ?? [0, 0, 0]).map(f32);
  const std = (preprocess.std ?? [1, 1, 1]).map(f32);
  const plane = inputWidth * inputHeight;
  const input = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < inputHeight; y++) {
      for (let x = 0; x < inputWidth; x++) {
        const sy = y + top;
        const sx = x + left;
        const inside = sy >= 0 && sy < height && sx >= 0 && sx < width;
        const value = inside ? f32(rgb[(sy * width + sx) * 3 + order[c]] * UINT8_SCALE) : 0;
        input[c * plane + y * inputWidth + x] = f32(value - mean[c]) / std[c];
      }
    }
  }
  return input;
}

export function preprocess(rgb, width, height, config) {
  const { preprocess: steps, input } = config;
  const [w, h] = resizedSize(width, height, steps, input.width, input.height);
  return toInput(resize(rgb, width, height, w, h, steps.interpolation), w, h, steps, input.width, input.height);
}

// RGB of RGBA pixels (the canvas has already laid them on white).
export function rgbOf(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

// Classification: the `k` most probable classes, softmax probabilities, best first.
export function topK(logits, k, labels) {
  const top = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps
    .map((e, index) => ({ label: labels[index], index, prob: e / total }))
    .sort((a, b) => b.prob - a.prob)
    .slice(0, k);
}

// Segmentation: the class of each pixel of logits [K, H, W] (the first of equal logits, as torch's argmax).
export function argmaxMask(logits, classes, height, width) {
  const plane = height * width;
  const ids = new Uint16Array(plane);
  for (let p = 0; p < plane; p++) {
    let best = logits[p];
    for (let c = 1; c < classes; c++) {
      if (logits[c * plane + p] > best) {
        best = logits[c * plane + p];
        ids[p] = c;
      }
    }
  }
  return ids;
}

// [[class, count], ...] of consecutive equal ids in row-major order: the mask in a few hundred numbers.
export function runLengths(ids) {
  const runs = [];
  for (const id of ids) {
    const last = runs[runs.length - 1];
    if (last && last[0] === id) last[1] += 1;
    else runs.push([id, 1]);
  }
  return runs;
}

// The share of pixels of each class present, largest first (as `mobilevit predict` lists them).
export function classFractions(ids, labels) {
  const counts = new Array(labels.length).fill(0);
  for (const id of ids) counts[id] += 1;
  return counts
    .map((n, index) => ({ label: labels[index], index, fraction: n / ids.length }))
    .filter((c) => c.fraction > 0)
    .sort((a, b) => b.fraction - a.fraction);
}

function iou(a, b) {
  const w = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const h = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = w * h;
  const areaA = (a[2] - a[0]) * (a[3] - a[1]);
  const areaB = (b[2] - b[0]) * (b[3] - b[1]);
  return inter / (areaA + areaB - inter);
}

// Greedy NMS of one class's candidates, best first: a box is dropped when its IoU with a kept one is above
// `threshold` (torchvision's nms).
function nms(candidates, threshold) {
  const kept = [];
  for (const c of candidates) {
    if (kept.every((k) => iou(k.box, c.box) <= threshold)) kept.push(c);
  }
  return kept;
}

// Detection: mobilevit.models.detection.postprocess on the graph's boxes [A, 4] (x1, y1, x2, y2 pixels of
// the model input) and scores [A, K], then boxes scaled to the image. Per object class: scores above
// `score_thresh`, the `topk_candidates` best, NMS per class at `nms_thresh`; then the `detections_per_img`
// best overall, highest score first.
export function detect(boxes, scores, classes, options, labels, scaleX, scaleY) {
  const anchors = scores.length / classes;
  const found = [];
  for (let label = 1; label < classes; label++) {
    const candidates = [];
    for (let a = 0; a < anchors; a++) {
      const score = scores[a * classes + label];
      if (score > options.score_thresh) candidates.push({ a, score });
    }
    candidates.sort((x, y) => y.score - x.score);
    const best = candidates.slice(0, options.topk_candidates).map(({ a, score }) => ({
      box: Array.from(boxes.subarray(a * 4, a * 4 + 4)),
      score,
      index: label,
    }));
    found.push(...nms(best, options.nms_thresh));
  }
  return found
    .sort((x, y) => y.score - x.score)
    .slice(0, options.detections_per_img)
    .map(({ box, score, index }) => ({
      label: labels[index],
      index,
      score,
      box: [box[0] * scaleX, box[1] * scaleY, box[2] * scaleX, box[3] * scaleY],
    }));
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
