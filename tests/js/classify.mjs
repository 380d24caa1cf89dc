// Classifies images with a folder written by `mobilevit export --format transformers.js`, the way a
// transformers.js user would: pipeline('image-classification', ...) on local files only.
//
//   node tests/js/classify.mjs DIR IMAGE... [--dtype fp32|fp16|q8] [--top-k 5]
//
// Prints one JSON line: for each image, transformers.js's top-k [{label, score}].
// tests/export/test_transformersjs.py runs it (install: npm ci --ignore-scripts --prefix tests/js).
import path from 'node:path';

import { env, pipeline } from '@huggingface/transformers';

function parseArgs(argv) {
    const options = { dtype: 'fp32', topK: 5, paths: [] };
    for (let i = 0; i < argv.length; i++) {
        if (argv[i] === '--dtype') options.dtype = argv[++i];
        else if (argv[i] === '--top-k') options.topK = Number(argv[++i]);
        else options.paths.push(argv[i]);
    }
    if (options.paths.length < 2) {
        throw new Error('usage: node classify.mjs DIR IMAGE... [--dtype fp32|fp16|q8] [--top-k 5]');
    }
    return options;
}

const { dtype, topK, paths } = parseArgs(process.argv.slice(2));
const [folder, ...images] = paths.map((p) => path.resolve(p));

// local files only: nothing may be fetched from the Hub
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(folder);

const classify = await pipeline('image-classification', path.basename(folder), { dtype, device: 'cpu' });
const results = await classify(images, { top_k: topK });
console.log(JSON.stringify(results));
