#!/usr/bin/env python
"""ALBEF-base (random weights, 256 px, Grad-CAM at text layer 8 of 12, fusion layer 6): the
heat-map stage of IteRPrimE (Grad-CAM + PWE + 3 IGRS passes, `authors_code` on, no trailing
[SEP]) for a few RefCOCO-like sentences of one image, ours against the authors' way.

(a) the authors' way (bench/albef_reference.py): eager PyTorch on the transformers-module ALBEF
    of tests/albef_ref.py, one sentence at a time, every pass a full forward (ViT included) and
    backward (parameter gradients included);
(b) ours: the image encoded once (jit), then `text_heatmaps` (jit) for all sentences at once:
    one batched text-encoder forward + backward per pass, the backward stopping at the image
    embeddings.
Parity first: every sentence's final patch-grid map and accepted-pass count must agree
(|d| <= HEAT_TOL); only then are both timed (median of --repeats, after a warm-up / compile).
Prints a table and writes a JSON record (with the command) to --out.

    python bench/bench_albef.py --sentences 4 --repeats 3 \\
        --out bench/results/albef-base-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import HEAT_TOL, ROOT, clean_json, loadavg, log, make_sentence, stats

sys.path.insert(0, str(ROOT))


def albef_base_sizes():
    from tests.albef_ref import Sizes

    return Sizes(image=256, patch=16, v_width=768, v_depth=12, v_heads=12, t_width=768,
                 t_layers=12, t_heads=12, t_inter=3072, fusion=6, max_pos=512)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch
    from albef_reference import AlbefAuthors
    from transformers import BertTokenizer

    from iterprime_jax.config import IteRPrimEConfig
    from iterprime_jax.method.language import encode_batch, load_spacy
    from iterprime_jax.method.pipeline import TextArrays, text_heatmaps
    from iterprime_jax.models.albef.config import AlbefTextConfig
    from iterprime_jax.models.albef.convert import AUTHORS_METHOD, convert_albef_state_dict
    from iterprime_jax.models.blip.modeling import encode_image
    from iterprime_jax.shipped import VOCAB as SHIPPED_VOCAB
    from tests.albef_ref import TorchAlbef, random_albef_state_dict

    s = albef_base_sizes()
    log("building ALBEF-base (random weights)")
    sd = random_albef_state_dict(s, seed=args.seed, extras=False)
    config, params = convert_albef_state_dict(sd, "random ALBEF-base", AlbefTextConfig(), 256)
    params = jax.device_put(params)
    ref_model = TorchAlbef(s, sd)
    del sd
    mcfg = IteRPrimEConfig(**{**AUTHORS_METHOD, "iterations": 3})
    rng = np.random.default_rng(args.seed)
    sentences = [make_sentence(rng) for _ in range(args.sentences)]
    tok = BertTokenizer(str(SHIPPED_VOCAB), do_lower_case=True)
    batch = encode_batch(tok, load_spacy(mcfg.spacy_model), sentences, mcfg)
    length = int(-(-batch.attention_mask.sum(1).max() // 8) * 8)
    ids, am, focus, primary = (jnp.asarray(a[:, :length]) for a in (
        batch.input_ids, batch.attention_mask, batch.focus, batch.primary))
    pixels = rng.normal(size=(256, 256, 3)).astype(np.float32)

    enc = jax.jit(encode_image, static_argnums=1)
    heat_fn = jax.jit(text_heatmaps, static_argnums=(1, 2))

    def ours():
        emb = enc(params, config, jnp.asarray(pixels[None]))
        return jax.block_until_ready(heat_fn(params, config, mcfg, emb,
                                             TextArrays(ids, am, focus, primary)))

    authors = AlbefAuthors(ref_model, layer=mcfg.layer, iterations=mcfg.iterations,
                           alpha=mcfg.alpha)

    def theirs():
        out = []
        for i, item in enumerate(batch.items):
            n = item.length
            out.append(authors.heat(pixels, batch.input_ids[i, :n],
                                    np.flatnonzero(batch.focus[i, :n]).tolist(),
                                    np.flatnonzero(batch.primary[i, :n]).tolist()))
        return out

    log("parity run (ours compiles here)")
    t0 = time.perf_counter()
    res = ours()
    first_call = time.perf_counter() - t0
    refs = theirs()
    diffs = [float(np.abs(np.asarray(res.heat[i]) - r.heat).max()) for i, r in enumerate(refs)]
    iters_ours = [int(x) for x in np.asarray(res.iterations)]
    iters_ref = [r.iterations for r in refs]
    parity = {"max_abs_heat_diff": max(diffs), "per_sentence_max_abs": diffs,
              "iterations_ours": iters_ours, "iterations_reference": iters_ref,
              "passes_reference": [r.passes for r in refs], "tolerance": HEAT_TOL,
              "ok": max(diffs) <= HEAT_TOL and iters_ours == iters_ref}
    log(f"parity: max |d| {max(diffs):.2e}, iterations {iters_ours} vs {iters_ref}")
    if not parity["ok"]:
        log("parity failed: nothing timed")
        return 1

    t_ours, t_ref = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs()
        t_ref.append(time.perf_counter() - t0)
        log(f"repeat {r}: ours {t_ours[-1]:.3f} s, authors' way {t_ref[-1]:.3f} s")
    so, sr = stats(t_ours), stats(t_ref)
    record = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "what": "ALBEF-base heat-map stage (Grad-CAM layer 8 + PWE + IGRS 3 passes, "
                "authors_code) for all sentences of one 256 px image; random weights",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "backend": jax.default_backend(),
                    "loadavg_end": loadavg()},
        "workload": {"sentences": sentences, "text_length": length,
                     "prompts": [it.prompt for it in batch.items]},
        "parity": parity,
        "ours_first_call_s": first_call,
        "ours_s": so, "authors_way_s": sr,
        "speedup_median": sr["median"] / so["median"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{'':24s}{'median s':>10s}{'min s':>10s}  (n={args.repeats}, "
          f"{args.sentences} sentences, 3 passes)")
    print(f"{'authors way (torch)':24s}{sr['median']:10.3f}{sr['min']:10.3f}")
    print(f"{'ours (jax, jit)':24s}{so['median']:10.3f}{so['min']:10.3f}")
    print(f"speedup (median): {record['speedup_median']:.1f}x; parity max |d| "
          f"{max(diffs):.1e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(clean_json(record), indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
