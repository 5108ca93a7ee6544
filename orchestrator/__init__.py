"""Runs on the host: plans an ablation and drives the runner and scoring CLIs, as Docker containers or as local
processes. Talks to them only through their command lines and the contract's files.

Nothing imported at package level needs docker: `orchestrator.hub_fetch` also runs inside the family images.
"""
