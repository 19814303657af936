"""Fuzzing of every parser that reads bytes from a PACS or a user (issue 11).

:mod:`tests.fuzz.targets` holds the hypothesis strategies and one target per parser,
:mod:`tests.fuzz.run` the runner (``python -m tests.fuzz.run``, or ``scripts/fuzz.sh``), and
``test_fuzz_short.py`` the short run CI does on every test run.
"""
