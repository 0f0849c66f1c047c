"""Run under torchrun by tests/test_distributed.py: each rank scores its queries against every rank's
passages gathered with Dist.all_gather, backpropagates, and writes its gradients to OUT/rank{r}.pt."""

import sys

import torch

from imprag.distributed import init_from_env, shutdown
from imprag.training.losses import multi_label_nce

QUERIES, PASSAGES = (
    torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
    torch.randn(4, 3, generator=torch.Generator().manual_seed(1)),
)


def main(out: str) -> None:
    d = init_from_env()
    per = len(QUERIES) // d.world
    q = QUERIES[d.rank * per : (d.rank + 1) * per].clone().requires_grad_()
    p = PASSAGES[d.rank * per : (d.rank + 1) * per].clone().requires_grad_()
    gathered = d.all_gather(p)  # (4, 3)
    scores = q @ gathered.T  # (per, 4): own positives at the diagonal of this rank's block
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(per), d.rank * per + torch.arange(per)] = True
    loss = multi_label_nce(scores, positives) * per  # the sum over this rank's queries
    loss.backward()
    torch.save(
        {"gathered": gathered.detach(), "q": q.grad, "p": p.grad, "loss": loss.detach()},
        f"{out}/rank{d.rank}.pt",
    )
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
