"""Short training runs of the ShapesRef ITM model, one recipe change each, compared on what
IteRPrimE needs from it.

    python shapesref/scripts/recipe_probe.py NAME [--steps 3000] [--set FIELD=VALUE ...] [--out DIR]
                                      [--vision-init FILE]

Trains `training.TrainConfig` with the given overrides (`--set pos_init=sincos`,
`--set relation_pairs=6`, ...) for `--steps` steps, then reports what `training.diagnose`
measures (as the training CLI's own run does) and the patch position information
(`patch_position_info.py`):
- held-out ITM accuracy (`training.evaluate_itm`) and per hard-negative type
  (`training.itm_by_negative_kind`): which words the matching score checks;
- the localisation probe on the ShapesRef *train* split (`training.localisation_probe`): per text
  layer, the fraction of sentences whose Grad-CAM heat argmax lies inside the referred object,
  by expression kind, and on any object.
Prints a table and writes `bench/results/recipe-NAME.json` (recipe, timings, all of the above).
Run two at once pinned to one core each (`taskset -c 0 ...`, `taskset -c 1 ...`) on a 2-core
machine: about 14 min for 3,000 steps of the shipped recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from shapesref import training

try:  # run as a script, or imported as shapesref.scripts.recipe_probe
    from patch_position_info import patch_position_information
except ImportError:
    from shapesref.scripts.patch_position_info import patch_position_information


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """`FIELD=VALUE` strings -> TrainConfig overrides, typed like the field's default."""
    defaults = training.TrainConfig()
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not hasattr(defaults, name):
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a TrainConfig field")
        out[name] = type(getattr(defaults, name))(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "bench" / "results"))
    ap.add_argument("--vision-init", default=None,
                    help="ViT from `python -m shapesref.training.pretrain --out FILE` "
                         "(default: from scratch)")
    ap.add_argument("--save-weights", default=None, metavar="DIR",
                    help="also save the trained model there (loadable with iterprime_jax.load)")
    args = ap.parse_args()
    over = {"steps": args.steps, "workers": 1, **parse_overrides(args.set)}
    tc = dataclasses.replace(training.TrainConfig(), **over)
    tok = training.make_tokenizer()
    t0 = time.perf_counter()
    vision = training.load_vision(args.vision_init) if args.vision_init else None
    params, config, history, tc = training.train(tc, tok, progress=True, vision_init=vision)
    train_s = time.perf_counter() - t0
    diag = training.diagnose(params, config, tok, tc)
    diag["patch_position_information"] = patch_position_information(params["vision_model"],
                                                                     config)
    itm, by_neg, probe = (diag["heldout_itm"], diag["heldout_itm_by_negative"],
                          diag["localisation_probe"])
    record = {"name": args.name, "overrides": over, "vision_init": args.vision_init,
              "recipe": tc.to_dict(),
              "train_time_s": train_s, "final_history": history[-3:], **diag}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"recipe-{args.name}.json"
    path.write_text(json.dumps(record, indent=1))

    print(f"{args.name}: {over}, trained in {train_s:.0f}s, held-out ITM {itm['accuracy']:.3f}")
    print(f"probe best {probe['best']} = {probe['hit_rate'][probe['best']]:.3f}")
    print("layer  kind       hit   | on any object")
    for key, by_kind in probe["hit_rate_by_kind"].items():
        if key.endswith("plain"):
            for kind, v in by_kind.items():
                print(f"{key:<13}{kind:<10}{v:.3f} | {probe['on_any_object_rate'][key]:.3f}")
    print("ITM accuracy per negative type:")
    for kind, groups in by_neg.items():
        print(f"  {kind:<10}" + "  ".join(f"{g} {v['accuracy']:.2f}" for g, v in groups.items()))
    print(f"patch position information: {diag['patch_position_information']}")
    if args.save_weights:
        training.save_model(args.save_weights, params, config)
        print(f"weights in {args.save_weights}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
