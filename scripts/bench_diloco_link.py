r"""Times data-parallel, DiLoCo and Streaming DiLoCo over a rate-limited link: M worker processes of
train_diloco inside a network namespace whose loopback is shaped with htb, one row per method, M and rate
(training/benchmarks/diloco_link.py). Needs root, ip and tc (htb).

    python -m scripts.bench_diloco_link --workdir=/tmp/link --plan_only          # rows, bytes, link seconds
    python -m scripts.bench_diloco_link --workdir=/tmp/link                      # the sweep (resumable)
    python -m scripts.bench_diloco_link --workdir=/tmp/link1 --processes=2 --rates=100mbit \
        --methods=streaming_fp4_overlap --steps=8 --inner_steps=4 --train_flags='--warmup_steps=2'

Every flag is a setting of ``training.benchmarks.diloco_link.BenchDiLoCoLinkConfig``. Writes
WORKDIR/link.json (or --out) after every row, and link.png beside it.
"""
from scripts import common
from training.benchmarks import diloco_link
from training.link import netns


def _preflight(cfg: diloco_link.BenchDiLoCoLinkConfig) -> None:
    """Root, ip, tc with htb and a free namespace name, tried before any work (one line if not)."""
    if not cfg.plan_only:
        netns.check_link(cfg.netns or netns.default_name())


def _run(cfg: diloco_link.BenchDiLoCoLinkConfig) -> None:
    record = diloco_link.run(cfg)
    if not cfg.plan_only:
        print(diloco_link.format_table(record))
        print(f"\nwrote {cfg.out_path} and {cfg.out_path.with_suffix('.png')}")


if __name__ == "__main__":
    common.main(diloco_link.BenchDiLoCoLinkConfig, _run, preflight=_preflight)
