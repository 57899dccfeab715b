"""The engine reports each step's batch shape and time; calibrate fits the scheduler's model on them."""

import pytest

from engine.calibrate import calibrate
from engine.sampling import SamplingParams
from tests.engine.helpers import make_engine


def test_each_step_records_its_batch_shape(llama_dir):
    engine = make_engine(llama_dir)
    engine.add_request(list(range(3, 43)), SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    engine.step()
    prefill = engine.last_step
    assert (prefill.shape.prefill_tokens, prefill.shape.prefill_pairs, prefill.shape.num_seqs) == (40, 40 * 41 // 2, 1)
    assert prefill.shape.decode_tokens == 0 and prefill.seconds > 0
    engine.step()
    decode = engine.last_step.shape
    assert (decode.decode_tokens, decode.decode_context, decode.prefill_tokens) == (1, 41, 0)


def test_calibrate_fits_a_model_on_timed_steps(llama_dir):
    engine = make_engine(llama_dir)
    result = calibrate(engine, steps=48, max_prompt=96, max_output=8, seed=1)
    assert result.steps == 48
    assert result.report.n_train + result.report.n_test == 48
    assert all(p.intercept >= 0 for p in result.model.pieces)
    assert not engine.has_unfinished() and engine.block_manager.usage() == 0  # its requests are cleaned up
    engine.block_manager.check_invariants()


def test_calibrate_refuses_too_few_steps(llama_dir):
    with pytest.raises(ValueError, match="at least 32"):
        calibrate(make_engine(llama_dir), steps=8)
