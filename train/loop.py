"""The training loop: one process or many (`torchrun`), CPU or CUDA, exact resume.

Map:
- `train(cfg, out_dir, resume)`: builds data, tokenizer, model and optimiser; runs steps of
  forward (online + momentum) -> gathered targets -> objective -> backward -> clipped AdamW step
  -> momentum towers' EMA -> weight average (train/average.py, where `optim.ema_decay` > 0) ->
  queue update; logs to `metrics.jsonl`; evaluates (with the weight average, where there is one)
  and writes `last.pt` / `best.pt` (no best.pt where the evaluated split is one of several joined
  into the training data, a refit: `data.train_split = "train+dev"`). A new run with
  `model.codebook_init = "kmeans"` starts its codebook at k-means centroids of its embeddings
  (train/kmeans.py); a run of zero steps (train/configs/import.toml) evaluates and saves the
  model as it is.
- `lr_factor`: linear warm-up then cosine decay, a pure function of the step (exact resume).
- AdamW's parameter groups come from the model (`DualEncoder.optimizer_groups`).

Everything random is either a pure function of (seed, epoch, sample) — data order, views — or
torch's generator, which the checkpoint stores; so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from train.average import WeightAverage
from train.cache import (
    build_cache,
    cache_directory,
    cached_batches,
    eval_inputs_path,
    prefix_weights_digest,
)
from train.checkpoint import load_checkpoint, make_payload, save_checkpoint, set_rng_state
from train.config import TrainConfig
from train.data.captions import refit_includes
from train.data.datasets import (
    Batch,
    Collate,
    EpochBatches,
    InputPolicy,
    PairDataset,
    PairSource,
    make_source,
)
from train.data.tokenizer import (
    TextEncoder,
    checkpoint_tokenizer,
    load_tokenizer,
    text_encoder,
    train_tokenizer,
)
from train.evaluate import RetrievalEvaluator
from train.kmeans import fit_codebook
from train.model import DualEncoder
from train.model.dual import resolve_config
from train.objectives import AlignmentObjective, gather_targets
from train.objectives.combined import uses_sigmoid
from train.prefetch import prefetched

SIGLIP_BIAS_INIT = -10.0  # the sigmoid loss's starting bias: most pairs are negatives (SigLIP §3.2)

log = logging.getLogger(__name__)


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_context(device: str) -> Context:
    """Joins the `torchrun` process group when launched by it (RANK/WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return Context(rank, world, torch.device("cuda", local_rank))
    return Context(rank, world, torch.device("cpu"))


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_text(cfg: TrainConfig, source: PairSource, saved_json: str | None) -> TextEncoder:
    """The checkpoint's tokenizer on resume; else the configured one (trained when asked)."""
    from tokenizers import Tokenizer

    if saved_json is not None:
        tok = Tokenizer.from_str(saved_json)
    elif cfg.model.init:  # a CLIP-family checkpoint brings its own
        tok = checkpoint_tokenizer(cfg.model.init)
    elif cfg.data.tokenizer == "train":
        tok = train_tokenizer((c for _, c in source.pairs), cfg.data.vocab_size)
    else:
        tok = load_tokenizer(cfg.data.tokenizer)
    return text_encoder(cfg.model, tok)


def validate(cfg: TrainConfig, ctx: Context, n_pairs: int) -> None:
    global_batch = cfg.optim.batch_size * ctx.world
    if cfg.model.queue_size % global_batch:
        raise ValueError(
            f"model.queue_size {cfg.model.queue_size} is not a multiple of the global batch {global_batch}"
        )
    if EpochBatches.per_epoch(n_pairs, cfg.optim.batch_size, ctx.world) == 0:
        raise ValueError(f"{n_pairs} training pairs make no full global batch of {global_batch}")
    if cfg.lock.cache and cfg.lock.cache_views < 1:
        raise ValueError("lock.cache_views must be at least 1")


class Trainer:
    """State of one run; `run()` trains to the end (or to `run.stop_after_steps`)."""

    def __init__(
        self, cfg: TrainConfig, out_dir: Path, resume: Path | None = None, init: Path | None = None
    ) -> None:
        self.ctx = setup_context(cfg.run.device)
        self.out = out_dir
        ckpt = load_checkpoint(resume) if resume else None
        if ckpt is not None:
            cfg = replace(ckpt["config"], run=cfg.run)  # the run's shape is fixed; logging may change
        start = load_checkpoint(init) if init is not None and ckpt is None else None
        if cfg.model.init:  # its image size and text length decide the data's shapes
            cfg = replace(cfg, model=resolve_config(cfg.model, read_pretrained=ckpt is None))
        if uses_sigmoid(cfg.objective) and cfg.model.logit_bias is None:
            cfg = replace(cfg, model=replace(cfg.model, logit_bias=SIGLIP_BIAS_INIT))
        torch.manual_seed(cfg.run.seed)
        policy = InputPolicy.of(cfg.model)
        self.train_source = make_source(cfg.data, cfg.data.train_split, cfg.model.image.image_size, policy)
        self.val_source = make_source(cfg.data, cfg.data.val_split, cfg.model.image.image_size, policy)
        # a refit trains on the split that chose its recipe: its recalls there choose nothing
        self.choose_best = not refit_includes(cfg.data.train_split, cfg.data.val_split)
        if not self.choose_best:
            log.warning(
                "data.val_split %r is also trained on (data.train_split %r): its recalls are logged but "
                "choose nothing; no best.pt is written, last.pt is the result",
                cfg.data.val_split, cfg.data.train_split,
            )  # fmt: skip
        saved = ckpt or start  # a trained text tower keeps the tokenizer it was trained with
        self.text = build_text(cfg, self.train_source, saved["tokenizer"] if saved else None)
        if cfg.data.tokenizer == "train":
            cfg = replace(
                cfg, model=replace(cfg.model, text=replace(cfg.model.text, vocab_size=self.text.vocab_size))
            )
        validate(cfg, self.ctx, len(self.train_source.pairs))
        model = DualEncoder(cfg.model, load_weights=ckpt is None)  # resolves pretrained shapes
        # the locked prefixes' weights name a feature cache when they are not the config's own
        self.prefix_weights: str = ckpt.get("prefix_weights", "") if ckpt else ""
        if start is not None:
            own = prefix_weights_digest(model, cfg.lock.image_stages, cfg.lock.text_stages)
            _load_init(model, start, init)
            loaded = prefix_weights_digest(model, cfg.lock.image_stages, cfg.lock.text_stages)
            self.prefix_weights = loaded if loaded != own else ""
        cfg = replace(cfg, model=model.cfg)  # resolved shapes: what the checkpoint records
        self.cfg = cfg
        model.lock(cfg.lock.image_stages, cfg.lock.text_stages, cfg.lock.freeze_batchnorm)
        self.objective = AlignmentObjective(cfg.objective, cfg.model.codebook_temp)
        if "code" not in self.objective.terms:
            model.codebook.weight.requires_grad_(False)  # unused: keep DDP's reducer exact
        self.model = model.to(self.ctx.device)
        self.codebook_fit: dict[str, Any] = (ckpt or start or {}).get("codebook_fit", {})
        if cfg.model.codebook_init == "kmeans" and ckpt is None and self.ctx.main:
            # rank 0 fits; DistributedDataParallel's construction below hands its weights to every rank
            self.codebook_fit = fit_codebook(
                model, self.train_source, self.text, cfg.model, self.ctx.device, cfg.run.seed
            ) | {"corpus": cfg.data.jsonl or cfg.data.source, "split": cfg.data.train_split}
            log.info("codebook: k-means of %s", self.codebook_fit)
        optim = cfg.optim
        self.optimizer = torch.optim.AdamW(
            model.optimizer_groups(optim.lr, optim.weight_decay, optim.tower_lr_scale), lr=optim.lr,
            betas=(0.9, optim.beta2),
            fused=self.ctx.device.type in ("cpu", "cuda"),  # one kernel over all tensors (decisions §4)
        )  # fmt: skip
        for g in self.optimizer.param_groups:
            g["base_lr"] = g["lr"]
        self.steps_per_epoch = EpochBatches.per_epoch(
            len(self.train_source.pairs), optim.batch_size, self.ctx.world
        )
        self.total_steps = optim.max_steps or math.ceil(optim.epochs * self.steps_per_epoch)
        self.step, self.best_rsum, self.metrics = 0, -1.0, {}
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.step = ckpt["step"]
            self.metrics = ckpt["metrics"]
            self.best_rsum = ckpt.get("best_rsum", self.metrics.get("rsum", -1.0))
            set_rng_state(ckpt["rng"])
        self.average = WeightAverage(model, optim.ema_decay) if optim.ema_decay > 0 else None
        if self.average is not None and ckpt is not None:
            self.average.load_state_dict(ckpt["ema"])
        self.ddp = (
            DistributedDataParallel(
                model, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            )
            if self.ctx.world > 1
            else model
        )
        self.evaluator: RetrievalEvaluator | None = None
        self.cache = None
        if cfg.lock.cache:
            if not self.ctx.main:  # rank 0 computes the cache (a path all ranks share); the rest load it
                dist.barrier()
            self.cache = build_cache(
                model,
                self.train_source,
                self.text,
                cfg,
                self.ctx.device,
                cache_directory(cfg, out_dir),
                cfg.run.progress and self.ctx.main,
                self.prefix_weights,
            )
            if self.ctx.main and self.ctx.world > 1:
                dist.barrier()
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

    def _autocast_dtype(self) -> torch.dtype | None:
        if not self.cfg.run.amp or self.ctx.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Batch, bool]]:
        """This rank's batches of one epoch from `start`, and whether they hold prefix states."""
        sampler = EpochBatches(
            len(self.train_source.pairs), self.cfg.optim.batch_size, epoch, self.cfg.run.seed,
            self.ctx.rank, self.ctx.world, start,
        )  # fmt: skip
        if self.cache is not None:
            batches = cached_batches(self.cache, sampler, text_is_states=self.model.text_locked > 0)
            for b in prefetched(batches):
                yield b, True
            return
        loader = torch.utils.data.DataLoader(
            PairDataset(self.train_source, self.cfg.data.augment, self.cfg.model.image.image_size),
            batch_sampler=sampler,
            collate_fn=Collate(self.text),
            num_workers=self.cfg.data.workers,
            persistent_workers=False,
            pin_memory=self.ctx.device.type == "cuda",
            # its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run (a new iterator mid-epoch) would see different dropout masks
            generator=torch.Generator().manual_seed(self.cfg.run.seed + epoch),
        )
        for b in loader:
            yield b, False

    def train_step(self, batch: Batch, prefixed: bool) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        factor = lr_factor(self.step, self.total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        ramp = max(1.0, cfg.run.alpha_ramp_epochs * self.steps_per_epoch)
        alpha = cfg.objective.alpha * min(1.0, self.step / ramp)
        on_device = batch.to(self.ctx.device)
        with torch.autocast(
            self.ctx.device.type,
            self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            features = self.ddp(
                on_device.view1, on_device.view2, on_device.input_ids, on_device.attention_mask,
                on_device.ids, prefixed=prefixed, locals_m=self.objective.needs_locals,
            )  # fmt: skip
        targets = gather_targets(features)
        queue, tau, codes = model.queue.contents(), model.temperature(), model.codebook.vectors()
        out = self.objective(features, targets, queue, tau, codes, alpha, model.logit_bias)
        self.scaler.scale(out.loss).backward()
        if cfg.optim.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            trained = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(trained, cfg.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(model, self.step + 1)
        model.update_momentum()
        model.queue.enqueue(targets.image_m, targets.text_m, targets.ids)
        self.step += 1
        logged = {"loss": out.loss.detach(), **out.terms}
        if self.ctx.world > 1:  # log the global batch's loss, not this rank's share
            stacked = torch.stack(list(logged.values()))
            dist.all_reduce(stacked)
            logged = dict(zip(logged, stacked / self.ctx.world, strict=True))
        return {
            **{k: v.item() for k, v in logged.items()},
            "lr": cfg.optim.lr * factor,
            "tau": model.temp.item(),
            "alpha": self.objective.alpha(alpha),  # what the objective used (itc: 0)
        }

    def evaluate(self) -> dict[str, float]:
        if self.evaluator is None:
            rset = self.val_source.retrieval_set(self.cfg.data.val_max_images)
            store = None
            if self.cfg.lock.cache:  # the split's locked-prefix states, shared like the training cache
                store = eval_inputs_path(
                    self.cfg, self.text.tokenizer.to_str(), self.prefix_weights, self.out
                )
            self.evaluator = RetrievalEvaluator(
                rset, self.val_source.loader, self.text, self.ctx.device, store=store
            )
        metrics, _ = self.evaluator(self.model)
        return metrics

    def checkpoint(self, name: str) -> None:
        payload = make_payload(
            self.cfg, self.text.tokenizer.to_str(), self.model.state_dict(), self.optimizer.state_dict(),
            self.step, self.step // self.steps_per_epoch, self.metrics,
        )  # fmt: skip
        payload["best_rsum"] = self.best_rsum
        if self.prefix_weights:
            payload["prefix_weights"] = self.prefix_weights
        if self.codebook_fit:
            payload["codebook_fit"] = self.codebook_fit
        if self.average is not None:
            payload["ema"] = self.average.state_dict()
        save_checkpoint(self.out / name, payload)

    def log(self, record: dict[str, Any]) -> None:
        if self.ctx.main:
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def eval_and_save(self) -> None:
        if self.ctx.main:
            t0 = time.perf_counter()
            averaged = self.average.applied(self.model) if self.average else contextlib.nullcontext()
            with averaged:  # best.pt holds what was evaluated: the average, where there is one
                self.metrics = self.evaluate()
                if self.choose_best and self.metrics["rsum"] > self.best_rsum:
                    self.best_rsum = self.metrics["rsum"]
                    self.checkpoint("best.pt")
            record = {
                "type": "eval",
                "step": self.step,
                "epoch": self.step / self.steps_per_epoch,
                **self.metrics,
            }
            self.log({**record, "eval_s": round(time.perf_counter() - t0, 2)})
            log.info("eval step %d: %s", self.step, " ".join(f"{k}={v:.2f}" for k, v in self.metrics.items()))
            self.checkpoint("last.pt")
        if self.ctx.world > 1:
            dist.barrier()

    def run(self) -> dict[str, float]:
        """Trains to the end (or `stop_after_steps`); returns the last evaluation's metrics."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.ctx.main:
            (self.out / "tokenizer.json").write_text(self.text.tokenizer.to_str())
        if self.total_steps == 0:  # a model used as it is (train/configs/import.toml): evaluated, saved
            self.eval_and_save()
            return self.metrics
        stop_at = self.total_steps
        if cfg.run.stop_after_steps:
            stop_at = min(stop_at, self.step + cfg.run.stop_after_steps)
        eval_every = cfg.run.eval_every_steps or self.steps_per_epoch
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step",
            disable=not (cfg.run.progress and self.ctx.main), dynamic_ncols=True,
        )  # fmt: skip
        global_batch = cfg.optim.batch_size * self.ctx.world
        self.model.train()
        last_eval = self.step
        while self.step < stop_at:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            t0 = time.perf_counter()
            for batch, prefixed in self.batches(epoch, start):
                record = self.train_step(batch, prefixed)
                elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
                record["step_s"] = elapsed  # data wait included: what a run really costs per step
                record["samples_per_s"] = global_batch / elapsed
                if self.ctx.device.type == "cuda":
                    record["cuda_peak_gib"] = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    lr=f"{record['lr']:.2e}",
                    sps=f"{record['samples_per_s']:.0f}",
                )
                if self.step % cfg.run.log_every_steps == 0 or self.step == 1:
                    self.log(
                        {
                            "type": "train",
                            "step": self.step,
                            "epoch": self.step / self.steps_per_epoch,
                            **record,
                        }
                    )
                if self.step % eval_every == 0 or self.step == self.total_steps:
                    self.eval_and_save()
                    last_eval = self.step
                if self.step >= stop_at:
                    break
        bar.close()
        if last_eval != self.step:  # stopped between evaluations: keep the exact state for --resume
            if self.ctx.main:
                self.checkpoint("last.pt")
            if self.ctx.world > 1:
                dist.barrier()
        if self.step < self.total_steps and self.ctx.main:
            best = self.out / "best.pt"
            log.info(
                "stopped at step %d of %d (run.stop_after_steps): the exact state is in %s; continue "
                "with the same command and --resume %s. %s", self.step, self.total_steps,
                self.out / "last.pt", self.out / "last.pt",
                f"{best} holds the best evaluated weights so far." if best.exists() else
                f"No evaluation yet, so no best.pt: `python -m export {self.out / 'last.pt'} --out BUNDLE` "
                "exports the weights as they stand.",
            )  # fmt: skip
        return self.metrics


def _load_init(model: DualEncoder, start: dict[str, Any], path: Path | None) -> None:
    """A new run's weights from another run's checkpoint; every parameter must match in shape."""
    try:
        model.load_state_dict(start["model"])  # strict: names what is missing or differs in shape
    except RuntimeError as e:
        raise ValueError(
            f"--init {path}: the checkpoint's model differs from this config's; set the same model.* "
            f"as the run it came from. {e}"
        ) from None


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: str | Path | None = None, init: str | Path | None = None
) -> dict[str, float]:
    """Runs (or resumes) a training run; returns the last evaluation's metrics."""
    trainer = Trainer(cfg, Path(out_dir), Path(resume) if resume else None, Path(init) if init else None)
    try:
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
