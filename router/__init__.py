"""Tandem's SLO scheduler: pure Python (numpy and pydantic only), shared by the Ray controller,
the simulator and the tests.

The loop a caller runs (simulator with a fake clock, controller with a monotonic one):

    from router.scheduler import SloScheduler          # or router.baselines.BASELINES[name]()
    from router.pool_order import form_batch
    from router.progress import apply_batch

    plan = scheduler.schedule(Snapshot(now, request_states, worker_states))
    # apply plan.decisions (ADMIT / BEST_EFFORT / REJECT / DEFER) and plan.preempt
    batch = form_batch(now, resident_states, plan.directive(worker_id), perf_model, kv_capacity)
    states, events = apply_batch(states, batch, now + measured_or_predicted_seconds)
    # re-plan on arrivals, stage arrivals, completions, or a tick

Modules: request (data), slo (presets), config (pydantic), perf_model / profiles (batch-time
model and its fit), kv_model (KV bytes, transfer), dp (the SLOs-Serve DP), disagg (prefill and
decode pools), pool_order (batches), progress (state transitions), policies/ (lanes, tenants,
overload), baselines, scheduler (the interface).
"""
