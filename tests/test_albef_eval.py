"""`run_eval.py --weights DIR` end to end with a tiny ALBEF converted from a synthetic
`ALBEF.pth`: a ShapesRef and a RefCOCO-fixture (refer layout) evaluation, with the converted
`method.json` (the authors' settings: no trailing [SEP], authors_code) in force."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import iterprime_jax as ij
import run_eval
from iterprime_jax.method import language
from iterprime_jax.models.convert import main as convert_main
from shapesref import ShapesRefConfig, write_shapesref
from tests.albef_ref import Sizes, random_albef_state_dict, save_pth
from tests.refer_fixture import write_refer_fixture
from tests.test_albef import bert_config_json, cli_args

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SIZES = Sizes(image=32, patch=8, v_width=16, v_depth=1, v_heads=2, t_width=16, t_layers=3,
              t_heads=2, t_inter=24, fusion=1, max_pos=48)
SHAPES = ShapesRefConfig(num_train=0, num_val=6, num_test_a=0, num_test_b=0, seed=5)


class SpacyShapedAsStanza:
    """A stand-in for Stanza's English pipeline (its models cannot be downloaded here): spaCy's
    words as Stanza words (1-based ``id``, ``text``, UPOS ``pos``) and a flat constituency tree
    with spaCy's noun chunks as innermost NPs, read by Stanza's own tree reader."""

    def __init__(self) -> None:
        self.nlp, self.calls = language.load_spacy(), 0

    def __call__(self, text: str) -> SimpleNamespace:
        from stanza.models.constituency import tree_reader

        self.calls += 1
        d = self.nlp(text)
        leaf = {t.i: f"({t.tag_ if t.tag_ not in '()' else 'PUNCT'} {t.text})" for t in d}
        parts, i = [], 0
        for chunk in d.noun_chunks:
            parts += [leaf[j] for j in range(i, chunk.start)]
            parts.append("(NP " + " ".join(leaf[j] for j in range(chunk.start, chunk.end)) + ")")
            i = chunk.end
        parts += [leaf[j] for j in range(i, len(d))]
        tree = tree_reader.read_trees("(ROOT (S " + " ".join(parts) + "))")[0]
        words = [SimpleNamespace(id=t.i + 1, text=t.text, pos=t.pos_) for t in d]
        return SimpleNamespace(sentences=[SimpleNamespace(words=words, constituency=tree)])


@pytest.fixture
def stanza_stub(monkeypatch: pytest.MonkeyPatch):
    """`load_stanza` returns `SpacyShapedAsStanza` for the test (parser cache cleared around)."""
    pytest.importorskip("stanza.models.constituency.tree_reader")
    stub = SpacyShapedAsStanza()
    language._stanza_parser.cache_clear()
    monkeypatch.setattr(language, "load_stanza", lambda resources_dir=None: stub)
    yield stub
    language._stanza_parser.cache_clear()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("albef_eval")
    save_pth(random_albef_state_dict(SIZES, seed=3), root / "ALBEF.pth")
    bert = bert_config_json(SIZES, root / "config_bert.json")
    convert_main(cli_args(SIZES, root / "ALBEF.pth", root / "albef", bert))
    write_shapesref(root / "shapes_manual", SHAPES)
    write_refer_fixture(root / "refer_manual")
    return {"root": root, "model": root / "albef", "data_dir": root / "tfds"}


def _run(env: dict, dataset: str, manual: str, out: Path, *extra: str) -> list[dict]:
    args = ["--dataset", dataset, "--split", "val", "--manual-dir", str(env["root"] / manual),
            "--data-dir", str(env["data_dir"]), "--weights", str(env["model"]),
            "--out", str(out), "--no-progress", *extra]
    assert run_eval.main(args) == 0
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_shapesref_and_refer_fixture_end_to_end(env: dict, stanza_stub) -> None:
    """The converted method.json runs the authors' Stanza rule by default (Stanza stubbed);
    ``--parser spacy`` overrides it."""
    lines = _run(env, "shapesref", "shapes_manual", env["root"] / "shapes_out")
    assert len(lines) > 0 and stanza_stub.calls > 0
    assert all(0 <= x["IoU"] <= 1 and x["I"] <= x["U"] for x in lines)
    run = json.loads((env["root"] / "shapes_out" / "run_config.json").read_text())
    text = json.dumps(run)
    assert '"authors_code": true' in text and '"append_sep": false' in text
    assert '"layer": 2' in text and '"parser": "stanza"' in text
    metrics = json.loads((env["root"] / "shapes_out" / "metrics.json").read_text())["metrics"]
    assert np.isfinite(metrics["val"]["mIoU"])

    lines = _run(env, "refcoco_unc", "refer_manual", env["root"] / "refer_out",
                 "--canvas", "64", "--convention", "iterprime", "--parser", "spacy")
    assert len(lines) > 0
    run = json.loads((env["root"] / "refer_out" / "run_config.json").read_text())
    assert run["method"]["parser"] == "spacy" and run["method"]["authors_code"]
    assert all(x["I"] <= x["U"] for x in lines)


def test_segment_api_takes_the_albef_model(env: dict, stanza_stub) -> None:
    """`ij.segment` with the converted model and its method.json: a mask and a heat map of the
    image's size; the prompt has no [SEP] (the ALBEF convention)."""
    model = ij.load(env["model"])
    method = ij.method_config(model)
    assert method.layer == 2 and not method.append_sep and method.parser == "stanza"
    image = (np.random.default_rng(0).random((30, 44, 3)) * 255).astype(np.uint8)
    props = np.zeros((2, 30, 44), bool)
    props[0, :15] = True
    props[1, 15:] = True
    res = ij.segment(model, image, "the red circle left of the square", props, method)
    assert res.mask.shape == (30, 44) and res.heatmap.shape == (30, 44)
    assert res.proposal_index in (0, 1) and stanza_stub.calls == 1
