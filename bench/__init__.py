"""Side-by-side benchmark: registry-mirror vs. registry:2 (distribution 2.8) in proxy mode.

Both proxies sit in front of the same upstream (a plain registry:2 on loopback) and are
measured with the same clients (curl, wrk, skopeo) in the same order; some rows also hold the
mirror against the upstream itself (direct) or nginx's sendfile of the file it cached.
Prints a rich table and writes ``bench/results/latest.json``.  Run from the project root::

    .venv/bin/python -m bench            # full run (a few minutes)
    .venv/bin/python -m bench --quick    # smoke run (about a minute and a half)

Every server listens on 127.0.0.1; every load loop is bounded in count or time; all
processes are stopped and the temporary directory is removed at the end, also on error or
Ctrl-C.

Modules: ``config`` (sizes, names), ``procs`` (client processes, ``/proc`` readers),
``clients`` (curl, wrk, skopeo, plain HTTP), ``images`` (the test images pushed to the
upstream), ``blobs`` (fresh blobs for the cold rows), ``nginx`` (the sendfile reference),
``measure`` (running a measurement on both proxies), ``context`` (the servers
under test), ``report`` (rows, the table, the JSON), ``scenarios`` (one module per
scenario), ``run`` (arguments, the order of the scenarios).
"""

__all__: list[str] = []
