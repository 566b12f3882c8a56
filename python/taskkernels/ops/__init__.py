"""Public op functions. Each module registers the fake (meta) kernel and the autograd formula of
its ops; the kernels themselves are registered by the native module."""
