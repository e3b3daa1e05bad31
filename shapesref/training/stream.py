"""A training pool that grows while training runs (`StreamPool`): for an accelerator, where one
process cannot generate scenes as fast as the model consumes them.

Chunks of scenes (`data._gen_chunk`, the same generator and seeds as `data.build_pool`) are made
and tokenised in worker processes, all submitted at start. Which scenes a batch may draw from
is fixed by a schedule, not by timing: chunk `j` joins the pool once `j - initial_chunks + 1`
times `draws_per_chunk` (image, text) pairs have been drawn, and `sample` waits for it if the
workers are behind. So a run is the same whatever the machine's speed (up to float order).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from .config import TrainConfig
from .data import Pool, _gen_chunk, _make_pool

_TOKENIZER: Any = None


def _init_worker(vocab: str) -> None:
    global _TOKENIZER  # one tokenizer per worker process
    from .config import make_tokenizer

    _TOKENIZER = make_tokenizer(vocab)


def _chunk_job(args: tuple[tuple, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray, np.ndarray, np.ndarray]:
    """One chunk, tokenised: images (n, H, W, 3), ids (U, T) over the chunk's unique texts,
    pos / pos_off / neg / neg_off (chunk-local text indices and per-scene offsets)."""
    gen_args, max_len = args
    pool = _make_pool(*_gen_chunk(gen_args), _TOKENIZER, max_len)
    return pool.images, pool.ids, pool.pos, pool.pos_off, pool.neg, pool.neg_off


@dataclasses.dataclass
class _Buffers:
    images: np.ndarray
    ids: np.ndarray
    pos: np.ndarray
    pos_off: np.ndarray
    neg: np.ndarray
    neg_off: np.ndarray
    n_scenes: int = 0
    n_texts: int = 0
    n_pos: int = 0
    n_neg: int = 0


class StreamPool:
    """`Pool.sample`-compatible source whose scenes are generated in `workers` processes while
    training runs; `total_chunks` chunks of `chunk` scenes (seeded like `build_pool`, so the
    scenes equal `build_pool(recipe, tok, total_chunks * chunk, seed)`'s), `initial_chunks` before
    the first draw, one more per `draws_per_chunk` pairs drawn. Call `close()` when done."""

    def __init__(self, recipe: TrainConfig, vocab: str, seed: int, workers: int, chunk: int,
                 total_chunks: int, initial_chunks: int, draws_per_chunk: int,
                 texts_per_scene: int = 96) -> None:
        if not 1 <= initial_chunks <= total_chunks:
            raise ValueError(f"need 1 <= initial_chunks ({initial_chunks}) <= total_chunks "
                             f"({total_chunks})")
        self.chunk, self.total_chunks = chunk, total_chunks
        self.initial_chunks, self.draws_per_chunk = initial_chunks, draws_per_chunk
        self.draws = 0
        self.waits = 0
        n = chunk * total_chunks
        s = recipe.image_size
        self._buf = _Buffers(images=np.zeros((n, s, s, 3), np.uint8),
                             ids=np.zeros((n * texts_per_scene, recipe.max_text_length), np.int32),
                             pos=np.zeros(n * texts_per_scene, np.int64),
                             pos_off=np.zeros(n + 1, np.int64),
                             neg=np.zeros(n * texts_per_scene, np.int64),
                             neg_off=np.zeros(n + 1, np.int64))
        # forkserver, not fork: the caller may already run JAX's threads (fork could deadlock)
        self._ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(
            "forkserver"), initializer=_init_worker, initargs=(vocab,))
        self._futures: list[Future] = [
            self._ex.submit(_chunk_job, ((recipe, seed, j * chunk, chunk), recipe.max_text_length))
            for j in range(total_chunks)]
        self._joined = 0

    def _join(self, j: int) -> None:
        fut = self._futures[j]
        if not fut.done():
            self.waits += 1
        images, ids, pos, pos_off, neg, neg_off = fut.result()
        self._futures[j] = None  # type: ignore[call-overload]  # free the worker's result
        b = self._buf
        n = len(images)
        if b.n_texts + len(ids) > len(b.ids):
            raise RuntimeError("StreamPool text buffer full: raise texts_per_scene")
        b.images[b.n_scenes:b.n_scenes + n] = images
        b.ids[b.n_texts:b.n_texts + len(ids)] = ids
        b.pos[b.n_pos:b.n_pos + len(pos)] = pos + b.n_texts
        b.neg[b.n_neg:b.n_neg + len(neg)] = neg + b.n_texts
        b.pos_off[b.n_scenes + 1:b.n_scenes + n + 1] = pos_off[1:] + b.n_pos
        b.neg_off[b.n_scenes + 1:b.n_scenes + n + 1] = neg_off[1:] + b.n_neg
        b.n_scenes += n
        b.n_texts += len(ids)
        b.n_pos += len(pos)
        b.n_neg += len(neg)
        self._joined = j + 1

    def available_chunks(self) -> int:
        """Chunks the schedule allows at the current draw count."""
        return min(self.total_chunks, self.initial_chunks + self.draws // self.draws_per_chunk)

    def view(self) -> Pool:
        """The joined scenes as a `Pool` (views, no copies; its `mask` is a placeholder, the
        ids themselves: `sample` derives the attention mask from the drawn ids, pad id 0)."""
        want = self.available_chunks()
        while self._joined < want:
            self._join(self._joined)
        b = self._buf
        n = b.n_scenes
        ids = b.ids[:b.n_texts]
        return Pool(b.images[:n], ids, ids, [], b.pos[:b.n_pos],
                    b.pos_off[:n + 1], b.neg[:b.n_neg], b.neg_off[:n + 1])

    def __len__(self) -> int:
        return self._buf.n_scenes

    def sample(self, rng: np.random.Generator, batch: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`Pool.sample` over the scenes the schedule allows now."""
        images, ids, _, labels = self.view().sample(rng, batch)
        self.draws += batch
        return images, ids, (ids != 0).astype(np.int32), labels

    def close(self) -> None:
        self._ex.shutdown(wait=False, cancel_futures=True)
