// Preprocesses one image with the image processor of a folder written by
// `mobilevit export --format transformers.js`, as its image-classification pipeline does, and writes
// pixel_values as raw float32 (C order) to OUT; prints their dims as JSON.
//
//   node tests/js/preprocess.mjs DIR IMAGE OUT
import fs from 'node:fs';
import path from 'node:path';

import { AutoProcessor, RawImage, env } from '@huggingface/transformers';

const [folder, image, out] = process.argv.slice(2).map((p) => path.resolve(p));
env.allowRemoteModels = false;
env.localModelPath = path.dirname(folder);

const processor = await AutoProcessor.from_pretrained(path.basename(folder));
const { pixel_values } = await processor(await RawImage.read(image));
fs.writeFileSync(out, Buffer.from(pixel_values.data.buffer));
console.log(JSON.stringify(pixel_values.dims));
