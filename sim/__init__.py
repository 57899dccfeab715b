"""Tandem's simulator: the router/ policies, unchanged, on modelled GPUs (pure Python + numpy).

    trace.py     load / rescale / generate arrivals, clip to the context
    workload.py  scenario presets → router.request.Request (SLOs, stages, tenants)
    cluster.py   workers, fitted batch-time model, KV capacity, KV link, prices
    engine.py    the discrete-event loop (schedule → form_batch → apply_batch)
    records.py   per-request token times and the SLO check
    metrics.py   attainment, percentiles, goodput, cost, Little's law
    run.py       one simulation end to end (RunSpec → SimResult)
    capacity.py  capacity search (highest rate at >= 90% attainment), placement search
    report.py    markdown tables (and PNG plots when matplotlib is installed)
    cli.py       `tandem sim ...` (add_parser / run)
"""
