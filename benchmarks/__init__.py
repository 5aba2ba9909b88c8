"""Benchmarks for connect-trials, side by side with the floor and its peers.

    python -m benchmarks            # the full suite (about 23 minutes on 2 cores; writes the README tables)
    python -m benchmarks --quick    # every workload once, small (under 5 minutes)

Modules, one concern each: ``workloads`` (what runs, at which sizes), ``objectives`` (the
code that runs on the Spark workers), ``systems`` (one runner per system), ``isolated``
(systems that need a process of their own), ``measure`` (the probes), ``suite`` (the run
order, the server and session), ``analysis`` (runs to medians), ``targets`` (PASS / MISS),
``report`` (table, JSON, PNG).
"""
