"""Dist.all_gather across two real processes: values in rank order, gradients only into the local slice
(exact for queries, the local-queries part for passages), losses summing to the one-process loss."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.testing import assert_close

from imprag.distributed import Dist
from imprag.training.losses import multi_label_nce

SCRIPT = Path(__file__).parent / "distributed_scripts" / "gather_grad.py"


def test_single_process_all_gather_is_the_identity() -> None:
    x = torch.ones(2, 3, requires_grad=True)
    assert Dist().all_gather(x) is x


def test_two_process_all_gather_matches_one_process_gradients(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(
        [*torchrun, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gather_grad import PASSAGES, QUERIES
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for r in ranks:
        assert_close(r["gathered"], PASSAGES)
    # one process: all 4 queries against all 4 passages, positives on the diagonal, summed loss
    q, p = QUERIES.clone().requires_grad_(), PASSAGES.clone().requires_grad_()
    loss = multi_label_nce(q @ p.T, torch.eye(4, dtype=torch.bool)) * 4
    loss.backward()
    assert_close(ranks[0]["loss"] + ranks[1]["loss"], loss.detach())
    # queries are scored only on their own rank, so their gradients are exact
    assert_close(torch.cat([ranks[0]["q"], ranks[1]["q"]]), q.grad)
    # a rank's passages get gradient only from that rank's queries: the terms where the other rank's
    # queries score them are dropped (the usual in-batch-negative approximation), so compute that by hand
    for r in range(2):
        pr = PASSAGES.clone().requires_grad_()
        own = multi_label_nce(
            QUERIES[2 * r : 2 * r + 2] @ pr.T, torch.eye(4, dtype=torch.bool)[2 * r : 2 * r + 2]
        )
        (own * 2).backward()
        assert_close(ranks[r]["p"], pr.grad[2 * r : 2 * r + 2])
    assert not torch.allclose(torch.cat([ranks[0]["p"], ranks[1]["p"]]), p.grad)  # the dropped terms matter
