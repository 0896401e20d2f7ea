"""Benchmarks run by ``tinygpt bench ...``: speed measured side by side in one process, as ratios.

Speed is never asserted in tests (machines are shared and noisy); these commands measure
it, alternating the contenders round by round so that drift falls on all of them alike.
"""
