"""The end-to-end demo on the embedded default (CPU, ONNX Runtime): `make demo` / `python -m demo`.

__main__.py   train tiny-shapes -> export -> serve -> embed, index, search, lookup -> report
grid.py       the picture: each text query beside its top retrieved images
"""
