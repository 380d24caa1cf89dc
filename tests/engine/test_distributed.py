"""DistributedDataParallel on 2 CPU processes (gloo), launched by torchrun."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from mobilevit.testing import write_image_folder

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from mobilevit.engine.config import load_config
    from mobilevit.engine.train import Trainer

    out, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = load_config(
        model="mobilevit_xxs", data=data, output=out, epochs=2, img_size=64, batch_size=batch,
        multi_scale=False, warmup_steps=0, lr=0.0005, min_lr=0.0001, workers=0, ema=False, seed=0,
    )
    trainer = Trainer(cfg)
    metrics = trainer.fit()
    rank = trainer.dist.rank
    torch.save(trainer.model.state_dict(), f"{out}/rank{rank}.pt")
    with open(f"{out}/metrics{rank}.json", "w") as f:
        json.dump({"metrics": metrics, "world_size": trainer.dist.world_size}, f)
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


def run(args: list[str], tmp_path) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    import json

    data = write_image_folder(tmp_path / "data", per_class=64)
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    run([sys.executable, str(script), str(single), str(data), "32"], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, str(script), str(ddp), str(data), "16"], tmp_path)

    rank0, rank1 = (torch.load(ddp / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different weights"

    one = json.loads((single / "metrics0.json").read_text())
    two = json.loads((ddp / "metrics0.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert [m["step"] for m in one["metrics"]] == [m["step"] for m in two["metrics"]]  # same steps per epoch
    for a, b in zip(one["metrics"], two["metrics"], strict=True):
        # Same samples per step; augmentation draws and per-rank BatchNorm statistics differ.
        print(f"epoch {a['epoch']}: loss 1 process {a['train_loss']:.4f}, 2 processes {b['train_loss']:.4f}")
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * a["train_loss"]
    assert not (ddp / "rank1").exists() and (ddp / "model" / "model.safetensors").exists()
    assert len(list((ddp / "checkpoints").glob("step-*.pt"))) == 2  # only rank 0 wrote checkpoints


TASK_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch, torch.distributed as dist
    from mobilevit.engine.config import load_config
    from mobilevit.engine.train import Trainer

    out, data, task = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = load_config(
        model="mobilevit_xxs", task=task, data=data, output=out, epochs=1, img_size=64, batch_size=4,
        multi_scale=False, warmup_steps=0, workers=0, ema=False, seed=0, label_smoothing=0.0,
    )
    trainer = Trainer(cfg)
    trainer.fit()
    torch.save(trainer.model.state_dict(), f"{out}/rank{trainer.dist.rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_segmentation_and_detection_train_under_ddp(tmp_path, task):
    from mobilevit.data.synthetic import make_shapes

    data = make_shapes(tmp_path / "shapes", num_train=16, num_val=4, size=(64, 64))
    script = tmp_path / "train_task.py"
    script.write_text(TASK_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, str(script), str(out), str(data), task], tmp_path)
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different weights"
    assert (out / "model" / "model.safetensors").exists()
