"""Training crosscoders (L1 and BatchTopK) on streamed activations, seeded and CPU-friendly.

The caller gives ``batches(epoch)``: an iterable of raw float32 arrays [B, n_models, d]. The
trainer holds one of them (plus a tail shorter than ``batch_size``) at a time:

1. a first pass over ``batches(0)`` estimates the per-model input scale (target RMS) and counts
   tokens, which fixes the number of steps for the L1 warm-up and the learning-rate decay (a
   caller that knows its token count may instead give a bounded ``scale_sample``: the stages
   use a seeded sample of store chunks, ``builders.stages.paired_activations.scale_sample``);
2. ``epochs`` passes of Adam steps of ``batch_size`` tokens (Anthropic's recipe: L1 weighted by
   decoder norms with a warm-up over the first 5% of steps, gradient clipping, linear LR decay
   over the last 20%), tracking dead latents and resampling them every ``resample_every`` steps;
3. a final pass over ``batches(0)`` in eval mode for the explained variance per model.

BatchTopK trains on the reconstruction error, plus (``auxk_alpha`` > 0) the auxiliary-k loss of
Gao et al. 2024 as dictionary_learning's BatchTopK crosscoder trainer computes it (``auxk_loss``),
and tracks the inference threshold as dictionary_learning does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from transforms.dictionaries.crosscoder import KINDS

if TYPE_CHECKING:
    import torch

    from transforms.dictionaries.crosscoder import CrossCoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "l1"
    dict_size: int = 1024
    l1_coefficient: float = 2.0
    k: int = 32
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 1
    seed: int = 0
    target_rms: float | None = 1.0  # None: no input normalisation
    dead_after: int = 1_000_000  # tokens without firing before a latent counts as dead
    resample_every: int = 0  # steps; 0 = never
    l1_warmup_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    grad_clip: float = 1.0
    threshold_beta: float = 0.999
    threshold_start_step: int = 1000  # clamped to half the run, so short runs still get one
    resample_encoder_scale: float = 0.2  # new encoder rows: this times the mean alive encoder norm
    final_pass: bool = True
    # batch_topk: weight of the auxiliary-k loss (dictionary_learning uses 1/32); 0 = off, so
    # runs (and version ids, see builders.stages.crosscoder) without it are unchanged
    auxk_alpha: float = 0.0
    auxk_k: int | None = None  # dead latents per token in the aux loss; None = d_model // 2 (Gao et al. B.1)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")
        for name in ("dict_size", "batch_size", "epochs", "dead_after"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.kind == "batch_topk" and self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")
        if self.target_rms is not None and self.target_rms <= 0:
            raise ValueError(f"target_rms must be positive or None, got {self.target_rms}")
        if self.auxk_alpha < 0:
            raise ValueError(f"auxk_alpha must be >= 0, got {self.auxk_alpha}")
        if self.auxk_alpha > 0 and self.kind != "batch_topk":
            # an L1 latent is dead when its pre-activation is never positive: aux-k has no gradient there
            raise ValueError("auxk_alpha applies to kind batch_topk only (L1 dead latents are resampled)")
        if self.auxk_k is not None and self.auxk_k <= 0:
            raise ValueError(f"auxk_k must be positive or None, got {self.auxk_k}")


@dataclass(frozen=True)
class TrainLogRow:
    step: int
    tokens: int
    loss: float
    mse: float
    sparsity_loss: float
    explained_variance: list[float]  # per model, on this batch
    l0: float  # mean active latents per token
    dead: int
    auxk_loss: float = 0.0  # normalised auxiliary-k loss (before auxk_alpha); 0 when off or nothing dead


@dataclass
class TrainResult:
    model: "CrossCoder"
    log: list[TrainLogRow]
    explained_variance: list[float]  # per model, final pass (or last logged batch)
    dead: int
    resampled: int
    tokens_seen: int
    config: TrainConfig


@dataclass(frozen=True)
class ScaleEstimate:
    scale: list[float]  # per model: what raw activations are multiplied by
    tokens: int


def as_batch(array: Any, n_models: int, d_model: int) -> "torch.Tensor":
    """One caller batch as a float32 tensor [B, n_models, d], shape checked."""
    import numpy as np
    import torch

    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    tensor = tensor.to(torch.float32)
    if tensor.ndim != 3 or tuple(tensor.shape[1:]) != (n_models, d_model):
        raise ValueError(f"a batch has shape {list(tensor.shape)}, expected [B, {n_models}, {d_model}]")
    return tensor


def input_scales(arrays: Iterable[Any], n_models: int, d_model: int, target_rms: float | None) -> ScaleEstimate:
    """Per-model s_m with sqrt(mean over tokens of ||s_m x_m||^2 / d) == target_rms (one streamed pass)."""
    import numpy as np
    import torch

    sum_sq = torch.zeros(n_models, dtype=torch.float64)
    tokens = 0
    for array in arrays:
        batch = as_batch(array, n_models, d_model).detach().cpu().numpy()
        # float32 squares are exact in float64: the same sums as a float64 copy, without the copy
        sum_sq += torch.from_numpy(np.einsum("bmd,bmd->m", batch, batch, dtype=np.float64))
        tokens += batch.shape[0]
    if tokens == 0:
        raise ValueError("no activations: batches(0) yielded no tokens")
    if target_rms is None:
        return ScaleEstimate([1.0] * n_models, tokens)
    rms = (sum_sq / (tokens * d_model)).sqrt()
    scale = [float(target_rms / value) if value > 0 else 1.0 for value in rms.tolist()]
    return ScaleEstimate(scale, tokens)


def steps_of(arrays: Iterable[Any], batch_size: int, n_models: int, d_model: int) -> Iterator["torch.Tensor"]:
    """Re-cut caller batches into steps of ``batch_size`` tokens (the last may be shorter)."""
    import torch

    tail = None
    for array in arrays:
        batch = as_batch(array, n_models, d_model)
        if tail is not None:
            batch = torch.cat([tail, batch])
        whole = batch.shape[0] - batch.shape[0] % batch_size
        for start in range(0, whole, batch_size):
            yield batch[start:start + batch_size]
        tail = batch[whole:] if whole < batch.shape[0] else None
    if tail is not None:
        yield tail


def explained_variance(x_BMD: "torch.Tensor", x_hat_BMD: "torch.Tensor") -> list[float]:
    """1 - sum ||x_m - x̂_m||^2 / sum ||x_m - mean(x_m)||^2 per model."""
    residual = (x_BMD - x_hat_BMD).pow(2).sum(dim=(0, 2))
    total = (x_BMD - x_BMD.mean(dim=0, keepdim=True)).pow(2).sum(dim=(0, 2))
    return [1.0 - float(r) / float(t) if t > 0 else float("nan") for r, t in zip(residual, total)]


def crosscoder_losses(model: "CrossCoder", x_BMD: "torch.Tensor", l1_coefficient: float) -> dict[str, "torch.Tensor"]:
    """mse = sum over models and d of the squared error, mean over the batch; sparsity =
    mean over the batch of sum_j f_j * sum_m ||W_dec[m, j]|| (the L1 crosscoder penalty)."""
    x_hat, f = model(x_BMD)
    mse = (x_hat - x_BMD).pow(2).sum(dim=(1, 2)).mean()
    sparsity = (f * model.latent_scale()).sum(dim=1).mean()
    loss = mse + l1_coefficient * sparsity if model.kind == "l1" else mse
    return {"loss": loss, "mse": mse, "sparsity": sparsity, "x_hat": x_hat, "f": f}


def auxk_loss(model: "CrossCoder", x_BMD: "torch.Tensor", x_hat_BMD: "torch.Tensor", dead_F: "torch.Tensor",
              k_aux: int) -> "torch.Tensor":
    """Auxiliary-k loss (Gao et al. 2024, App. B.1; dictionary_learning's BatchTopK crosscoder):
    per token, the ``min(k_aux, n_dead)`` dead latents with the largest score (ReLU pre-activation
    times the summed decoder norms) reconstruct the detached error e = x - x̂ through the
    per-model decoders without bias; returns sum ||e - ê||^2 / sum ||e - mean_batch(e)||^2 over
    tokens (every model's d concatenated), 0 when nothing is dead or the error is constant."""
    import torch

    index = dead_F.nonzero().flatten()
    if index.numel() == 0:
        return x_BMD.new_zeros(())
    batch = x_BMD.shape[0]
    w_enc = model.encoder["weight"][:, :, index]  # only the dead columns: cheap while few are dead
    pre_BN = torch.relu(x_BMD.reshape(batch, -1) @ w_enc.reshape(-1, index.numel()) + model.encoder["bias"][index])
    w_dec = model.decoder["weight"][:, index]  # [M, N, d]
    scores_BN = pre_BN.detach() * w_dec.detach().norm(dim=2).sum(dim=0)
    top = scores_BN.topk(min(int(k_aux), index.numel()), dim=1, sorted=False).indices
    acts_BN = torch.zeros_like(pre_BN).scatter(1, top, pre_BN.gather(1, top))
    e_hat = acts_BN @ w_dec.transpose(0, 1).reshape(index.numel(), -1)
    e = (x_BMD - x_hat_BMD).detach().reshape(batch, -1)
    numerator = (e - e_hat).pow(2).sum(dim=1).mean()
    denominator = (e - e.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean()
    return (numerator / denominator).nan_to_num(0.0)


def train_crosscoder(batches: Callable[[int], Iterable[Any]], n_models: int, d_model: int,
                     config: TrainConfig, *, progress: bool = True, log_every: int = 100,
                     init: "CrossCoder | None" = None, scale_sample: Iterable[Any] | None = None,
                     n_tokens: int | None = None) -> TrainResult:
    """Train a crosscoder on ``batches(epoch)`` (raw [B, n_models, d] arrays). ``init`` continues
    from a given model (its input scale is re-estimated unless target_rms is None).
    ``scale_sample``: raw arrays the input scale is estimated from instead of all of
    ``batches(0)``; then ``n_tokens`` (tokens per epoch) is required."""
    import torch
    from tqdm.auto import tqdm

    from transforms.dictionaries.crosscoder import CrossCoder
    from transforms.dictionaries.resampling import DeadLatents, resample_dead

    torch.manual_seed(config.seed)  # nothing random should use it, but belt and braces
    if scale_sample is None:
        estimate = input_scales(batches(0), n_models, d_model, config.target_rms)
        epoch_tokens = estimate.tokens
    else:
        if n_tokens is None or n_tokens <= 0:
            raise ValueError(f"a scale_sample needs the positive token count per epoch, got n_tokens={n_tokens}")
        estimate = input_scales(scale_sample, n_models, d_model, config.target_rms)
        epoch_tokens = int(n_tokens)
    model = init if init is not None else CrossCoder(n_models, d_model, config.dict_size, kind=config.kind,
                                                     k=config.k if config.kind == "batch_topk" else None,
                                                     seed=config.seed)
    if (model.n_models, model.d_model, model.kind) != (n_models, d_model, config.kind):
        raise ValueError(f"init crosscoder is {model.kind} {model.n_models}x{model.d_model}, "
                         f"config asks {config.kind} {n_models}x{d_model}")
    if init is None or config.target_rms is not None:
        model.set_input_scale(estimate.scale)
    log.info("input scale per model %s over %d tokens", estimate.scale, estimate.tokens)

    steps_per_epoch = -(-epoch_tokens // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(config.l1_warmup_fraction * total_steps))
    decay_from = int((1 - config.lr_decay_fraction) * total_steps)
    threshold_start = min(config.threshold_start_step, total_steps // 2)
    k_aux = config.auxk_k if config.auxk_k is not None else max(1, d_model // 2)

    def lr_factor(step: int) -> float:
        return 1.0 if step < decay_from else max(0.0, (total_steps - step) / max(1, total_steps - decay_from))

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    dead = DeadLatents(model.dict_size, config.dead_after)
    generator = torch.Generator().manual_seed(config.seed + 1)
    device = model.decoder["weight"].device
    rows: list[TrainLogRow] = []
    step = tokens = resampled = 0
    bar = tqdm(total=total_steps, disable=not progress, desc=f"crosscoder {config.kind}", unit="step")
    model.train()
    try:
        for epoch in range(config.epochs):
            for raw in steps_of(batches(epoch), config.batch_size, n_models, d_model):
                x = model.normalize(raw.to(device))
                l1 = config.l1_coefficient * min(1.0, (step + 1) / warmup)
                out = crosscoder_losses(model, x, l1)
                f = out["f"].detach()
                dead.update(f)  # before the aux loss, which reads this step's dead set
                loss = out["loss"]
                aux = None
                if config.auxk_alpha > 0:
                    aux = auxk_loss(model, x, out["x_hat"].detach(), dead.mask(), k_aux)
                    loss = loss + config.auxk_alpha * aux
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                tokens += x.shape[0]
                loss_value = float(loss.detach())
                if model.kind == "batch_topk" and step > threshold_start:
                    update_threshold(model, f, config.threshold_beta)
                if config.resample_every and step % config.resample_every == 0 and step < total_steps:
                    resampled += resample_dead(model, optimizer, dead, x, out["x_hat"].detach(), generator,
                                               config.resample_encoder_scale)
                if step % log_every == 0 or step == total_steps:
                    rows.append(TrainLogRow(step, tokens, loss_value, float(out["mse"].detach()),
                                            float(out["sparsity"].detach()), explained_variance(x, out["x_hat"].detach()),
                                            float((f > 0).sum(dim=1).float().mean()), dead.count(),
                                            0.0 if aux is None else float(aux.detach())))
                bar.set_postfix(loss=f"{loss_value:.4g}", dead=dead.count(), refresh=False)
                bar.update(1)
    finally:
        bar.close()
    model.eval()
    final = rows[-1].explained_variance if rows else [float("nan")] * n_models
    if config.final_pass:
        final = evaluate(model, batches(0))
    log.info("trained %d steps, %d tokens; explained variance %s; %d dead, %d resampled",
             step, tokens, final, dead.count(), resampled)
    return TrainResult(model, rows, final, dead.count(), resampled, tokens, config)


def update_threshold(model: "CrossCoder", f_BF: "torch.Tensor", beta: float) -> None:
    """Running mean of the smallest kept score per batch (dictionary_learning's BatchTopK rule),
    so that inference can keep ``score > threshold`` independently of the batch."""
    import torch

    with torch.no_grad():
        scores = (f_BF * model.latent_scale())[f_BF > 0]
        smallest = float(scores.min()) if scores.numel() else 0.0
        current = float(model.threshold)
        model.threshold.fill_(smallest if current < 0 else beta * current + (1 - beta) * smallest)


def evaluate(model: "CrossCoder", arrays: Iterable[Any]) -> list[float]:
    """Explained variance per model over a whole stream of raw batches (normalized space)."""
    import torch

    residual = sums = sq = None
    count = 0
    with torch.no_grad():
        for raw in arrays:
            x = model.normalize(as_batch(raw, model.n_models, model.d_model).to(model.decoder["weight"].device))
            x_hat, _ = model(x)
            r = (x - x_hat).to(torch.float64).pow(2).sum(dim=(0, 2)).cpu()
            s = x.to(torch.float64).sum(dim=0).cpu()
            q = x.to(torch.float64).pow(2).sum(dim=(0, 2)).cpu()
            residual = r if residual is None else residual + r
            sums = s if sums is None else sums + s
            sq = q if sq is None else sq + q
            count += x.shape[0]
    if not count:
        return [float("nan")] * model.n_models
    # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2, accumulated in float64
    total = sq - sums.pow(2).sum(dim=1) / count
    return [1.0 - float(r) / float(t) if t > 0 else float("nan") for r, t in zip(residual, total)]


def encode_batches(model: "CrossCoder", batches: Iterable[Any]) -> Iterator["torch.Tensor"]:
    """Latents f_BF of raw batches, normalized with the model's input scale, without gradients, in
    the model's current mode (eval: a trained batch_topk keeps ``score > threshold`` per token)."""
    import torch

    for raw in batches:
        with torch.no_grad():
            x = as_batch(raw, model.n_models, model.d_model).to(model.decoder["weight"].device)
            yield model.encode(model.normalize(x))
