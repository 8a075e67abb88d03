"""mtdiff's benchmarks: each module is a command, run from the repository root as ``python -m benchmarks.NAME``
(throughput, sampling, quality, presets, paper_claims, ablations, ...); each writes its JSON and markdown
tables to ``benchmarks/results/``. ``benchmarks.claims`` holds the parts of ``paper_claims``."""
