"""stt: a readable reproduction of STT (CVPR 2023) and CorrFlow (BMVC 2019), with the label
propagation protocol and metrics of the field. See README.md and SPEC-level docstrings."""

__version__ = "0.1.0"
