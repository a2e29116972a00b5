"""Layer-by-layer calibration: the inputs of decoder layer i are the outputs of the already-pruned layers < i.

Only one layer's activations are held at a time (the hidden states of all calibration samples entering the
current layer, replaced chunk by chunk by its outputs), so memory stays near one model copy plus
num_samples x seq_len x hidden floats, plus the statistics of the current layer's linears (a vector per input
for Wanda, an in x in matrix per distinct input for SparseGPT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.errors import InputError

CHUNK_SAMPLES = 4  # samples per forward: small enough to keep attention scores small, large enough for fast GEMMs


class _StopForward(Exception):
    pass


def calibration_ids(tokenizer, spec=None):
    """(N, L) token ids from `spec` (a CalibrationSpec; default 32 x 512 of the bundled calibration text)."""
    from planner.data import calibration_text, read_text_files, token_blocks
    from planner.prune.specs import CalibrationSpec

    spec = spec or CalibrationSpec()
    text = read_text_files(spec.text_files) if spec.text_files else calibration_text()
    return token_blocks(tokenizer, text, spec.num_samples, spec.seq_len)


def check_ids(calib_ids, criterion: str):
    import torch

    if calib_ids is None:
        raise InputError(
            f"criterion {criterion!r} needs calibration tokens: pass calib_ids (an (N, L) LongTensor, e.g. "
            "planner.data.token_blocks(...)) or tokenizer=...; criterion 'magnitude' needs none"
        )
    if not isinstance(calib_ids, torch.Tensor) or calib_ids.dim() != 2 or calib_ids.dtype != torch.long:
        got = getattr(calib_ids, "shape", type(calib_ids).__name__)
        raise InputError(f"calib_ids must be an (N, L) LongTensor of token ids, got {got}")
    return calib_ids


@dataclass
class LayerInputs:
    """Hidden states entering the current layer, in chunks, with the other arguments the model passed to its
    decoder layers for each chunk (attention mask, rotary embeddings, position ids...)."""

    hidden: list[Any] = field(default_factory=list)
    extra_args: list[tuple] = field(default_factory=list)
    extra_kwargs: list[dict] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def capture_first_inputs(model, layers, calib_ids, chunk: int = CHUNK_SAMPLES) -> LayerInputs:
    """Run the model up to its first decoder layer on every chunk of `calib_ids` and keep what that layer gets."""
    import torch

    device = next(model.parameters()).device
    inputs = LayerInputs()

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.hidden.append(hidden.detach())
        inputs.extra_args.append(tuple(args[1:]))
        inputs.extra_kwargs.append(dict(kwargs))
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, calib_ids.shape[0], chunk):
                try:
                    model(input_ids=calib_ids[start : start + chunk].to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return inputs


def run_layer(layer, inputs: LayerInputs, replace: bool) -> None:
    """Forward every chunk through `layer`; with `replace`, each chunk's input is replaced by the output."""
    import torch

    with torch.no_grad():
        for i, hidden in enumerate(inputs.hidden):
            out = layer(hidden, *inputs.extra_args[i], **inputs.extra_kwargs[i])
            if replace:
                inputs.hidden[i] = (out[0] if isinstance(out, tuple) else out).detach()


class InputStats:
    """Statistics of the inputs of several linears, accumulated by forward hooks over calibration tokens.

    Linears fed the same tensor (q/k/v, gate/up) share one accumulator: a Hessian costs tokens x in^2 FLOPs, so
    computing it once per distinct input instead of once per projection saves most of SparseGPT's statistics time.
    """

    def __init__(self, modules: dict[str, Any], hessian: bool, stop_after: str | None = None):
        self.modules = modules
        self.stop_after = stop_after  # a module whose output is not needed: stop the forward at its input
        self.want_hessian = hessian
        self.alias: dict[str, str] = {}  # name -> the name whose accumulator it shares
        self.tokens: dict[str, int] = {}
        self.sq_sum: dict[str, Any] = {}
        self.xtx: dict[str, Any] = {}
        self._first_chunk: list[tuple[Any, str]] | None = []
        self._handles = []

    def __enter__(self):
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._first_chunk = None

    def _hook(self, name):
        def hook(module, args):
            x = args[0]
            if self._first_chunk is not None and name not in self.tokens and name not in self.alias:
                same = [other for seen, other in self._first_chunk if seen is x]
                if same:
                    self.alias[name] = same[0]
                else:
                    self._first_chunk.append((x, name))
            if name not in self.alias:
                self._add(name, x.detach().reshape(-1, x.shape[-1]).float())
            if name == self.stop_after:
                raise _StopForward

        return hook

    def end_first_chunk(self) -> None:
        """Stop looking for shared inputs (and drop the references that made the comparison possible)."""
        self._first_chunk = None

    def _add(self, name: str, x) -> None:
        import torch

        if name not in self.tokens:
            self.tokens[name] = 0
            self.sq_sum[name] = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            if self.want_hessian:
                self.xtx[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
        self.tokens[name] += x.shape[0]
        # float64: the square of a float32 is exact there and the sum's rounding (~1e-16) is far below the gap
        # between any two scores that are not equal, so masks do not depend on how the tokens were chunked
        self.sq_sum[name].add_(x.double().square().sum(dim=0))
        if self.want_hessian:
            self.xtx[name].addmm_(x.t(), x)

    def input_sq_sum(self, name: str):
        """sum over calibration tokens of x_j^2, for every input j (Wanda: ||X_j||_2 = sqrt of this); float64."""
        return self.sq_sum[self.alias.get(name, name)]

    def hessian(self, name: str):
        """2 X^T X / tokens, the Hessian of the layer-wise squared error (SparseGPT)."""
        key = self.alias.get(name, name)
        return self.xtx[key] * (2.0 / self.tokens[key])


def collect_stats(layer, linears: dict[str, Any], inputs: LayerInputs, hessian: bool) -> InputStats:
    """Run the (not yet pruned) layer on its inputs and gather its linears' input statistics.

    `linears` must be in forward order: the pass stops at the input of the last one (the MLP down projection),
    since neither its output nor anything after it is needed for statistics."""
    import torch

    stats = InputStats(linears, hessian, stop_after=list(linears)[-1])
    with stats, torch.no_grad():
        for i, hidden in enumerate(inputs.hidden):
            try:
                layer(hidden, *inputs.extra_args[i], **inputs.extra_kwargs[i])
            except _StopForward:
                pass
            if i == 0:
                stats.end_first_chunk()
    return stats
