"""``python -m debiaskit``: the command line, also under the standard PyTorch launcher::

    torchrun --standalone --nproc-per-node 2 -m debiaskit train --dataset biased-mnist --rho 0.99 --out runs/ddp

Each process joins the process group torchrun describes in its environment (gloo for CPU tensors, NCCL
for CUDA tensors); ``train``, ``ffw`` and ``audit`` then split their work across the ranks and rank 0
writes the output folder.
"""

from .cli import main

if __name__ == "__main__":
    main()
