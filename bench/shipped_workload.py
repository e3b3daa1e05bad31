"""The shipped small model (weights/shapesref-itm) as a PyTorch `BlipForImageTextRetrieval`,
and ShapesRef scenes to run it on: a workload under which later IGRS passes are accepted, so
the benchmark's parity check covers the moving average and the keep-mask update too.

The Flax parameters are mapped back onto the HF key table of `iterprime_jax`'s converter (the
inverse of its layout changes) and checked by converting the result forward again: the
round trip must reproduce every parameter exactly.

torch is a benchmark/test tool only; the library never imports this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "shapesref-itm"


def hf_config_from_ours(cfg: Any) -> Any:
    """transformers `BlipConfig` of the same architecture as our `BlipConfig`."""
    from transformers import BlipConfig as HFBlipConfig

    v, t = cfg.vision, cfg.text
    gh, gw = v.image_hw
    if gh != gw:
        raise ValueError(f"HF BLIP needs a square image size, got {v.image_hw}")
    return HFBlipConfig(
        vision_config={"image_size": gh, "patch_size": v.patch_size,
                       "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                       "num_hidden_layers": v.num_hidden_layers,
                       "num_attention_heads": v.num_attention_heads,
                       "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act},
        text_config={"vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                     "intermediate_size": t.intermediate_size,
                     "num_hidden_layers": t.num_hidden_layers,
                     "num_attention_heads": t.num_attention_heads,
                     "max_position_embeddings": t.max_position_embeddings,
                     "layer_norm_eps": t.layer_norm_eps, "hidden_act": t.hidden_act,
                     "encoder_hidden_size": t.encoder_hidden_size,
                     "pad_token_id": t.pad_token_id},
        image_text_hidden_size=cfg.projection_dim)


def torch_model_from_params(params: Any, cfg: Any) -> Any:
    """A torch `BlipForImageTextRetrieval` holding `params` (our Flax tree)."""
    import torch
    from transformers import BlipForImageTextRetrieval

    from iterprime_jax.models.blip.convert import IGNORED_BUFFERS, convert_state_dict
    from iterprime_jax.models.blip.modeling import abstract_params
    from iterprime_jax.models.keytable import flatten, map_tensor

    model = BlipForImageTextRetrieval(hf_config_from_ours(cfg)).eval()
    targets = flatten(abstract_params(cfg))
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    state = {}
    for key, value in model.state_dict().items():
        if key in IGNORED_BUFFERS:
            state[key] = value
            continue
        path, _ = map_tensor(key, value.numpy(), targets)
        ours = flat[path]
        if path[-1] == "kernel":  # Dense (in, out) -> Linear (out, in); Conv HWIO -> OIHW
            ours = ours.T if ours.ndim == 2 else ours.transpose(3, 2, 0, 1)
        if tuple(ours.shape) != tuple(value.shape):
            raise ValueError(f"{key}: {tuple(ours.shape)} vs torch {tuple(value.shape)}")
        state[key] = torch.from_numpy(np.array(ours))  # a writable copy (params may be jax arrays)
    model.load_state_dict(state)
    back = flatten(convert_state_dict({k: v.numpy() for k, v in state.items()}, cfg))
    bad = [k for k in flat if not np.array_equal(back[k], flat[k])]
    if bad or set(back) != set(flat):
        raise ValueError(f"round trip torch -> flax changed {bad[:5]}")
    return model


def shapesref_scenes(n_images: int, split: str = "val", start: int = 0
                     ) -> list[tuple[np.ndarray, list[str], np.ndarray]]:
    """(image (H, W, 3) uint8, sentences, instance masks (N, H, W) as proposals) of the first
    ShapesRef images of `split` (the default benchmark generator)."""
    try:  # a library revision from before the ShapesRef split (bench_passes' 'before' side)
        from iterprime_jax import shapesref as sr  # type: ignore[attr-defined]
    except ImportError:
        import shapesref as sr

    out = []
    for i in range(start, start + n_images):
        scene, refs = sr.generate_example(sr.ShapesRefConfig(), split, i)
        props = np.stack([o.mask for o in scene.objects]).astype(bool)
        out.append((scene.image, [s for r in refs for s in r.sentences], props))
    return out


def ours_records(model: Any, mcfg: Any, image: np.ndarray, sentences: list[str],
                 proposals: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
    """The library's per-image path (`segment_batch` without the host conversion), returning
    the patch-grid IGRS arrays and the upsampled maps, plus the unpadded text rows."""
    import jax

    from iterprime_jax.method import pipeline as pl

    batch = pl.encode_texts(model, sentences, mcfg)
    prep = pl.prepare_image(image, model.config, proposals)
    emb = pl.encode_image_jit(model.params, model.config, prep.pixels[None])
    text = pl.pad_text(batch, pl.bucket(len(sentences)),
                       pl.text_length_bucket(batch.attention_mask, batch.input_ids.shape[1]))
    out = jax.device_get(pl.segment_core_jit(
        model.params, model.config, mcfg, prep.canvas,
        pl.CoreInputs(emb, text, np.asarray(prep.hw, np.int32), prep.proposal_arrays)))
    s, (h, w) = len(sentences), prep.hw
    rec = {"heat": out.igrs.heat[:s], "heats": out.igrs.heats[:s],
           "scores": out.igrs.scores[:s], "iterations": out.igrs.iterations[:s],
           "keep": out.igrs.keep[:s], "index": out.index[:s],
           "has_candidate": out.has_candidate[:s], "up": out.heat[:s, :h, :w]}
    rows = (batch.input_ids, batch.attention_mask, batch.focus, batch.primary)
    return rec, rows


def accepting_scenes(model: Any, mcfg: Any, want: int, limit: int, skip: int = 0
                     ) -> list[int]:
    """Indices (in ShapesRef val, from `skip` on, at most `limit` scanned) of the first `want`
    scenes where the library accepts a later IGRS pass for some sentence: the inputs of the
    accept-branch check (found with the fast library; the reference then runs on them)."""
    found = []
    for i in range(skip, skip + limit):
        (image, sentences, props), = shapesref_scenes(1, start=i)
        rec, _ = ours_records(model, mcfg, image, sentences, props)
        if np.any(rec["iterations"] > 1):
            found.append(i)
            if len(found) == want:
                break
    return found


def shipped_parity(n_images: int, compare: Any, ref_records: Any,
                   weights: Path = SHIPPED, accepting: int = 2, scan: int = 200
                   ) -> dict[str, Any]:
    """The torch reference against the library on the first `n_images` ShapesRef val scenes
    and on the first `accepting` scenes (of the next `scan`) where a later IGRS pass is
    accepted, with the shipped model and its recommended method config; `compare` and
    `ref_records` are bench_pipeline's; `weights` may name another trained small model.
    Reports how many sentences had 1, 2 and 3 accepted passes."""
    import torch_reference as tr

    import iterprime_jax as ij

    model = ij.load(weights)
    mcfg = ij.method_config(model)
    chosen = list(range(n_images)) + accepting_scenes(model, mcfg, accepting, scan, n_images)
    tmodel = torch_model_from_params(model.params, model.config)
    ref = tr.Reference(tmodel, layer=mcfg.layer, iterations=mcfg.iterations, alpha=mcfg.alpha,
                       max_components=mcfg.max_components)
    reports, accepted = [], [0] * mcfg.iterations
    scenes = [shapesref_scenes(1, start=i)[0] for i in chosen]
    for image, sentences, props in scenes:
        orec, rows = ours_records(model, mcfg, image, sentences, props)
        ncomp = tr.count_components(props)
        results = [ref.segment(image, tr.Sentence.from_arrays(*(r[j] for r in rows)), props,
                               ncomp) for j in range(len(sentences))]
        rrec = ref_records(results, mcfg.iterations)
        reports.append(compare(rrec, orec, mcfg.iterations, mcfg))
        for it in rrec["iterations"]:
            accepted[int(it) - 1] += 1
    ref.hooks.remove()
    keys = ("max_abs_pass_heat", "max_abs_final_heat", "max_abs_p_match",
            "max_abs_upsampled_heat")
    out = {k: max(r[k] for r in reports) for k in keys}
    out.update({
        "model": str(weights), "method": {"layer": mcfg.layer,
                                                            "iterations": mcfg.iterations,
                                                            "alpha": mcfg.alpha},
        "images": len(chosen), "scene_indices": chosen,
        "sentences": sum(r["sentences"] for r in reports),
        "sentences_by_accepted_passes": {str(i + 1): n for i, n in enumerate(accepted)},
        "same_selection": sum(int(a == b) for r in reports
                              for a, b in zip(r["index_ref"], r["index_ours"], strict=True)),
        "flips": sum((r["flips"] for r in reports), []),
        "selection_ties": sum((r["selection_ties"] for r in reports), []),
        "failures": sum((r["failures"] for r in reports), []),
        "ok": all(r["ok"] for r in reports)})
    return out
