"""segformer-check-data: scan dataset splits for bad files; summarise sizes, classes, weights.

    segformer-check-data data=cityscapes data.root=/data/cityscapes
    segformer-check-data data=folder data.root=/data/roads 'data.classes=[bg,road,lane]' \
        'splits=[train,val]'

Lists every unreadable, truncated, unpaired or mismatched file and every mask value outside
[0, num_classes) that is not the ignore index, then per split the image sizes, the pixels per
class and class weights of each rule (median frequency, its square root, ENet), the line
`segformer-train model.class_weights=auto` prints for the rule of `class_weights`, and a
`model.class_weights=[...]` line to paste; a clean split's counts are kept where
`class_weights=auto` finds them (data/class_weights.py). A bad file
is skipped (the summary counts the others) and listed again at the end; exit status 1 when any
problem was found (strict=false: 0). With data.group (or data.group_file) it also lists each
split's groups and the groups found in more than one split (grouped validation, see
data/groups.py). The report is also saved as report.txt in the run directory.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.text import Text

from segformer.checkpoint_io import atomic_write
from segformer.cli import hydra_cli
from segformer.data.check import check_split, print_report
from segformer.data.class_weights import WeightRule, counts_key, parse_rule, store_counts
from segformer.resolvers import register_resolvers

register_resolvers()


def check_data(cfg: DictConfig) -> int:
    """Check `cfg.splits` (or `cfg.split`) of `cfg.data`, print the report; the bad files count."""
    datamodule = instantiate(cfg.data)
    console = Console(record=True)
    bad: set[Path] = set()
    groups: dict[str, Counter] = {}
    setting = cfg.get("class_weights", "auto")
    setting = OmegaConf.to_container(setting) if isinstance(setting, DictConfig) else setting
    rule = parse_rule(setting) or WeightRule("median_frequency")
    for split in cfg.splits or [cfg.split]:
        report = check_split(datamodule, split, cfg.num_workers)
        print_report(report, console, rule)
        if report.masks and not report.problems:  # every mask read: what auto would count
            key = counts_key(datamodule, split)
            kept = store_counts(datamodule.root, key, report.class_counts())
            if kept is not None:
                console.print(Text(f"{split}: class pixel counts kept in {kept}"), soft_wrap=True)
        bad |= report.bad_files
        if getattr(datamodule, "group", None) or getattr(datamodule, "group_file", None):
            groups[split] = Counter(datamodule.groups(datamodule.samples(split)))
            listed = ", ".join(f"{g} ({n})" for g, n in sorted(groups[split].items()))
            console.print(Text(f"groups of {split} (samples): {listed}"))
    seen: Counter = Counter(g for counts in groups.values() for g in counts)
    shared = sorted(g for g, n in seen.items() if n > 1)
    if shared:
        console.print(
            f"[yellow]groups in more than one split: {', '.join(shared)}: a split validated "
            "on them measures seen groups (data.val_groups holds whole groups out)"
        )
    console.print(f"[red]{len(bad)} bad file(s)" if bad else "[green]no bad files")
    for file in sorted(bad):  # once more at the end: the files to fix or remove
        console.print(Text(f"  {file}"))
    report_text = console.export_text()
    atomic_write(Path(cfg.paths.output_dir) / "report.txt", report_text, "check-data report")
    return len(bad)


@hydra_cli("check-data", config_name="check_data")
def main(cfg: DictConfig) -> None:
    if check_data(cfg) and cfg.get("strict", True):
        sys.exit(1)


if __name__ == "__main__":
    main()
