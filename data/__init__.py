"""Data shipped with the repo and scripts that prepare real data sets.

- ``python -m data.make_sample``: regenerates ``data/sample/`` (small synthetic panoramas + ``sample.csv``).
- ``python -m data.quic360 prepare``: downloads the QuIC-360 test split and its images into ``data/quic360/``.

See docs/DATA.md.
"""
