"""One module per op: ``cases(device, quick)`` and ``providers(device)``; optional ``HEADLINE``
(device type -> the names of the case(s) a run without --all times: one representative case per
op, one per model family; default the first case) and ``HEADLINE_MODE`` (default
forward+backward, or forward for inference-only ops), ``BASELINE`` (the provider speed-ups are
measured against, default "reference") and ``MODES``. The runner finds them by name."""

OPS = ["patch_embed", "attention", "linear_sum_assignment", "hungarian_match", "ctc_loss", "depthwise_conv2d", "depthwise_conv2d_layernorm", "masked_attention", "models", "generation", "optimize"]
