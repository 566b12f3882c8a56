"""``python -m taskkernels.info``: print what this build of taskkernels contains."""

import json

import torch

import taskkernels


def main() -> None:
    info = taskkernels.build_info()
    info["taskkernels_version"] = taskkernels.__version__
    info["running_torch"] = torch.__version__
    info["running_torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda_kernels_usable"] = taskkernels.cuda_unavailable_reason() is None
    info["cuda_unavailable_reason"] = taskkernels.cuda_unavailable_reason()
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
