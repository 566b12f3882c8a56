"""One rank of tests/test_distributed_training.py: DDP and FSDP2 training steps of five
taskkernels.models classes on gloo, their gradients held to the single-process step's.

    python tests/distributed_training_worker.py RANK WORLD_SIZE INIT_FILE OUT_DIR

Every rank builds the same models (same seed) and the same full batch, and trains on its own
slice of the batch. First each rank computes the single-process full-batch step of the models it
owns (model i belongs to rank i % WORLD_SIZE: the references are computed in parallel, before any
collective); then, model by model, a DDP step and an FSDP2 (``fully_shard``) step on the slices.
The owner compares their gradients and mean loss with its reference and writes, per model and
mode, the largest gradient error relative to each parameter's largest reference gradient
(:func:`compare`).

Everything runs in float64 (our ops' CPU kernels take it), so the only difference left between
the distributed and the single-process step is summation order: errors ~1e-15, where a step that
skipped the gradient reduction, reduced a wrong tensor or split the batch wrongly is off by O(1).

Each batch splits into equal per-rank slices whose loss is a mean of per-sample terms with equal
normalizers on every rank (DETR: the same number of target boxes per rank, since HF's loss
divides by the local box count), so the mean of the ranks' losses is the full-batch loss, and
DDP's / FSDP2's averaged gradients are its gradients.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn

MODELS = ["bert", "vit", "convnext", "wav2vec2", "detr"]


# ---- the models (tiny random configs, as in their own tests) and their batches ---------------------
def _bert():
    from transformers import BertConfig

    from taskkernels.models import BertForSequenceClassification

    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    B, N = 4, 12
    lengths = torch.tensor([12, 5, 9, 3])  # padded batches: each rank's slice has its own padding
    mask = (torch.arange(N)[None] < lengths[:, None]).long()
    batch = dict(input_ids=torch.randint(1, 99, (B, N)) * mask, attention_mask=mask,
                 token_type_ids=(torch.arange(N)[None] >= lengths[:, None] // 2).long() * mask,
                 labels=torch.randint(0, 3, (B,)))
    return model, batch


def _vit():
    from transformers import ViTConfig

    from taskkernels.models import ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=5, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg), dict(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.randint(0, 5, (4,)))


def _convnext():
    from transformers import ConvNextConfig

    from taskkernels.models import ConvNextForImageClassification

    cfg = ConvNextConfig(num_channels=3, patch_size=4, hidden_sizes=[8, 16, 16, 24], depths=[1, 1, 1, 1], num_labels=5,
                         layer_scale_init_value=0.5, drop_path_rate=0.0)
    return ConvNextForImageClassification(cfg), dict(pixel_values=torch.randn(4, 3, 32, 32),
                                                     labels=torch.randint(0, 5, (4,)))


def _wav2vec2():
    from transformers import Wav2Vec2Config

    from taskkernels.models import Wav2Vec2ForCTC

    cfg = Wav2Vec2Config(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0,
                         attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
                         layerdrop=0.0, mask_time_prob=0.0, pad_token_id=0, ctc_loss_reduction="mean")
    N = 800
    mask = (torch.arange(N)[None] < torch.tensor([800, 550, 700, 400])[:, None]).long()
    labels = torch.randint(1, 12, (4, 6))
    labels[1, 4:] = -100
    labels[3, 2:] = -100
    return Wav2Vec2ForCTC(cfg), dict(input_values=torch.randn(4, N) * mask, attention_mask=mask, labels=labels)


def _detr():
    import transformers

    from taskkernels.models import DetrForObjectDetection

    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                         layer_type="basic", out_features=["stage4"])
    cfg = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                                  d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8,
                                  num_labels=5, dropout=0.0, attention_dropout=0.0, auxiliary_loss=True)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 40:] = 0
    # Two boxes per image: HF's loss divides by the rank's own box count, equal on both ranks.
    labels = [dict(class_labels=torch.randint(0, 5, (2,)), boxes=torch.rand(2, 4) * 0.5 + 0.25) for _ in range(2)]
    return DetrForObjectDetection(cfg), dict(pixel_values=torch.randn(2, 3, 64, 64), pixel_mask=pixel_mask,
                                             labels=labels)


BUILDERS = {"bert": _bert, "vit": _vit, "convnext": _convnext, "wav2vec2": _wav2vec2, "detr": _detr}


def build(name: str):
    """The same model and full batch on every rank (float64: main sets the default dtype, which
    also reaches what the models create in their forward, e.g. DETR's loss weights)."""
    torch.manual_seed(1234 + MODELS.index(name))
    model, batch = BUILDERS[name]()
    return model.train(), batch


def shard(batch: dict, rank: int, world: int) -> dict:
    """Rank `rank`'s equal slice of every batched entry (DETR's labels are a list per image)."""
    def take(v):
        n = len(v) // world
        return v[rank * n:(rank + 1) * n]

    return {k: take(v) for k, v in batch.items()}


def step(model: nn.Module, batch: dict) -> torch.Tensor:
    loss = model(**batch).loss
    loss.backward()
    return loss.detach()


def grads(model: nn.Module) -> dict:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is not None and hasattr(g, "full_tensor"):  # FSDP2: a DTensor sharded over the ranks
            g = g.full_tensor()
        out[name] = None if g is None else g.detach().clone()
    return out


def compare(got: dict, want: dict) -> dict:
    """The largest gradient error over parameters, each relative to its own largest reference
    gradient, or to 1e-6 of the model's largest where that is smaller: the attention key
    projections' bias gradients are zero in exact arithmetic (softmax ignores a shift shared by a
    row's scores), so theirs are rounding residue, ~1e-17, that no other order reproduces."""
    assert got.keys() == want.keys(), f"parameter names differ: {sorted(set(got) ^ set(want))}"
    floor = 1e-6 * max((w.abs().max().item() for w in want.values() if w is not None and w.numel()), default=1.0)
    worst, where, missing = 0.0, None, []
    for name, w in want.items():
        g = got[name]
        if (g is None) != (w is None):
            missing.append(name)
            continue
        if w is None or not w.numel():
            continue
        err = ((g - w).abs().max() / max(w.abs().max().item(), floor)).item()
        if not err <= worst:  # NaN counts as the worst
            worst, where = err, name
    with_grad = sum(w is not None for w in want.values())
    return dict(max_rel_err=worst, param=where, missing=missing, params_with_grad=with_grad)


def shard_fsdp2(model: nn.Module, mesh) -> nn.Module:
    """fully_shard on every element of the model's ModuleLists (its layers), children before
    parents, then on the root: parameters gathered per layer as FSDP2 is used in practice."""
    from torch.distributed.fsdp import fully_shard

    layers = [layer for m in model.modules() if isinstance(m, nn.ModuleList) for layer in m]
    for layer in reversed(layers):  # model.modules() is pre-order: reversed, children come first
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    import taskkernels  # noqa: F401  (the ops)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel as DDP

    results: dict = {"rank": rank, "models": {}}
    path = os.path.join(out_dir, f"rank{rank}.json")

    def save():
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        mesh = init_device_mesh("cpu", (world,))
        owned = [name for i, name in enumerate(MODELS) if i % world == rank]
        reference = {}
        for name in owned:  # the single-process full-batch steps, in parallel across ranks
            model, batch = build(name)
            loss = step(model, batch)
            reference[name] = (loss.item(), grads(model))
        for name in MODELS:
            model, batch = build(name)
            local = shard(batch, rank, world)
            entry = {}
            for mode in ("ddp", "fsdp2"):
                m = copy.deepcopy(model)
                wrapped = DDP(m) if mode == "ddp" else shard_fsdp2(m, mesh)
                loss = step(wrapped, local)
                dist.all_reduce(loss)  # the mean of the ranks' losses: the full batch's loss
                g = grads(m)
                if name in reference:
                    ref_loss, ref_grads = reference[name]
                    entry[mode] = dict(compare(g, ref_grads), loss=loss.item() / world, ref_loss=ref_loss)
                del wrapped, m
            if entry:
                results["models"][name] = entry
            save()
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        results["error"] = traceback.format_exc()
        save()
        sys.stdout.flush()
        os._exit(1)  # a peer blocked in a collective is ended by the parent
    save()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    # Without the interpreter's teardown, where a thread of torch's c10d / gloo still joinable
    # at static destruction once aborted a finished rank of sharding_worker.py.
    sys.stdout.flush()
    os._exit(0)
