"""The loop: schedule, exact resume, self-describing checkpoints, locked prefixes with a feature
cache, and `torchrun`-style DDP on 2 gloo processes equal to one process on the global batch."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import losses, small
from train.checkpoint import load_model
from train.config import CONFIG_DIR, load_train_config
from train.loop import Trainer, lr_factor, train

pytestmark = pytest.mark.integration  # starts processes, trains or exports (tests/conftest.py)


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    straight = tmp_path / "straight"
    train(small(), straight)
    resumed = tmp_path / "resumed"
    with caplog.at_level("INFO", logger="train.loop"):
        train(small("run.stop_after_steps=4"), resumed)  # stops between evaluations
    assert max(losses(resumed)) == 4
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "stopped at step 4 of 6" in said and f"--resume {resumed / 'last.pt'}" in said
    train(small(), resumed, resume=resumed / "last.pt")
    want, got = losses(straight), losses(resumed)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert abs(got[step] - want[step]) < 1e-6, step
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_checkpoint_describes_itself(tmp_path: Path) -> None:
    metrics = train(small("optim.max_steps=3"), tmp_path)
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)  # no pickle needed
    assert ckpt["format"] == "tessera.checkpoint/1" and ckpt["step"] == 3
    assert (
        ckpt["config"]["model"]["text"]["vocab_size"]
        == json.loads(ckpt["tokenizer"])["model"]["vocab"].__len__()
    )
    assert ckpt["config"]["objective"]["preset"] == "tessera" and "tessera-embed" in ckpt["code_version"]
    assert set(metrics) >= {"i2t_r1", "t2i_r10", "rsum"} and ckpt["metrics"] == metrics
    model, _ = load_model(tmp_path / "best.pt")
    pixels = torch.rand(2, 3, 32, 32)
    assert model.encode_image(pixels).global_.shape == (2, 16)


def test_each_logged_step_carries_its_time_and_rate(tmp_path: Path) -> None:
    train(small("optim.max_steps=2"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:  # batch 8 on one process
        assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(8 / r["step_s"])
        assert "cuda_peak_gib" not in r  # only where the run is on CUDA


def test_init_starts_a_new_run_from_another_runs_weights(tmp_path: Path) -> None:
    """`--init`: weights and tokenizer come from the checkpoint; step, optimiser and config are new."""
    first = tmp_path / "first"
    train(small("optim.max_steps=3"), first)
    source = torch.load(first / "last.pt", weights_only=True)
    cfg = small("lock.text_stages=1", "optim.lr=1e-5")
    trainer = Trainer(cfg, tmp_path / "second", init=first / "last.pt")
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source["model"].items())
    assert trainer.step == 0 and not trainer.optimizer.state
    assert trainer.text.tokenizer.to_str() == source["tokenizer"]  # a trained vocabulary is kept
    assert trainer.cfg.lock.text_stages == 1 and trainer.cfg.optim.lr == 1e-5
    with pytest.raises(ValueError, match=r"--init .*differs from this config"):
        Trainer(small("model.embed_dim=8"), tmp_path / "third", init=first / "last.pt")


def test_locked_prefix_trains_only_the_rest_from_a_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="train.cache")
    cfg = small(
        "model.image.depth=2", "model.text.depth=2", "lock.image_stages=1", "lock.text_stages=1",
        "lock.cache=true", "lock.cache_views=2", "optim.max_steps=2",
        f"lock.cache_dir='{tmp_path / 'cache'}'",
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path)
    building = [m for m in caplog.messages if m.startswith("feature cache: building")]
    assert any(m.endswith("-images.pt (once; later runs of these inputs load it)") for m in building), (
        building
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    assert len(list((tmp_path / "cache").glob("*-images.pt"))) == 1, "the image views were not cached"
    frozen = ["online.image_tower.patch_embed.proj.weight", "online.image_tower.blocks.0.attn.qkv.weight"]
    frozen += [
        "online.text_tower.embeddings.word_embeddings.weight",
        "online.text_tower.encoder.layer.0.output.dense.weight",
    ]
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    trained = ["online.image_tower.blocks.1.attn.qkv.weight", "online.image_tower.norm.weight"]
    trained += ["online.text_tower.encoder.layer.1.output.dense.weight", "online.image_head.proj.weight"]
    for name in trained:
        assert not torch.equal(before[name], after[name]), name
    # a second run with the same data and lock reads the cache instead of recomputing it
    again = Trainer(cfg, tmp_path)
    assert again.cache is not None and torch.equal(again.cache.images, trainer.cache.images)
    # and the validation split's prefix states, stored by the first run's evaluation
    assert len(list((tmp_path / "cache").glob("*-eval.pt"))) == 1
    again.model.load_state_dict(after)
    assert again.evaluate() == trainer.evaluate()
    assert again.evaluator is not None and trainer.evaluator is not None
    for stored, computed in zip(again.evaluator._images or [], trainer.evaluator._images or [], strict=True):
        assert torch.equal(stored, computed)
    # a run that locks less of the text shares the image views and caches its own text states
    other = Trainer(replace(cfg, lock=replace(cfg.lock, text_stages=0)), tmp_path / "other")
    assert other.cache is not None and torch.equal(other.cache.images, trainer.cache.images)
    assert len(list((tmp_path / "cache").glob("*-images.pt"))) == 1
    assert len(list((tmp_path / "cache").glob("*-text.pt"))) == 2
    assert other.cache.text.dtype == torch.int64  # token ids: no text stage is locked


def test_a_run_from_a_checkpoint_with_other_locked_weights_gets_its_own_cache(tmp_path: Path) -> None:
    cfg = small(
        "model.image.depth=2", "model.text.depth=2", "lock.image_stages=1", "lock.text_stages=1",
        "lock.cache=true", "optim.max_steps=1", f"lock.cache_dir='{tmp_path / 'cache'}'",
    )  # fmt: skip
    first = Trainer(cfg, tmp_path / "a")
    first.run()
    # LP-FT's second stage: its locked prefix is the first run's, which is the config's own
    same = Trainer(cfg, tmp_path / "b", init=tmp_path / "a" / "last.pt")
    assert same.cache is not None and first.cache is not None
    assert torch.equal(same.cache.images, first.cache.images)
    assert len(list((tmp_path / "cache").glob("*-images.pt"))) == 1
    # a checkpoint whose locked stages were trained elsewhere (with them unlocked)
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    for name in (
        "online.image_tower.patch_embed.proj.weight",
        "momentum.image_tower.patch_embed.proj.weight",
    ):
        ckpt["model"][name] = ckpt["model"][name] + 0.05
    torch.save(ckpt, tmp_path / "other.pt")
    other = Trainer(cfg, tmp_path / "c", init=tmp_path / "other.pt")
    assert other.cache is not None and not torch.equal(other.cache.images, first.cache.images)
    pixels = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(other.model.image_prefix(pixels), first.model.image_prefix(pixels))
    assert len(list((tmp_path / "cache").glob("*-images.pt"))) == 2
    other.run()  # and resuming it finds its cache again, without the init checkpoint
    again = Trainer(cfg, tmp_path / "c", resume=tmp_path / "c" / "last.pt")
    assert again.cache is not None and torch.equal(again.cache.images, other.cache.images)
    assert len(list((tmp_path / "cache").glob("*-images.pt"))) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str, overrides: list[str]) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    train(small(*overrides), out)


def test_torchrun_ddp_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    no_dropout = ["model.text.dropout=0.0", "optim.max_steps=3"]
    single = tmp_path / "single"
    train(small(*no_dropout), single)
    ddp = tmp_path / "ddp"
    mp.start_processes(
        _ddp_worker,
        args=(_free_port(), str(ddp), [*no_dropout, "optim.batch_size=4"]),
        nprocs=2,
        start_method="spawn",
    )
    want, got = losses(single), losses(ddp)
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert abs(got[step] - want[step]) < 1e-4, (step, got[step], want[step])
    a = torch.load(single / "last.pt", weights_only=True)["model"]
    b = torch.load(ddp / "last.pt", weights_only=True)["model"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-4
    assert torch.equal(a["queue.ids"], b["queue.ids"])


def test_cli_names_bad_configs_and_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "train", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )

    bad = cli("--config", "tiny-shapes", "--set", "model.embed_dimm=3", "--out", str(tmp_path / "a"))
    assert bad.returncode == 2 and "unknown config key(s) model.embed_dimm" in bad.stderr
    missing = cli("--config", "no-such-config", "--out", str(tmp_path / "b"))
    assert missing.returncode == 2 and "tiny-shapes" in missing.stderr  # lists the known configs
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "last.pt").write_bytes(b"")
    taken = cli("--config", "tiny-shapes", "--out", str(tmp_path / "c"))
    assert taken.returncode == 2 and "already holds a run; pass --resume" in taken.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
def test_every_shipped_config_loads_and_builds_its_lock(name: str) -> None:
    cfg = load_train_config(name)  # unknown keys and wrong types raise ConfigError
    assert cfg.lock.image_stages >= -3 and cfg.lock.text_stages >= -3  # -3: all but the last two
    if cfg.lock.cache:
        assert cfg.lock.image_stages != 0, "a cache needs a locked image prefix"
    if name == "flickr8k-ft":  # the second stage starts from the first's checkpoint: the same model
        first = load_train_config("flickr8k-locked").model  # but for dropout in the layers it trains
        assert replace(cfg.model.text, dropout=first.text.dropout) == first.text
        assert replace(cfg.model, text=first.text) == first
    if name == "clip-ft":  # likewise, but for the codebook's start: stage 1's k-means, carried over
        first = load_train_config("clip-locked").model
        assert replace(cfg.model, codebook_init=first.codebook_init) == first
