"""Sensitivity probe: each candidate step applied one-shot (no recovery) to a copy of the model, then measured on a
short slice of the bundled held-out text: perplexity, and top-1 agreement with the dense model at every position.

    from planner.models import load_model
    from planner.prune.specs import LayerPruning, MlpChannelPruning
    from planner.quant.specs import QuantSpec

    report = probe(load_model(None), [(MlpChannelPruning(ratio=0.25, round_to=64), None),
                                      (LayerPruning(num_layers=3), None),
                                      (None, QuantSpec(scheme="int8-weight-only"))])
    step = report.step(LayerPruning(num_layers=3))
    step.ppl_increase, step.top1_agreement, step.error

What is shared: the dense model is measured once (its perplexity and its argmax token at every position); the
calibration tokens are built once; the structured kinds' importance scores are computed once per criterion and reused
by every ratio (`sharing.shared_importance`); every step starts from a fresh copy of the loaded model, which is never
modified. Results are cached on disk (`planner.probe.cache`): a second probe with the same model, steps and settings
runs no forward pass.

The slice is short on purpose (the plan has a time budget); `bench/probe_time.py` measures how far its figures are
from the 16k-token evaluation `plan run` does. Both are relative increases over the dense model on the same tokens.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, computed_field

from planner.docbase import Doc
from planner.errors import InputError
from planner.probe import cache as store
from planner.prune.specs import CalibrationSpec, PruneSpec
from planner.quant.specs import QuantSpec

# chosen with bench/probe_time.py on SmolLM2-135M: see the noise check there. Calibration matters most: at 4 x 128
# tokens a 25% MLP cut measured +80% one-shot, at 8 x 256 +57%, at plan run's 32 x 512 +51% (16k-token evaluation)
DEFAULT_TOKENS = 1024
DEFAULT_SEQ_LEN = 256
DEFAULT_CALIBRATION = CalibrationSpec(num_samples=8, seq_len=256)
BATCH_TOKENS = 1024  # tokens per forward pass: bounds the logits held at once (tokens x vocab floats)


class StepProbe(Doc):
    """One step, measured one-shot. `ppl` is None when the step could not be applied (`error` says why)."""

    prune: PruneSpec | None = None
    quantize: QuantSpec | None = None
    ppl: float | None = Field(None, gt=0)
    ppl_dense: float = Field(gt=0)
    top1_agreement: float | None = Field(None, ge=0, le=1)  # share of positions where the argmax equals dense's
    seconds: float = 0.0  # what measuring it took (when `cached`: in the probe that recorded it)
    cached: bool = False
    error: str | None = None

    @computed_field
    @property
    def ppl_increase(self) -> float | None:
        """Relative perplexity increase over dense, e.g. 0.12 for +12%."""
        return None if self.ppl is None else self.ppl / self.ppl_dense - 1.0

    @property
    def label(self) -> str:
        return _label(self.prune, self.quantize)

    def matches(self, prune=None, quantize=None) -> bool:
        return _same_spec(self.prune, prune) and _same_spec(self.quantize, quantize)


class ProbeReport(Doc):
    version: int = 1
    model: str  # the model's display name
    model_key: str  # cache key of the model (planner.probe.cache.model_key)
    tokens: int  # held-out positions each perplexity averages over (windows x (seq_len - 1))
    seq_len: int
    calibration: CalibrationSpec
    ppl_dense: float = Field(gt=0)
    steps: list[StepProbe] = Field(default_factory=list)
    seconds: float = 0.0  # wall time of this probe, cached steps included

    def step(self, prune=None, quantize=None) -> StepProbe:
        """The probe of the step (prune, quantize); a KeyError when it was not probed."""
        for s in self.steps:
            if s.matches(prune, quantize):
                return s
        raise KeyError(f"step {_label(prune, quantize)} was not probed")


def probe(loaded_model, steps, *, tokens: int = DEFAULT_TOKENS, seq_len: int = DEFAULT_SEQ_LEN,
          calibration: CalibrationSpec | None = None, cache: bool = True, progress: bool = False
          ) -> ProbeReport:
    """Measure every (prune spec or None, quant spec or None) in `steps` one-shot on `loaded_model`
    (a planner.models.LoadedModel, left unchanged): perplexity on `tokens` held-out tokens in windows of `seq_len`
    (`heldout_windows`), and top-1 agreement with the dense model there. Pruning calibrates on `calibration`
    (default: 8 x 256 tokens of the bundled calibration text). A step the engines refuse (an InputError: a ratio that
    removes nothing whole, a scheme this device cannot run) is reported with its `error`, not raised."""
    import torch
    from tqdm.auto import tqdm

    from planner.evaluate.agreement import max_positions
    from planner.prune.masked.calibration import calibration_ids

    start = time.perf_counter()
    model, tokenizer = loaded_model.model, loaded_model.tokenizer
    limit = max_positions(model)
    seq_len = min(seq_len, limit) if limit else seq_len
    calibration = calibration or DEFAULT_CALIBRATION
    if limit and calibration.seq_len > limit:
        calibration = calibration.model_copy(update={"seq_len": limit})
    data = heldout_windows(tokenizer, tokens, seq_len)
    calib = calibration_ids(tokenizer, calibration).to(next(model.parameters()).device)  # one tensor: shared scores
    model_key = store.model_key(loaded_model)
    eval_key, calib_key = store.tensor_digest(data), store.tensor_digest(calib)
    batch_size = max(1, BATCH_TOKENS // seq_len)

    dense_key = store.digest({"what": "dense", "eval": eval_key})
    dense = store.read_record(model_key, dense_key) if cache else None
    if dense is None:
        ppl, argmax = measure(model, data, batch_size)
        dense = {"ppl": ppl, "argmax": argmax.tolist()}
        _save(cache, model_key, dense_key, dense)
    dense_argmax = torch.tensor(dense["argmax"], dtype=torch.long)

    from planner.probe.sharing import PristineCopies, shared_importance

    copies = PristineCopies(model)
    results: dict[str, StepProbe] = {}
    ordered: list[StepProbe] = []
    with shared_importance():
        for prune, quantize in tqdm(steps, desc="probe", disable=not progress, leave=False):
            key = store.digest({"what": "step", "eval": eval_key, "calibration": calib_key if prune else None,
                                "prune": _dump(prune), "quantize": _dump(quantize)})
            if key not in results:
                results[key] = _probe_step(copies, prune, quantize, data, calib, batch_size, dense, dense_argmax,
                                           model_key, key, cache)
            ordered.append(results[key])
    return ProbeReport(model=loaded_model.source.name, model_key=model_key,
                       tokens=int(data.shape[0] * (data.shape[1] - 1)), seq_len=int(data.shape[1]),
                       calibration=calibration, ppl_dense=dense["ppl"], steps=ordered,
                       seconds=time.perf_counter() - start)


def _probe_step(copies, prune, quantize, data, calib, batch_size, dense, dense_argmax, model_key, key,
                use_cache) -> StepProbe:
    common = dict(prune=prune, quantize=quantize, ppl_dense=dense["ppl"])
    if prune is None and quantize is None:  # the dense model itself
        return StepProbe(**common, ppl=dense["ppl"], top1_agreement=1.0)
    found = store.read_record(model_key, key) if use_cache else None
    if found is not None:
        return StepProbe(**common, ppl=found["ppl"], top1_agreement=found["top1_agreement"],
                         seconds=found["seconds"], cached=True)
    start = time.perf_counter()
    work = copies.fresh()
    try:
        apply_step(work, prune, quantize, calib)
    except InputError as exc:  # not cached: cheap to find again, and may change (torchao installed, another device)
        return StepProbe(**common, error=str(exc), seconds=time.perf_counter() - start)
    ppl, argmax = measure(work, data, batch_size)
    agreement = float((argmax == dense_argmax).float().mean())
    seconds = time.perf_counter() - start
    _save(use_cache, model_key, key, {"ppl": ppl, "top1_agreement": agreement, "seconds": seconds})
    return StepProbe(**common, ppl=ppl, top1_agreement=agreement, seconds=seconds)


def apply_step(model, prune, quantize, calib_ids) -> None:
    """Prune (one-shot, calibrating on `calib_ids`, on the model's device), then quantize, `model` in place."""
    if prune is not None:
        from planner.prune import apply_pruning

        apply_pruning(model, prune, calib_ids, progress=False)
    if quantize is not None:
        from planner.quant.engine import quantize_model

        quantize_model(model, quantize, device=str(next(model.parameters()).device))


def heldout_windows(tokenizer, tokens: int, seq_len: int):
    """`tokens // seq_len` windows of `seq_len` held-out tokens, spread evenly over the span `plan run` evaluates
    (its first HELDOUT_TOKENS tokens), as a (windows, seq_len) LongTensor. Spread windows sample the run's
    text instead of its first paragraphs: on SmolLM2-135M they brought the probe's increases closer to the run's
    (bench/probe_time.py --noise-check)."""
    import torch

    from planner.data import heldout_text
    from planner.evaluate.perplexity import HELDOUT_TOKENS

    if seq_len < 2 or tokens < seq_len:
        raise InputError(f"the probe needs seq_len >= 2 and tokens >= seq_len, got tokens={tokens}, "
                         f"seq_len={seq_len}")
    ids = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"]
    span = min(len(ids), max(HELDOUT_TOKENS, tokens))
    windows = min(tokens, span) // seq_len
    if windows < 1:
        raise InputError(f"the held-out text has {len(ids)} tokens, fewer than seq_len={seq_len}")
    stride = span // windows
    return torch.tensor([ids[i * stride : i * stride + seq_len] for i in range(windows)], dtype=torch.long)


def measure(model, data, batch_size: int) -> tuple[float, Any]:
    """(perplexity, argmax token at every predicted position) of `model` on `data`, in one pass: the perplexity is
    planner.evaluate's; the argmax is read from the LM head's output on the way."""
    import torch

    from planner.evaluate.perplexity import perplexity_of_ids

    picks = []

    def keep_argmax(module, args, output):
        picks.append(output[:, :-1].argmax(-1).cpu())

    handle = model.get_output_embeddings().register_forward_hook(keep_argmax)
    try:
        ppl = perplexity_of_ids(model, data, batch_size)["ppl"]
    finally:
        handle.remove()
    return ppl, torch.cat(picks).reshape(-1)


def _save(enabled: bool, model_key: str, key: str, record: dict) -> None:
    if not enabled:
        return
    try:
        store.write_record(model_key, key, record)
    except InputError:  # an unwritable cache costs the next probe time, not this one its result
        pass


def _dump(spec) -> dict | None:
    return None if spec is None else spec.model_dump(mode="json")


def _same_spec(a, b) -> bool:
    return _dump(a) == _dump(b)


def _label(prune, quantize) -> str:
    parts = [p.model_dump_json() for p in (prune, quantize) if p is not None]
    return " + ".join(parts) or "dense"
