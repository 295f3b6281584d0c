"""`python -m lucir run ARGS` under torchrun that also records what each rank holds (not a test).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_probe.py RECORD_DIR run ARGS...

Writes RECORD_DIR/rank<r>.json: everything rank 0 shared with the ranks (exemplar memory, metric
rows, the base-cache decision) as this rank received it, a digest of this rank's model after
every training call (weights and BatchNorm statistics), for every feature extraction the number
of batches in all and this rank's block of them (rank_slice), for every epoch the images and
right answers of this rank and the training accuracy of the epoch's summary, and the metrics
run_incremental returned.
tests/test_distributed.py compares the ranks' files.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

from lucir import cli, trainer


def model_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    record_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    record = {"shared": [], "models": [], "slices": [], "epochs": [], "metrics": None}
    real_share, real_train, real_run = trainer.share, trainer.train_epochs, trainer.run_incremental
    real_slice = trainer.rank_slice
    real_summary = trainer._epoch_summary

    def epoch_summary(sums, correct, seen, *args):
        summary = real_summary(sums, correct, seen, *args)
        record["epochs"].append({"correct": float(correct), "seen": seen, "train_acc": summary["train_acc"]})
        return summary

    def share(obj):
        got = real_share(obj)
        record["shared"].append(repr(got))
        return got

    def rank_slice(items):
        mine = real_slice(items)
        record["slices"].append([len(items), len(mine)])
        return mine

    def train_epochs(model, *args, **kwargs):
        summary = real_train(model, *args, **kwargs)
        record["models"].append(model_digest(model))
        return summary

    def run_incremental(config, out_dir):
        metrics = real_run(config, out_dir)
        record["metrics"] = {k: v for k, v in metrics.items() if k != "wall_seconds_this_call"}
        return metrics

    trainer.share, trainer.train_epochs, trainer.run_incremental = share, train_epochs, run_incremental
    trainer.rank_slice, trainer._epoch_summary = rank_slice, epoch_summary
    rc = cli.main(argv)
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))
    return rc


if __name__ == "__main__":
    sys.exit(main())
