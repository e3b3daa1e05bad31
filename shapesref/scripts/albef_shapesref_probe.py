#!/usr/bin/env python
"""One short probe of the ShapesRef ITM model in ALBEF's layout: text-only BERT layers below the
fusion layers (the text can compose "left of the red circle" before it looks at the image),
otherwise the shipped recipe (`training.TrainConfig` defaults) with a time budget.

Steps (library calls of `shapesref.training`, the model built as an `AlbefConfig`):
ViT pretraining (`pretrain_vision`, BLIP-named, renamed to timm names: same maths), caption
then expression stages for `--time-budget` seconds (`calibrate_steps`), save (albef_config.json),
the diagnostics the recipe probes record (held-out ITM accuracy, per hard-negative type:
"relation" = relation swaps rejected; the localisation probe per fusion layer on the ShapesRef
train split), method.json with the probe's best fusion layer, then the train-split selection
run (`run_eval.py --split train --limit 150`: per-kind mIoU) compared with the shipped model's.

    python shapesref/scripts/albef_shapesref_probe.py --text-only 2 --fusion 3 --time-budget 600 \\
        --out /tmp/albef-probe --record bench/results/albef-layout-probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def timm_vision(blip_vision: dict, depth: int) -> dict:
    """BLIP-named ViT params (`vision_model`) -> ALBEF's timm names (`visual_encoder`)."""
    emb, enc = blip_vision["embeddings"], blip_vision["encoder"]
    out = {"cls_token": emb["class_embedding"], "pos_embed": emb["position_embedding"],
           "patch_embed": {"proj": emb["patch_embedding"]}, "norm": blip_vision["post_layernorm"]}
    for i in range(depth):
        b = enc[f"layers_{i}"]
        out[f"blocks_{i}"] = {"norm1": b["layer_norm1"], "norm2": b["layer_norm2"],
                              "attn": {"qkv": b["self_attn"]["qkv"],
                                       "proj": b["self_attn"]["projection"]},
                              "mlp": b["mlp"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text-only", type=int, default=2)
    ap.add_argument("--fusion", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=600.0)
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--pool-scenes", type=int, default=8000)
    ap.add_argument("--probe-images", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--record", type=Path, default=None)
    ap.add_argument("--no-selection", action="store_true", help="skip the run_eval selection")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from iterprime_jax.models.albef.config import AlbefConfig, AlbefTextConfig
    from iterprime_jax.models.blip.modeling import init_params
    from shapesref import training
    from shapesref.training import posemb_sincos_2d
    from shapesref.training.data import build_pool, caption_pool, normalise_images
    from shapesref.training.trainer import (
        calibrate_steps,
        init_state,
        make_optimizer,
        make_train_step,
        save_model,
    )

    t_start = time.perf_counter()
    layers = args.text_only + args.fusion
    tc = training.TrainConfig(text_layers=layers, pool_scenes=args.pool_scenes, workers=1,
                              **({} if args.pretrain_steps is None
                                 else {"pretrain_steps": args.pretrain_steps}))
    blip = training.model_config(tc)
    text = AlbefTextConfig(vocab_size=blip.text.vocab_size, hidden_size=tc.width,
                           intermediate_size=4 * tc.width, num_hidden_layers=layers,
                           num_attention_heads=tc.heads,
                           max_position_embeddings=tc.max_position_embeddings,
                           encoder_hidden_size=tc.width, fusion_layer=args.text_only)
    config = AlbefConfig(vision=blip.vision, text=text)
    tok = training.make_tokenizer()

    t0 = time.perf_counter()
    vision_hist = None
    key = jax.random.PRNGKey(tc.seed)
    params = init_params(config, key)
    emb_std = 1.0 / np.sqrt(tc.width)
    keys = iter(jax.random.split(jax.random.fold_in(key, 1), 64))

    def fix(path, x):  # as training.init_model, under ALBEF's names
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] == "pos_embed":
            gh, gw = config.vision.grid
            return jnp.asarray(tc.pos_scale * posemb_sincos_2d(gh, gw, x.shape[-1]), x.dtype)
        if names[-1] in ("embedding", "cls_token"):
            return emb_std * jax.random.normal(next(keys), x.shape, x.dtype)
        return x

    params = jax.tree_util.tree_map_with_path(fix, params)
    if tc.pretrain_steps:
        vision, vision_hist = training.pretrain_vision(tc)
        params = {**params, "visual_encoder": jax.tree_util.tree_map(
            jnp.asarray, timm_vision(vision, tc.vision_layers))}
    t_pretrain = time.perf_counter() - t0
    print(f"pretrain {t_pretrain:.0f}s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    pool = build_pool(tc, tok, tc.pool_scenes, tc.seed)
    captions = caption_pool(tc, tok, tc.caption_scenes, tc.seed + 1)
    t_pool = time.perf_counter() - t0
    steps, per_step = calibrate_steps(tc, config, params, pool, args.time_budget)
    tc = dataclasses.replace(tc, steps=steps)
    print(f"pool {t_pool:.0f}s; {steps} expression steps at {per_step * 1e3:.1f} ms",
          file=sys.stderr, flush=True)
    opt = make_optimizer(tc)
    train_step = make_train_step(config, opt)
    state = init_state(params, opt)
    rng = np.random.default_rng([tc.seed, 1])
    history, losses, accs = [], [], []
    t0 = time.perf_counter()
    total = tc.caption_steps + tc.steps
    for step in range(1, total + 1):
        src = captions if step <= tc.caption_steps else pool
        images, ids, mask, labels = src.sample(rng, tc.batch_size)
        state, loss, acc = train_step(state, normalise_images(images, config), ids, mask,
                                      labels)
        losses.append(loss)
        accs.append(acc)
        if step % 250 == 0 or step == total:
            row = {"step": step, "loss": float(np.mean(jax.device_get(losses))),
                   "accuracy": float(np.mean(jax.device_get(accs)))}
            history.append(row)
            losses, accs = [], []
            print(row, file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t0
    params = jax.device_get(state.params)
    out = save_model(args.out, params, config)

    held = build_pool(dataclasses.replace(tc, refs_per_scene=1), tok, 1000,
                      seed=tc.seed + 10_000, workers=1)
    fusion_layers = list(range(args.text_only, layers))
    probe = training.localisation_probe(params, config, tok, args.probe_images, "train",
                                        layers=fusion_layers)
    diag = {"heldout_itm": training.evaluate_itm(params, config, held),
            "heldout_itm_by_negative": training.itm_by_negative_kind(params, config, tok,
                                                                    seed=tc.seed),
            "localisation_probe": probe}
    best = max(fusion_layers, key=lambda i: probe["hit_rate"].get(f"layer{i}_pwe", -1.0))
    (out / "method.json").write_text(json.dumps({"layer": best}) + "\n")

    def selection(weights: Path, name: str) -> dict:
        dst = args.out.parent / f"{args.out.name}-sel-{name}"
        cmd = [sys.executable, str(ROOT / "run_eval.py"), "--split", "train", "--limit", "150",
               "--weights", str(weights), "--out", str(dst), "--no-progress"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads((dst / "metrics.json").read_text())

    sel = {} if args.no_selection else selection(out, "albef")
    record = {
        "command": " ".join(["python shapesref/scripts/albef_shapesref_probe.py",
                             *sys.argv[1:]]),
        "layout": {"text_only_layers": args.text_only, "fusion_layers": args.fusion,
                   "model_config": config.to_dict()},
        "recipe": tc.to_dict(), "time_budget_s": args.time_budget,
        "pretrain_s": t_pretrain, "pool_s": t_pool, "train_s": t_train,
        "ms_per_step": per_step * 1e3, "history": history,
        "vision_pretraining_history": vision_hist, "diagnostics": diag,
        "method_json": {"layer": best},
        "train_split_selection": {"command": "python run_eval.py --split train --limit 150 "
                                             "--weights DIR", "albef_probe": sel},
        "wall_s": time.perf_counter() - t_start,
    }
    if args.record:
        args.record.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(json.dumps({"selection_metrics": sel.get("metrics"),
                      "heldout_itm": diag["heldout_itm"]}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
