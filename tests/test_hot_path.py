"""The accelerator-ready hot path: IGRS computes only the passes it needs (also under vmap),
float settings are traced (a sweep compiles once), parameters live on the devices (warm calls
make no implicit transfer), and bad placements fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iterprime_jax as ij
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method import pipeline
from iterprime_jax.method.refine import FloatSettings, igrs, static_config
from iterprime_jax.models.conversion import convert_hf_checkpoint
from iterprime_jax.placement import place_params

GRID = (4, 4)
BASE = jnp.asarray(np.random.default_rng(0).random((2, 4, 4)), jnp.float32)
CFG = IteRPrimEConfig(layer=1)
REPO = Path(__file__).resolve().parents[1]


def counting_step(direction: jnp.ndarray, calls: list[int]):
    """P(match) = 0.5 + direction * (hidden fraction) / 2 (direction (B,): +1 accepts every
    pass, -1 rejects pass 1); heat = BASE on visible patches. Each executed pass appends its
    batch size to `calls` (a host callback: counts what runs, not what is traced)."""

    def step(keep):
        jax.debug.callback(lambda k: calls.append(int(k.shape[0])), keep)
        k = keep.reshape(-1, *GRID).astype(jnp.float32)
        hidden = 1.0 - k.mean(axis=(1, 2))
        h = BASE[: k.shape[0]] * k
        lo = h.min(axis=(1, 2), keepdims=True)
        h = (h - lo) / (h.max(axis=(1, 2), keepdims=True) - lo + 1e-9)
        return h, 0.5 + direction * hidden / 2

    return step


def fori_igrs(step, batch, config):
    """Today's reference semantics: every configured pass runs (a Python loop), a stopped
    sample is frozen by masking."""
    n, a = config.iterations, config.alpha
    floats = FloatSettings.of(config)

    def hide(h):
        s = jax.nn.sigmoid(floats.stretch_sharpness * (h - floats.stretch_center))
        s = s / jnp.max(s, axis=(-2, -1), keepdims=True)
        return s >= floats.mask_threshold

    h0, p0 = step(jnp.ones((batch, 16), jnp.int32))
    running, keep, prev = h0, ~hide(h0), p0
    active, count, first = (jnp.ones((batch,), bool), jnp.ones((batch,), jnp.int32),
                            jnp.ones((batch,), bool))
    scores = [p0] + [jnp.full((batch,), jnp.nan)] * (n - 1)
    for i in range(1, n):
        hi, pi = step(keep.reshape(batch, -1).astype(jnp.int32))
        accept = active & (pi >= prev)
        blend = accept | (active & ~accept & config.keep_rejected)
        running = jnp.where(blend[:, None, None], (1 - a) * running + a * hi, running)
        keep = jnp.where(accept[:, None, None], keep & ~hide(hi), keep)
        scores[i] = jnp.where(active, pi, jnp.nan)
        prev = jnp.where(accept, pi, prev)
        active, count, first = accept, count + accept, first & ~blend
    return running, count, jnp.stack(scores, 1), keep, first


@pytest.mark.parametrize("direction,passes", [((-1.0, -1.0), 2), ((1.0, 1.0), 5),
                                              ((1.0, -1.0), 5)])
def test_igrs_runs_only_the_passes_it_needs(direction, passes):
    cfg = IteRPrimEConfig(iterations=5)
    calls: list[int] = []
    step = counting_step(jnp.asarray(direction), calls)
    res = jax.jit(lambda: igrs(step, 2, GRID, cfg))()
    jax.effects_barrier()
    assert len(calls) == passes, calls  # all stopped after pass 1: 2 of 5 passes run
    ref = fori_igrs(counting_step(jnp.asarray(direction), []), 2, cfg)
    np.testing.assert_allclose(res.heat, ref[0], atol=1e-6)  # eager vs jit rounding
    np.testing.assert_array_equal(res.iterations, ref[1])
    np.testing.assert_allclose(res.scores, ref[2], atol=1e-6)
    np.testing.assert_array_equal(res.keep, ref[3])
    np.testing.assert_array_equal(res.first_pass, ref[4])


def test_igrs_under_vmap_keeps_stopped_images_unchanged():
    """vmap over images (the evaluator): the loop runs while any image has an active sentence;
    the stopped image's result equals its own unbatched run."""
    cfg = IteRPrimEConfig(iterations=4)
    directions = jnp.asarray([[-1.0, -1.0], [1.0, 1.0]])  # image 0 stops, image 1 goes on

    def one(direction):
        return igrs(counting_step(direction, []), 2, GRID, cfg)

    batched = jax.jit(jax.vmap(one))(directions)
    for k in range(2):
        single = jax.jit(one)(directions[k])
        for a, b in zip(jax.tree_util.tree_leaves(single),
                        jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, k=k: x[k],
                                                                         batched)),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    assert batched.iterations.tolist() == [[1, 1], [4, 4]]


def _image(h=48, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _proposals(h=48, w=40, n=3):
    props = np.zeros((n, h, w), bool)
    for i in range(n):
        props[i, (i * h) // n: ((i + 1) * h) // n] = True
    return props


FLOAT_SWEEP = [dict(alpha=0.3), dict(mask_threshold=0.4), dict(stretch_sharpness=10.0),
               dict(stretch_center=0.6), dict(heat_threshold=0.3),
               dict(alpha=0.7, mask_threshold=0.6, stretch_sharpness=30.0,
                    stretch_center=0.4, heat_threshold=0.7)]


def test_float_setting_sweep_compiles_once(tiny_model):
    base = CFG.replace(max_components=10)  # structural: its own cache entries
    ij.segment(tiny_model, _image(), "the man on the left", _proposals(), base)  # warm
    ij.segment(tiny_model, _image(), "the man on the left", None, base)
    before = pipeline.segment_core_jit._cache_size()
    heats = []
    for change in FLOAT_SWEEP:
        cfg = base.replace(**change)
        r = ij.segment(tiny_model, _image(), "the man on the left", _proposals(), cfg)
        t = ij.segment(tiny_model, _image(), "the man on the left", None, cfg)
        heats.append(r.heatmap)
        # traced floats give what the same config compiled in (floats as constants) gives
        prep = pipeline.prepare_image(_image(), tiny_model.config, _proposals())
        batch = pipeline.encode_texts(tiny_model, ["the man on the left"], cfg)
        text = pipeline.pad_text(batch, 1, pipeline.text_length_bucket(
            batch.attention_mask, batch.input_ids.shape[1]))
        embeds = pipeline.encode_image_jit(tiny_model.params, tiny_model.config,
                                           prep.pixels[None])
        const = jax.jit(lambda *a: pipeline.segment_core(*a), static_argnums=(1, 2, 3))(
            tiny_model.params, tiny_model.config, cfg, prep.canvas, pipeline.CoreInputs(
                embeds, text, np.asarray(prep.hw, np.int32), prep.proposal_arrays))
        np.testing.assert_allclose(r.heatmap, np.asarray(const.heat[0, :48, :40]), atol=1e-6)
        assert r.iterations == int(const.igrs.iterations[0])
        assert np.array_equal(t.mask, t.heatmap >= cfg.heat_threshold)
    print(f"compilations over a {len(FLOAT_SWEEP)}-point float sweep: "
          f"{pipeline.segment_core_jit._cache_size() - before}")
    assert pipeline.segment_core_jit._cache_size() == before
    assert not all(np.array_equal(heats[0], h) for h in heats[1:])  # the settings act


def test_static_config_keeps_structure_and_resets_floats():
    cfg = IteRPrimEConfig(alpha=0.9, heat_threshold=0.1, iterations=2, max_components=4)
    s = static_config(cfg)
    assert (s.iterations, s.max_components) == (2, 4)
    assert FloatSettings.of(s) == FloatSettings.of(IteRPrimEConfig())
    assert static_config(cfg.replace(alpha=0.1)) == s  # one jit cache key


def test_params_on_device_and_warm_calls_make_no_implicit_transfer(tiny_model):
    leaves = jax.tree_util.tree_leaves(tiny_model.params)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    img, props = _image(), _proposals()
    exprs = [["the man on the left", "a car"], ["left guy"]]
    ij.segment_batch(tiny_model, img, ["the man on the left", "a car"], props, CFG)  # warm
    ij.segment_images(tiny_model, [img, _image(seed=1)], exprs, [props, props], CFG)
    with jax.transfer_guard("disallow"):
        res = ij.segment_batch(tiny_model, img, ["the man on the left", "a car"], props,
                               CFG.replace(alpha=0.5))
        many = ij.segment_images(tiny_model, [img, _image(seed=1)], exprs, [props, props],
                                 CFG.replace(heat_threshold=0.4))
    assert len(res) == 2 and res[0].mask.shape == (48, 40)
    assert [len(m) for m in many] == [2, 1]


def test_bad_sharding_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match="sharding: expected a jax Mesh"):
        ij.load(tiny_model_dir, sharding="gpu:0")
    with pytest.raises(ValueError, match="sharding"):
        place_params({"w": np.zeros(2)}, 3)


@pytest.mark.slow
def test_load_on_a_mesh_of_two_devices(tiny_model_dir):
    """Two host devices: parameters replicated on a mesh, a sharding splitting them refused,
    and segment_batch runs with inputs placed next to the parameters (no implicit transfer)."""
    code = textwrap.dedent(f"""
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import iterprime_jax as ij
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        m = ij.load({str(tiny_model_dir)!r}, sharding=mesh)
        leaf = jax.tree_util.tree_leaves(m.params)[0]
        assert len(leaf.sharding.device_set) == 2 and leaf.sharding.is_fully_replicated
        try:
            ij.load({str(tiny_model_dir)!r}, sharding=NamedSharding(mesh, P("data")))
        except ValueError as e:
            assert "parameters must be replicated" in str(e), e
        else:
            raise SystemExit("a splitting sharding was accepted")
        img = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
        cfg = ij.IteRPrimEConfig(layer=1)
        ij.segment_batch(m, img, ["a man"], None, cfg)
        with jax.transfer_guard("disallow"):
            r = ij.segment_batch(m, img, ["a man"], None, cfg)
        print("OK", r[0].mask.shape)
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK (48, 40)" in out.stdout


@pytest.fixture(scope="module")
def m2f_model(tmp_path_factory):
    from tests.test_propose_e2e import tiny_hf_mask2former

    root = tmp_path_factory.mktemp("m2f_hot")
    tiny_hf_mask2former().save_pretrained(str(root / "hf"))
    convert_hf_checkpoint(root / "hf", root / "converted")
    return ij.load(root / "converted")


def test_proposer_warm_call_makes_no_implicit_transfer_and_propose_reuses_it(m2f_model):
    from iterprime_jax.models.mask2former import propose as mp

    small = ij.ProposeConfig(short_edge=96, max_size=160)
    image = _image(61, 83)
    proposer = ij.Proposer(m2f_model, small)
    first = proposer([image])
    with jax.transfer_guard("disallow"):
        again = proposer([image])
        low = proposer([image], threshold=0.2)  # a traced threshold: no new transfer rule
    np.testing.assert_array_equal(first[0], again[0])
    assert low[0].sum() >= first[0].sum()
    a = ij.propose(m2f_model, image, 0.35, small)
    p = mp._proposer_for(m2f_model, small)
    b = ij.propose(m2f_model, image, 0.5, small)
    assert mp._proposer_for(m2f_model, small) is p  # one Proposer per model and config
    np.testing.assert_array_equal(a, first[0])
    assert b.sum() <= a.sum()


def test_bad_devices_are_clear_errors(m2f_model):
    with pytest.raises(ValueError, match="devices: an empty list"):
        ij.Proposer(m2f_model, devices=[])
    with pytest.raises(ValueError, match="lists a device twice"):
        ij.Proposer(m2f_model, devices=[jax.devices()[0]] * 2)


# --------------------------------------------------------------------------- compile budget
WORDS = ("man", "woman", "dog", "car", "red", "blue", "left", "right", "tall", "small",
         "the", "on", "near", "big", "chair", "table", "green", "white", "old", "young")
SENTENCE_BUCKETS = (4, 8, 16)           # 1-15 sentences per image, MIN_SENTENCE_BUCKET 4
TEXT_BUCKETS = (8, 16, 24, 32, 40)      # 4-40 prompt tokens, multiples of TEXT_MULTIPLE
COMPILE_BUDGET = len(SENTENCE_BUCKETS) * len(TEXT_BUCKETS)  # eval_step; + 1 image encoder


def refcoco_like_split(n_images: int, rng: np.random.Generator):
    """ImageMeta + in-memory sources of a RefCOCO-like split: 1-15 sentences per image over
    1-3 refs, expressions of 1-35 one-token words (prompts of 6-40 tokens with the template;
    each image draws its longest expression, so batches spread over the text buckets)."""
    from iterprime_jax.evaluation.index import ImageMeta, RefMeta, SplitSources

    metas, examples, sent_id = [], [], 0
    for k in range(n_images):
        n_sent = int(rng.integers(1, 16))
        cuts = sorted(rng.choice(np.arange(1, n_sent), size=min(n_sent - 1, 2), replace=False)
                      ) if n_sent > 1 else []
        sizes = np.diff([0, *cuts, n_sent])
        image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        props = rng.random((5, 40, 56)) > 0.5
        refs = []
        longest = int(rng.choice([2, 8, 14, 22, 35]))  # RefCOCO: mostly short, some long
        for r, size in enumerate(sizes):
            sents = tuple(" ".join(rng.choice(WORDS, int(rng.integers(1, longest + 1))))
                          for _ in range(size))
            refs.append(RefMeta(index=len(examples), ref_id=100 * k + r, ann_id=r,
                                sent_ids=tuple(range(sent_id, sent_id + size)),
                                sentences=sents))
            sent_id += size
            examples.append({"image_id": k, "image": image, "mask": props[r],
                             "proposals": props, "proposal_ann_ids": np.arange(5)})
        metas.append(ImageMeta(position=k, image_id=k, hw=(40, 56), refs=tuple(refs),
                               num_gt_proposals=5))
    return metas, SplitSources(full=examples, mask_only=examples, light=None, name="fixture")


def test_compile_budget_over_a_refcoco_like_split(tiny_model):
    """The evaluator's loop (`run_batches`: Loader buckets, Device steps) over 24 images of
    1-15 sentences and 6-40 token prompts compiles eval_step at most once per (sentence
    bucket, text-length bucket) = 3 x 5 = 15 times: batch size, canvas and proposal bucket
    are fixed per run, and float settings are traced (a second row differing only in floats
    adds nothing)."""
    from iterprime_jax.evaluation import runner
    from iterprime_jax.evaluation.config import AblationRow, EvalConfig
    from iterprime_jax.evaluation.device import Device, eval_step
    from iterprime_jax.evaluation.proposals import ProposalSource

    rng = np.random.default_rng(0)
    metas, sources = refcoco_like_split(24, rng)
    method = CFG.replace(max_components=9)  # its own cache entries
    ctx = runner.Context(config=EvalConfig(), model=tiny_model, device=Device(tiny_model),
                         sources=sources, images=metas, proposals=ProposalSource("gt"),
                         canvas=64, batch_size=2, weights=Path("."))
    seen: list[tuple[int, int]] = []
    samples = []

    def on_batch(batch, outs):
        seen.append(tuple(batch.text.input_ids.shape[1:]))  # (sentence bucket, text length)
        samples.extend(r for recs in runner.sample_records(batch, outs[0]) for r in recs)

    before = eval_step._cache_size()
    enc_before = pipeline.encode_image_jit._cache_size()
    rows = [AblationRow("a", method, True), AblationRow("b", method.replace(alpha=0.5), True)]
    runner.run_batches(ctx, metas, rows, on_batch)
    compiled = eval_step._cache_size() - before
    print(f"eval_step compilations: {compiled} over {len(set(seen))} (sentence, text) "
          f"buckets; budget {COMPILE_BUDGET}; image encoder "
          f"{pipeline.encode_image_jit._cache_size() - enc_before}")
    assert len(samples) == sum(m.num_sentences for m in metas)
    assert {s for s, _ in seen} <= set(SENTENCE_BUCKETS)
    assert {t for _, t in seen} <= set(TEXT_BUCKETS)
    assert len(set(seen)) >= 4  # the fixture does spread over the buckets
    assert compiled <= len(set(seen)) <= COMPILE_BUDGET
    assert pipeline.encode_image_jit._cache_size() - enc_before <= 1


# --------------------------------------------------------------------------- matmul precision
def test_precision_setting(tiny_model_dir, tiny_model):
    with pytest.raises(ValueError, match=r"precision must be one of \('highest', 'high', "
                                         r"'default'\), got 'fastest'"):
        ij.load(tiny_model_dir, precision="fastest")
    assert tiny_model.precision == "highest"  # the default: the parity tests' precision
    high = ij.load(tiny_model_dir, precision="high")
    a = ij.segment(tiny_model, _image(), "the man on the left", _proposals(), CFG)
    b = ij.segment(high, _image(), "the man on the left", _proposals(), CFG)
    if jax.default_backend() == "cpu":  # float32 products whatever the setting
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
    else:
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=5e-2)


# --------------------------------------------------------------------------- proposals on device
def test_component_count_on_device_equals_scipy():
    from iterprime_jax.method.select import count_components, count_components_device

    rng = np.random.default_rng(0)
    masks = rng.random((24, 30, 41)) < rng.uniform(0.2, 0.8, (24, 1, 1))
    snake = np.zeros((1, 30, 41), bool)  # one long path: many propagation steps
    snake[0, ::2] = True
    snake[0, 1::4, -1] = True
    snake[0, 3::4, 0] = True
    masks = np.concatenate([masks, snake, np.zeros((1, 30, 41), bool)])
    got = np.asarray(jax.jit(count_components_device)(masks))
    np.testing.assert_array_equal(got, count_components(masks))
    assert got[-2] == 1 and got[-1] == 0 and got.max() > 5


def test_proposals_on_canvas_stays_on_device_and_matches_the_host_layout():
    """Two proposer groups of different sizes, rows in image order with the last repeated (a
    padded batch): the arrangement runs under a disallow guard (only its explicit transfers)
    and equals the host layout (masks on the canvas, scipy's component counts)."""
    from iterprime_jax.evaluation.loader import proposals_on_canvas
    from iterprime_jax.method.select import count_components

    rng = np.random.default_rng(1)
    canvas, n_padded, q = 64, 8, 5
    a = rng.random((2, q, 48, 64)) < 0.3   # images 0 and 2: one bucket (rows 2 and 1 of it)
    b = rng.random((1, q, 64, 40)) < 0.3   # image 1: another bucket
    groups = [([2, 0], None, jax.device_put(a)), ([1], None, jax.device_put(b))]
    rows = [0, 1, 2, 2]
    first = proposals_on_canvas(groups, rows, canvas, n_padded, jax.devices()[0])
    with jax.transfer_guard("disallow"):
        masks, valid, comps = proposals_on_canvas(groups, rows, canvas, n_padded,
                                                  jax.devices()[0])
    host = {2: a[0], 0: a[1], 1: b[0]}
    want = np.zeros((len(rows), n_padded, canvas, canvas), bool)
    for r, i in enumerate(rows):
        want[r, :q, : host[i].shape[1], : host[i].shape[2]] = host[i]
    np.testing.assert_array_equal(np.asarray(masks), want)
    np.testing.assert_array_equal(np.asarray(masks), np.asarray(first[0]))
    np.testing.assert_array_equal(np.asarray(valid),
                                  np.broadcast_to(np.arange(n_padded) < q, (len(rows), n_padded)))
    np.testing.assert_array_equal(np.asarray(comps),
                                  [count_components(w) for w in want])
    assert np.asarray(comps)[:, :q].max() > 1
