"""The parts of ``benchmarks.paper_claims``: the paper's numbers (``paper``), the arms and their training
(``arms``), the time estimate (``estimate``), one scorer per table (``scores``) and the verdicts and markdown
(``report``). Imports run one way: ``arms`` reads ``paper``; ``estimate``, ``scores`` and ``report`` read both."""
