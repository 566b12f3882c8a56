"""One module per op: ``cases(device)`` and ``providers()``. The runner finds them by name."""

OPS = ["patch_embed"]
