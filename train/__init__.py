"""Tessera training: image-text dual encoders with CODIS and TCL alignment objectives.

Map (docs/architecture.md §1):
- `train.config`      typed, frozen configuration (TOML + `--set key=value`)
- `train.model`       towers, heads, codebook, momentum twin, feature queue (`DualEncoder`)
- `train.objectives`  CMA, IMC, LMI, CODE and the presets `itc`, `tcl`, `codis`, `tessera`
- `train.distributed` the collectives the objectives use (no-ops in one process)

torch only; never imports `export` or `runtime`.
"""
